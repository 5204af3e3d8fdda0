"""decode_attention at the LLM's decode shapes: Hq 12, Hkv 2, D 128, bf16, batch 1..128, contexts of
320 (64 visual + a short prompt) up to 16k, uniform and ragged, contiguous and paged caches.
Bytes = the K/V of every cached token (read once) + q and the output; the op is bound by them.
And the model's own call: appending the new token with RoPE applied in the kernel, against the same
work unfused (apply_rotary, then decode_attention with the append)."""

import functools

import torch

import aurora_kernels as ak
from aurora_kernels.model.layers import RotaryTables
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, Peer, register_case, register_op
from bench.peers import compiled, optional

HEADS_Q, HEADS_KV, HEAD_DIM, PAGE = 12, 2, 128, 64


def _inputs(lengths, paged, dtype, device, gen, heads_q=HEADS_Q, heads_kv=HEADS_KV, head_dim=HEAD_DIM, page=PAGE):
    batch, capacity = len(lengths), max(lengths) + 1
    q = randn((batch, 1, heads_q, head_dim), dtype, device, gen)
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    if not paged:
        k_cache, v_cache = (randn((batch, capacity, heads_kv, head_dim), dtype, device, gen) for _ in range(2))
        return (q, k_cache, v_cache, seqlens), {}
    blocks_per_seq = -(-capacity // page)
    order = torch.randperm(batch * blocks_per_seq, generator=torch.Generator().manual_seed(1))
    block_table = order.view(batch, blocks_per_seq).to(torch.int32).to(device)
    k_cache, v_cache = (randn((batch * blocks_per_seq, page, heads_kv, head_dim), dtype, device, gen) for _ in range(2))
    return (q, k_cache, v_cache, seqlens), {"block_table": block_table}


def sdpa_over_cache(q, k_cache, v_cache, mask):
    """SDPA (GQA) over the whole padded contiguous cache with a length mask."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k_cache.transpose(1, 2), v_cache.transpose(1, 2), attn_mask=mask, enable_gqa=True
    )
    return out.transpose(1, 2)


def _length_mask(q, k_cache, v_cache, seqlens, block_table=None):
    positions = torch.arange(k_cache.shape[1], device=q.device)
    mask = (positions[None, :] < seqlens[:, None].long())[:, None, None, :]
    return (q, k_cache, v_cache, mask), {}


def flash_attn_kvcache(fn):
    return lambda q, k_cache, v_cache, seqlens, block_table=None: fn(
        q, k_cache, v_cache, cache_seqlens=seqlens, block_table=block_table
    )


def flashinfer_paged(wrapper_class):
    """FlashInfer's batch decode over the same paged cache (its NHD layout is ours): the page lists
    are planned outside the timing, as a serving loop plans once per step for all layers."""

    def prepare(q, k_cache, v_cache, seqlens, block_table):
        page = k_cache.shape[1]
        lengths = seqlens.tolist()
        pages = [-(-n // page) for n in lengths]
        indices = torch.cat([block_table[b, :n] for b, n in enumerate(pages)])
        indptr = torch.tensor([0, *torch.tensor(pages).cumsum(0).tolist()], dtype=torch.int32, device=q.device)
        last_page_len = torch.tensor([(n - 1) % page + 1 for n in lengths], dtype=torch.int32, device=q.device)
        workspace = torch.empty(128 * 2**20, dtype=torch.uint8, device=q.device)
        wrapper = wrapper_class(workspace, "NHD")
        wrapper.plan(indptr, indices, last_page_len, q.shape[2], k_cache.shape[2], q.shape[3], page, data_type=q.dtype)
        return (wrapper, q[:, 0], k_cache, v_cache), {}

    return lambda: Peer(lambda wrapper, q, k_cache, v_cache: wrapper.run(q, (k_cache, v_cache)), prepare=prepare)


def _flashinfer_peer():
    load = optional("flashinfer", "BatchDecodeWithPagedKVCacheWrapper")
    peer = load()
    return peer if peer.fn is None else flashinfer_paged(peer.fn)()


register_op("decode_attention", ak.decode_attention, reference.decode_attention,
            lambda dtype, device, gen: _inputs([0, 1, 37, 130], True, dtype, device, gen, 6, 2, 64, 16))  # fmt: skip

PEERS = {
    "torch.compile": compiled(reference.decode_attention),
    "flash-attn": optional("flash_attn", "flash_attn_with_kvcache", flash_attn_kvcache),
}
CONTIGUOUS_PEERS = {**PEERS, "SDPA (GQA, masked)": lambda: Peer(sdpa_over_cache, prepare=_length_mask)}
PAGED_PEERS = {**PEERS, "FlashInfer": _flashinfer_peer}


# The reference loops over the requests reading each length on the host: torch.compile traces one
# graph per request between graph breaks, minutes at B >= 32, more than a GPU run's budget.
MAX_COMPILED_BATCH = 8
NOT_COMPILED = {"torch.compile": lambda: Peer(None, f"not compiled at B > {MAX_COMPILED_BATCH}: the reference's "
                                                     "per-request host loop takes minutes to trace")}  # fmt: skip


# The split rule (`default_num_kv_splits`: programs per SM, tokens per split) is not tuned on a GPU
# yet: at the small batches where it matters, the run also times fixed split counts beside "ours" (the
# rule's pick), which is the data to tune it with. B=1 ctx=320 is near the model's one-sequence
# decode (a 32-token prompt, 64 or 256 visual tokens, 128 new: caches of 224 or 416 tokens), where
# the rule makes 4 or 7 splits and a merge launch: one split, with no merge, may be faster there.
SPLIT_SWEEP = (1, 4, 16, 32, 64, 128)
SWEPT = {(1, 320), (1, 1024), (1, 4096), (8, 4096)}  # (batch, context), uniform contiguous


def split_sweep_peers() -> dict:
    return {f"ours, num_kv_splits={n}": lambda n=n: Peer(functools.partial(ak.decode_attention, num_kv_splits=n))
            for n in SPLIT_SWEEP}  # fmt: skip


def _ragged(batch, context):
    """Lengths spread from a quarter of the context up to the context."""
    return [context // 4 + (context - context // 4) * i // max(batch - 1, 1) for i in range(batch)]


for batch in (1, 8, 32, 128):
    for context in (320, 1024, 4096, 16384):
        variants = [("uniform", [context] * batch, False)]
        if batch >= 8 and context >= 4096:
            variants += [("ragged", _ragged(batch, context), False), ("uniform paged", [context] * batch, True)]
        for label, lengths, paged in variants:
            register_case(
                Case(
                    op="decode_attention",
                    name=f"B={batch} ctx={context} {label} Hq={HEADS_Q} Hkv={HEADS_KV} D={HEAD_DIM}",
                    dtype=torch.bfloat16,
                    build=lambda device, gen, lengths=lengths, paged=paged: _inputs(lengths, paged, torch.bfloat16, device, gen),
                    bytes=2 * sum(lengths) * HEADS_KV * HEAD_DIM * 2 + 2 * batch * HEADS_Q * HEAD_DIM * 2,
                    flops=4 * sum(lengths) * HEADS_Q * HEAD_DIM,
                    peers={
                        **(PAGED_PEERS if paged else CONTIGUOUS_PEERS),
                        **(NOT_COMPILED if batch > MAX_COMPILED_BATCH else {}),
                        **(split_sweep_peers() if (batch, context) in SWEPT and label == "uniform" else {}),
                    },  # fmt: skip
                )
            )


def _model_step_inputs(lengths, device, gen):
    """The model's decode call: the new token's k, v appended, RoPE from the full tables (theta 1e6,
    in the model's dtype, as a bf16 model holds them) at row cache_seqlens[b]."""
    (q, k_cache, v_cache, seqlens), _ = _inputs(lengths, False, torch.bfloat16, device, gen)
    k, v = (randn((len(lengths), 1, HEADS_KV, HEAD_DIM), torch.bfloat16, device, gen) for _ in range(2))
    tables = RotaryTables(HEAD_DIM, 1e6, max(lengths) + 1).to(device, torch.bfloat16)
    return (q, k_cache, v_cache, seqlens, k, v), {"rotary_cos": tables.cos, "rotary_sin": tables.sin}


def _gathered_rows(q, k_cache, v_cache, seqlens, k, v, rotary_cos, rotary_sin):
    """The unfused model gathered the table rows once per step for all layers: outside the timing."""
    positions = seqlens.long()[:, None]
    return (q, k_cache, v_cache, seqlens, k, v, rotary_cos[positions], rotary_sin[positions]), {}


def rotary_then_decode(q, k_cache, v_cache, seqlens, k, v, cos, sin):
    q, k = ak.apply_rotary(q, k, cos, sin)
    return ak.decode_attention(q, k_cache, v_cache, seqlens, k, v)


def flash_attn_rotary(fn):
    """flash-attn's fused append + RoPE (half-width tables, rotate-half when not interleaved); the
    halves are cut outside the timing."""

    def run(q, k_cache, v_cache, seqlens, k, v, rotary_cos, rotary_sin):
        return fn(q, k_cache, v_cache, k=k, v=v, rotary_cos=rotary_cos, rotary_sin=rotary_sin, cache_seqlens=seqlens)

    def prepare(q, k_cache, v_cache, seqlens, k, v, rotary_cos, rotary_sin):
        half = rotary_cos.shape[1] // 2
        return (q, k_cache, v_cache, seqlens, k, v, rotary_cos[:, :half].contiguous(), rotary_sin[:, :half].contiguous()), {}

    return Peer(run, prepare=prepare)


def _flash_attn_rotary_peer():
    peer = optional("flash_attn", "flash_attn_with_kvcache")()
    return peer if peer.fn is None else flash_attn_rotary(peer.fn)


PEERS_OF_THE_MODELS_CALL = {
    "ours unfused: apply_rotary + decode_attention": lambda: Peer(rotary_then_decode, prepare=_gathered_rows),
    "torch.compile": compiled(reference.decode_attention),
    "flash-attn (rotary_cos)": _flash_attn_rotary_peer,
}

for batch in (1, 8):
    for context in (1024, 4096):
        register_case(
            Case(
                op="decode_attention",
                name=f"B={batch} ctx={context} +append +rotary (the model's call) Hq={HEADS_Q} Hkv={HEADS_KV} D={HEAD_DIM}",
                dtype=torch.bfloat16,
                build=lambda device, gen, lengths=(context,) * batch: _model_step_inputs(list(lengths), device, gen),
                # the cache read, q and the new k/v read, the output and the appended k/v written
                bytes=2 * batch * context * HEADS_KV * HEAD_DIM * 2 + 2 * batch * (HEADS_Q + 2 * HEADS_KV) * HEAD_DIM * 2,
                flops=4 * batch * (context + 1) * HEADS_Q * HEAD_DIM,
                peers=PEERS_OF_THE_MODELS_CALL,
            )
        )
