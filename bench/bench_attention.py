"""attention / attention_varlen at the model's three uses: the ViT (dense, 256 tokens, 16 heads,
D 72), the fusion cross-attention (16 ragged text requests over 256 visual keys each, 12 heads,
D 128) and LLM prefill (8 ragged prompts of 64 + 32..2048 tokens, causal, GQA 12/2, D 128).
FLOPs count only the unmasked work: 4 * D * (visible query-key pairs) per head."""

import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, Peer, register_case, register_op
from bench.peers import SDPA_BACKENDS, compiled, direct, optional, sdpa_dense, sdpa_forced


def _cu(lengths, device):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)


def _varlen_inputs(lengths_q, lengths_k, heads_q, heads_kv, head_dim, causal, dtype, device, gen):
    q = randn((sum(lengths_q), heads_q, head_dim), dtype, device, gen)
    k, v = (randn((sum(lengths_k), heads_kv, head_dim), dtype, device, gen) for _ in range(2))
    args = (q, k, v, _cu(lengths_q, device), _cu(lengths_k, device), max(lengths_q), max(lengths_k))
    return args, {"causal": causal}


def _visible_pairs(len_q, len_k, causal):
    if not causal:
        return len_q * len_k
    return sum(max(0, min(len_k, i + 1 + len_k - len_q)) for i in range(len_q))


def padded_batch(q, k, v, cu_q, cu_k, max_q, max_k, causal=False):
    """Packed -> zero-padded [B, L, H, D] and a boolean mask: what SDPA needs without varlen."""
    batch = cu_q.numel() - 1

    def pad(x, cu, longest):
        out = x.new_zeros((batch, longest, *x.shape[1:]))
        for b in range(batch):
            out[b, : cu[b + 1] - cu[b]] = x[cu[b] : cu[b + 1]]
        return out

    lengths_q, lengths_k = (cu_q[1:] - cu_q[:-1]).tolist(), (cu_k[1:] - cu_k[:-1]).tolist()
    mask = torch.zeros((batch, 1, max_q, max_k), dtype=torch.bool, device=q.device)
    for b in range(batch):
        rows = torch.arange(lengths_q[b], device=q.device)[:, None]
        cols = torch.arange(lengths_k[b], device=q.device)[None, :]
        visible = cols <= rows + lengths_k[b] - lengths_q[b] if causal else cols >= 0
        mask[b, 0, : lengths_q[b], : lengths_k[b]] = visible
        mask[b, 0, lengths_q[b] :, 0] = True  # padding rows see one key, so softmax stays finite
    return (pad(q, cu_q, max_q), pad(k, cu_k, max_k), pad(v, cu_k, max_k), mask), {}


def sdpa_masked(q, k, v, mask):
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=True
    )
    return out.transpose(1, 2)


def sdpa_per_request(q, k, v, cu_q, cu_k, max_q, max_k, causal=False):
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    out = torch.empty_like(q)
    for b in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[b], bounds_q[b + 1], bounds_k[b], bounds_k[b + 1]
        out[q0:q1] = sdpa_dense(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal)[0]
    return out


def flash_attn_varlen(fn):
    return lambda q, k, v, cu_q, cu_k, max_q, max_k, causal=False: fn(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal)


register_op("attention", ak.attention, reference.attention,
            lambda dtype, device, gen: ((randn((2, 37, 4, 72), dtype, device, gen),
                                         randn((2, 50, 2, 72), dtype, device, gen),
                                         randn((2, 50, 2, 72), dtype, device, gen)), {"causal": True}))  # fmt: skip
register_op("attention_varlen", ak.attention_varlen, reference.attention_varlen,
            lambda dtype, device, gen: _varlen_inputs([5, 0, 40], [9, 3, 40], 6, 2, 64, True, dtype, device, gen))  # fmt: skip

VARLEN_PEERS = {
    "torch.compile": compiled(reference.attention_varlen),
    "SDPA padded batch": lambda: Peer(sdpa_masked, prepare=padded_batch),
    **{
        f"SDPA padded batch, {name[5:]}": sdpa_forced(backend, sdpa_masked, padded_batch)
        for name, backend in SDPA_BACKENDS.items()
    },
    "SDPA per request": direct(sdpa_per_request),
    "flash-attn": optional("flash_attn", "flash_attn_varlen_func", flash_attn_varlen),
}

for images in (1, 8, 32):
    tokens, heads, head_dim = 256, 16, 72
    register_case(
        Case(
            op="attention",
            name=f"ViT B={images} L={tokens} H={heads} D={head_dim}",
            dtype=torch.bfloat16,
            build=lambda device, gen, b=images: (
                tuple(randn((b, tokens, heads, head_dim), torch.bfloat16, device, gen) for _ in range(3)),
                {},
            ),
            bytes=4 * images * tokens * heads * head_dim * 2,
            flops=4 * images * heads * head_dim * tokens * tokens,
            peers={
                "torch.compile": compiled(reference.attention),
                "SDPA": direct(sdpa_dense),  # SDPA's own pick
                **{name: sdpa_forced(backend) for name, backend in SDPA_BACKENDS.items()},
                "flash-attn": optional("flash_attn", "flash_attn_func"),
            },  # fmt: skip
        )
    )

# Fusion: 16 requests, text lengths spread over 16..512, each over its image's 256 visual tokens.
FUSION_TEXT = [16 + (512 - 16) * i // 15 for i in range(16)]
# Prefill: 8 prompts of 64 visual + 32..2048 text tokens, causal, GQA 12/2.
PREFILL = [64 + 32 + (2048 - 32) * i // 7 for i in range(8)]
for name, lengths_q, lengths_k, heads_q, heads_kv, causal in (
    ("fusion B=16 text 16..512 keys 256", FUSION_TEXT, [256] * 16, 12, 12, False),
    ("prefill B=8 L=96..2112 causal", PREFILL, PREFILL, 12, 2, True),
    ("prefill B=1 L=2048 causal", [2048], [2048], 12, 2, True),
):
    pairs = sum(_visible_pairs(a, b, causal) for a, b in zip(lengths_q, lengths_k))
    register_case(
        Case(
            op="attention_varlen",
            name=f"{name} Hq={heads_q} Hkv={heads_kv} D=128",
            dtype=torch.bfloat16,
            build=lambda device, gen, lq=lengths_q, lk=lengths_k, hq=heads_q, hkv=heads_kv, c=causal: _varlen_inputs(
                lq, lk, hq, hkv, 128, c, torch.bfloat16, device, gen
            ),
            bytes=(2 * sum(lengths_q) * heads_q + 2 * sum(lengths_k) * heads_kv) * 128 * 2,
            flops=4 * heads_q * 128 * pairs,
            peers=VARLEN_PEERS,
        )
    )
