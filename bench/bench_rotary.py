"""apply_rotary at the LLM's shapes: q 12 heads, k 2 heads, D 128, as slices of a fused qkv."""

import torch

import aurora_kernels as ak
from aurora_kernels.model.layers import RotaryTables
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, register_case, register_op
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

for batch, length, phase in ((32, 1, "decode"), (256, 1, "decode"), (8, 1024, "prefill"), (32, 2048, "prefill")):
    tokens = batch * length
    register_case(
        Case(
            op="apply_rotary",
            name=f"{phase} B={batch} L={length} Hq={HEADS_Q} Hkv={HEADS_KV} D={HEAD_DIM}",
            dtype=torch.bfloat16,
            build=lambda device, gen, batch=batch, length=length: _qkv_slices(batch, length, torch.bfloat16, device, gen),
            bytes=2 * tokens * (HEADS_Q + HEADS_KV) * HEAD_DIM * 2 + 2 * tokens * HEAD_DIM * 2,
            flops=3 * tokens * (HEADS_Q + HEADS_KV) * HEAD_DIM,
            peers={
                "torch.compile": compiled(reference.apply_rotary),
                "liger": optional("liger_kernel.ops.rope", "LigerRopeFunction", lambda f: liger_rotary(f.apply)),
            },
        )
    )
