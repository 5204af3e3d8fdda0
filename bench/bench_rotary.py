"""apply_rotary at the LLM's shapes: q 12 heads, k 2 heads, D 128, as slices of a fused qkv."""

import torch

import aurora_kernels as ak
from aurora_kernels.model.layers import RotaryTables
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, Peer, register_case, register_op
from bench.peers import compiled, liger_rotary, optional

HEADS_Q, HEADS_KV, HEAD_DIM, ROPE_THETA = 12, 2, 128, 1e6


def _tables(batch, length, head_dim, dtype, device, gen):
    """Real rotary tables (theta 1e6, rotate-half layout: both halves alike, as transformers builds
    and casts them) at random positions: peers that read one half of the table (liger) then compute
    the same function as the reference."""
    positions = torch.randint(0, 32768, (batch, length), device=device, generator=gen, dtype=torch.int64)
    tables = RotaryTables(head_dim, ROPE_THETA, 32768).to(device)
    return tuple(t.to(dtype) for t in tables(positions))


def _qkv_slices(batch, length, dtype, device, gen, heads_q=HEADS_Q, heads_kv=HEADS_KV, head_dim=HEAD_DIM):
    qkv = randn((batch, length, (heads_q + 2 * heads_kv) * head_dim), dtype, device, gen)
    q = qkv[..., : heads_q * head_dim].unflatten(-1, (heads_q, head_dim))
    k = qkv[..., heads_q * head_dim : (heads_q + heads_kv) * head_dim].unflatten(-1, (heads_kv, head_dim))
    return (q, k, *_tables(batch, length, head_dim, dtype, device, gen)), {}


register_op("apply_rotary", ak.apply_rotary, reference.apply_rotary,
            lambda dtype, device, gen: _qkv_slices(2, 9, dtype, device, gen, 4, 2, 64))  # fmt: skip

SHAPE = f"Hq={HEADS_Q} Hkv={HEADS_KV} D={HEAD_DIM}"


def _register(name: str, tokens: int, build, other_bytes: int, peers: dict) -> None:
    """A bf16 case of `tokens` tokens at the LLM's heads: q and k read and written, plus `other_bytes`
    (tables, cache rows, indices); 3 flops an element of q and k."""
    register_case(
        Case(
            op="apply_rotary",
            name=name,
            dtype=torch.bfloat16,
            build=build,
            bytes=2 * tokens * (HEADS_Q + HEADS_KV) * HEAD_DIM * 2 + other_bytes,
            flops=3 * tokens * (HEADS_Q + HEADS_KV) * HEAD_DIM,
            peers=peers,
        )
    )


for batch, length, phase in ((32, 1, "decode"), (256, 1, "decode"), (8, 1024, "prefill"), (32, 2048, "prefill")):
    _register(
        f"{phase} B={batch} L={length} {SHAPE}",
        batch * length,
        lambda device, gen, batch=batch, length=length: _qkv_slices(batch, length, torch.bfloat16, device, gen),
        2 * batch * length * HEAD_DIM * 2,  # a full-width row of each table a token
        {
            "torch.compile": compiled(reference.apply_rotary),
            "liger": optional("liger_kernel.ops.rope", "LigerRopeFunction", lambda f: liger_rotary(f.apply)),
        },
    )


def _prefill_with_cache(tokens, dtype, device, gen):
    """A packed prefill of `tokens` rows, its k and v written into a paged cache of twice as many rows
    (16-row pages) at scrambled slots, as the model's prefill writes them."""
    (q, k, cos, sin), _ = _qkv_slices(1, tokens, dtype, device, gen)
    v = randn((tokens, HEADS_KV, HEAD_DIM), dtype, device, gen)
    rows = 2 * tokens
    caches = [torch.zeros((rows // 16, 16, HEADS_KV, HEAD_DIM), dtype=dtype, device=device).view(-1, HEADS_KV, HEAD_DIM)
              for _ in range(2)]  # fmt: skip
    slots = torch.randperm(rows, device=device, generator=gen)[:tokens]
    return (q[0], k[0], cos[0], sin[0]), {"v": v, "k_cache": caches[0], "v_cache": caches[1], "cache_slots": slots}


def _rotary_then_index_copy(q, k, cos, sin, v, k_cache, v_cache, cache_slots):
    """The unfused pair the model ran before: our rotary, then torch's two index_copy_ into the cache."""
    q_rot, k_rot = ak.apply_rotary(q, k, cos, sin)
    k_cache.index_copy_(0, cache_slots, k_rot)
    v_cache.index_copy_(0, cache_slots, v)
    return q_rot, k_rot


for tokens in (1024, 8192):
    _register(
        f"prefill T={tokens} {SHAPE} +cache write",
        tokens,
        lambda device, gen, tokens=tokens: _prefill_with_cache(tokens, torch.bfloat16, device, gen),
        # v read; k_rot and v into the cache; a full-width row of each table and a slot a token
        tokens * 3 * HEADS_KV * HEAD_DIM * 2 + 2 * tokens * HEAD_DIM * 2 + 8 * tokens,
        {
            "ours unfused: apply_rotary + index_copy_": lambda: Peer(_rotary_then_index_copy),
            "torch.compile": compiled(reference.apply_rotary),
        },
    )


def _by_position(tokens, dtype, device, gen):
    """vLLM's call: `tokens` rows of a fused qkv at random positions, the two halves of its
    cos_sin_cache [32768, D] (views of one tensor) as the tables."""
    (q, k, _, _), _ = _qkv_slices(1, tokens, dtype, device, gen)
    tables = RotaryTables(HEAD_DIM, ROPE_THETA, 32768)
    cos_sin_cache = torch.cat((tables.cos[:, : HEAD_DIM // 2], tables.sin[:, : HEAD_DIM // 2]), dim=-1).to(device, dtype)
    positions = torch.randint(0, 32768, (tokens,), device=device, generator=gen, dtype=torch.int64)
    return (q[0], k[0], *cos_sin_cache.chunk(2, dim=-1)), {"positions": positions}


def _gather_then_rotary(q, k, cos, sin, positions):
    """The vLLM adapter's path before the kernel read rows by position: the rows gathered, widened
    to D, then our rotary (four launches)."""
    cos, sin = (torch.cat((rows, rows), dim=-1) for rows in (cos.index_select(0, positions), sin.index_select(0, positions)))
    return ak.apply_rotary(q, k, cos, sin)


for tokens, phase in ((32, "decode B=32"), (256, "decode B=256"), (8192, "prefill")):
    _register(
        f"{phase} T={tokens} {SHAPE} by position (vLLM)",
        tokens,
        lambda device, gen, tokens=tokens: _by_position(tokens, torch.bfloat16, device, gen),
        2 * tokens * (HEAD_DIM // 2) * 2 + 8 * tokens,  # a half-width row of each table and a position a token
        {
            "ours unfused: gather + apply_rotary": lambda: Peer(_gather_then_rotary),
            "torch.compile": compiled(reference.apply_rotary),
        },
    )
