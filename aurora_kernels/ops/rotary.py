"""apply_rotary: rotary position embedding of q and k in one launch, rotate-half convention
(transformers' Qwen2): x_rot = x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x2, x1).

q [..., L, Hq, D], k [..., L, Hkv, D] (dense [B, L, H, D] or packed [T, H, D]); cos, sin [..., L, D]
(transformers' full-width tables, broadcast over heads and over any leading dims they lack), or with
`positions` [..., L] the whole tables [max_positions, D] whose rows the kernel picks (vLLM's
cos_sin_cache, halved; decode_attention reads its tables the same way). Tables of width D/2 give both
halves of a head the same values, as every standard RoPE table has.

Work per token: reads (Hq + Hkv) * D of q/k and 2D of cos/sin, writes (Hq + Hkv) * D: memory bound.
The fusion is in reading cos/sin once per token for all heads of q and k (the eager op reads them
once per head and materialises rotate_half). A program takes a block of up to TOKENS_PER_PROGRAM tokens
and loads the two halves of all their heads at once, [BLOCK_T, BLOCK_H, BLOCK_HALF] tiles (head dims
72/80 give halves of 36/40, padded to 64 with masks), with the tables' [BLOCK_T, 1, BLOCK_HALF]
broadcast over the heads: every load of the block in flight together, rather than a token at a time.
q and k may be strided slices of a fused qkv projection.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from aurora_kernels._compile import configs_per_dtype, register_compile_configs
from aurora_kernels._dispatch import kernel_op, new_output, record_call
from aurora_kernels._validation import (
    FLOAT_DTYPES,
    check_backend,
    check_no_internal_overlap,
    check_same_device,
    check_same_dtype,
    check_separate_memory,
    check_tensor,
    check_triton_device,
    should_check_values,
    value_range,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._autotune import INTERPRETER
from aurora_kernels.ops._layout import (
    RowLayout,
    cdiv,
    collapse_rows,
    pow2_at_least,
    row_layout_signature,
    row_starts,
    stride_multiple,
)

MAX_HEAD_DIM = 512
TOKENS_PER_PROGRAM = 4  # on a GPU, at most...
MAX_TILE = 4096  # ...and no more elements in its [BLOCK_T, BLOCK_HQ, BLOCK_HALF] tile (the LLM's 12 heads x 64: 4 tokens)


@triton.jit
def _head_offsets(token_starts, head_stride, num_heads, token_mask, STRIDE_MULTIPLE: tl.constexpr,
                  HALF_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):  # fmt: skip
    """[BLOCK_T, BLOCK_H, BLOCK_HALF] offsets of the first halves of every head of a block of tokens
    (token t's heads start at token_starts[t], head_stride apart), and their mask."""
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    mask = token_mask[:, None, None] & (heads < num_heads)[None, :, None] & (dims < HALF_DIM)[None, None, :]
    head_offsets = tl.multiple_of(heads.to(tl.int64) * head_stride, STRIDE_MULTIPLE)
    return (token_starts[:, None] + head_offsets[None, :])[:, :, None] + dims[None, None, :], mask


@triton.jit
def _rotate_heads(
    x_ptr, out_ptr, cache_ptr, tokens, token_mask, x_token_starts, head_stride, num_heads, cos1, cos2, sin1, sin2,
    cache_token_mask, cache_token_starts, cache_head_stride,
    WRITE_CACHE: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr, HALF_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    """Rotate every head of a block of tokens: token t's x is [num_heads, 2 * HALF_DIM] at
    x_token_starts[t]; the tables' halves are [BLOCK_T, 1, BLOCK_HALF], shared by the heads. The
    result goes to out_ptr ([tokens, num_heads, 2 * HALF_DIM], contiguous) and, with WRITE_CACHE,
    also to the cache row of each token of cache_token_mask (cache_token_starts[t], heads
    cache_head_stride apart)."""
    first, mask = _head_offsets(x_token_starts, head_stride, num_heads, token_mask, STRIDE_MULTIPLE, HALF_DIM, BLOCK_H,
                                BLOCK_HALF)  # fmt: skip
    x1 = tl.load(x_ptr + first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + first + HALF_DIM, mask=mask, other=0.0).to(tl.float32)
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_HALF)
    out_first = ((tokens.to(tl.int64) * num_heads)[:, None] + heads[None, :])[:, :, None] * (2 * HALF_DIM) + dims[None, None, :]
    dtype = out_ptr.dtype.element_ty
    rotated1, rotated2 = (x1 * cos1 - x2 * sin1).to(dtype), (x2 * cos2 + x1 * sin2).to(dtype)
    tl.store(out_ptr + out_first, rotated1, mask=mask)
    tl.store(out_ptr + out_first + HALF_DIM, rotated2, mask=mask)
    if WRITE_CACHE:
        cache_first, cache_mask = _head_offsets(cache_token_starts, cache_head_stride, num_heads, cache_token_mask,
                                                STRIDE_MULTIPLE, HALF_DIM, BLOCK_H, BLOCK_HALF)  # fmt: skip
        tl.store(cache_ptr + cache_first, rotated1, mask=cache_mask)
        tl.store(cache_ptr + cache_first + HALF_DIM, rotated2, mask=cache_mask)


@triton.jit
def _copy_heads(
    x_ptr, cache_ptr, cache_token_mask, x_token_starts, head_stride, num_heads, cache_token_starts, cache_head_stride,
    STRIDE_MULTIPLE: tl.constexpr, HALF_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    """Every head of the tokens of cache_token_mask into their cache rows, unchanged (v)."""
    first, mask = _head_offsets(x_token_starts, head_stride, num_heads, cache_token_mask, STRIDE_MULTIPLE, HALF_DIM,
                                BLOCK_H, BLOCK_HALF)  # fmt: skip
    cache_first, _ = _head_offsets(cache_token_starts, cache_head_stride, num_heads, cache_token_mask, STRIDE_MULTIPLE,
                                   HALF_DIM, BLOCK_H, BLOCK_HALF)  # fmt: skip
    tl.store(cache_ptr + cache_first, tl.load(x_ptr + first, mask=mask), mask=mask)
    tl.store(cache_ptr + cache_first + HALF_DIM, tl.load(x_ptr + first + HALF_DIM, mask=mask), mask=mask)


@triton.jit
def _table_half(table_ptr, token_starts, dims, mask):
    """[BLOCK_T, 1, BLOCK_HALF] of a cos/sin table, in fp32, to broadcast over the heads."""
    return tl.load(table_ptr + token_starts[:, None, None] + dims[None, None, :], mask=mask[:, None, :], other=0.0).to(tl.float32)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr, positions_ptr, q_out_ptr, k_out_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
    num_tokens, num_heads_q, num_heads_kv, num_slots, num_positions,
    positions_outer_stride, positions_inner_size, positions_inner_stride,
    q_outer_stride, q_inner_size, q_inner_stride, q_head_stride,
    k_outer_stride, k_inner_size, k_inner_stride, k_head_stride,
    v_outer_stride, v_inner_size, v_inner_stride, v_head_stride,
    cos_outer_stride, cos_inner_size, cos_inner_stride,
    sin_outer_stride, sin_inner_size, sin_inner_stride,
    k_cache_row_stride, k_cache_head_stride, v_cache_row_stride, v_cache_head_stride,
    WRITE_CACHE: tl.constexpr, HAS_POSITIONS: tl.constexpr, HALF_WIDTH_TABLES: tl.constexpr,
    STRIDE_MULTIPLE: tl.constexpr, TABLE_STRIDE_MULTIPLE: tl.constexpr, HALF_DIM: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_mask = tokens < num_tokens
    dims = tl.arange(0, BLOCK_HALF)
    table_mask = token_mask[:, None] & (dims < HALF_DIM)[None, :]
    # the tables' row of each token: the token's own, or with HAS_POSITIONS its position, clamped into
    # the tables (a position out of range, which the op's value checks refuse where they run, reads a
    # wrong row of the tables, never memory outside them)
    table_rows = tokens
    if HAS_POSITIONS:
        position_starts = row_starts(tokens, positions_outer_stride, positions_inner_size, positions_inner_stride, 1)
        positions = tl.load(positions_ptr + position_starts, mask=token_mask, other=0)
        table_rows = tl.minimum(tl.maximum(positions, 0), num_positions - 1)
    cos_starts = row_starts(table_rows, cos_outer_stride, cos_inner_size, cos_inner_stride, TABLE_STRIDE_MULTIPLE)
    sin_starts = row_starts(table_rows, sin_outer_stride, sin_inner_size, sin_inner_stride, TABLE_STRIDE_MULTIPLE)
    cos1 = _table_half(cos_ptr, cos_starts, dims, table_mask)
    sin1 = _table_half(sin_ptr, sin_starts, dims, table_mask)
    if HALF_WIDTH_TABLES:  # one half-width row serves both halves of the head
        cos2, sin2 = cos1, sin1
    else:
        cos2 = _table_half(cos_ptr, cos_starts + HALF_DIM, dims, table_mask)
        sin2 = _table_half(sin_ptr, sin_starts + HALF_DIM, dims, table_mask)
    # with WRITE_CACHE, each token's cache row: its slot. A token whose slot is not a row of the cache
    # writes nothing there: -1 marks a padding token (vLLM's PAD_SLOT_ID), and any other such slot
    # (refused by the op's value checks where they run) would otherwise land in another token's row.
    slots = tl.zeros([BLOCK_T], dtype=tl.int64)
    writes_row = token_mask
    if WRITE_CACHE:
        slots = tl.load(slots_ptr + tokens, mask=token_mask, other=-1)
        writes_row = (slots >= 0) & (slots < num_slots)
        slots = tl.where(writes_row, slots, 0)
    q_starts = row_starts(tokens, q_outer_stride, q_inner_size, q_inner_stride, STRIDE_MULTIPLE)
    _rotate_heads(q_ptr, q_out_ptr, q_out_ptr, tokens, token_mask, q_starts, q_head_stride, num_heads_q,
                  cos1, cos2, sin1, sin2, writes_row, slots, 0, False, STRIDE_MULTIPLE, HALF_DIM, BLOCK_HQ,
                  BLOCK_HALF)  # fmt: skip
    k_starts = row_starts(tokens, k_outer_stride, k_inner_size, k_inner_stride, STRIDE_MULTIPLE)
    _rotate_heads(k_ptr, k_out_ptr, k_cache_ptr, tokens, token_mask, k_starts, k_head_stride, num_heads_kv,
                  cos1, cos2, sin1, sin2, writes_row, slots * k_cache_row_stride, k_cache_head_stride, WRITE_CACHE,
                  STRIDE_MULTIPLE, HALF_DIM, BLOCK_HKV, BLOCK_HALF)  # fmt: skip
    if WRITE_CACHE:
        v_starts = row_starts(tokens, v_outer_stride, v_inner_size, v_inner_stride, STRIDE_MULTIPLE)
        _copy_heads(v_ptr, v_cache_ptr, writes_row, v_starts, v_head_stride, num_heads_kv, slots * v_cache_row_stride,
                    v_cache_head_stride, STRIDE_MULTIPLE, HALF_DIM, BLOCK_HKV, BLOCK_HALF)  # fmt: skip


def _launch_config(num_heads_q: int, num_heads_kv: int, head_dim: int) -> dict:
    block_half = pow2_at_least(head_dim // 2, 16)
    block_hq, block_hkv = pow2_at_least(num_heads_q), pow2_at_least(num_heads_kv)
    gpu_block_t = max(1, min(TOKENS_PER_PROGRAM, MAX_TILE // (block_hq * block_half)))
    # the interpreter's cost grows with programs, not tile size: a block of 32 tokens (the tests'
    # 37-token case still spans two programs)
    block_t = 32 if INTERPRETER else gpu_block_t
    return {
        # a constexpr, so the compiler knows the halves' mask and offset: 36 (D 72) is a multiple of 4, and
        # its loads are 8-byte vectors; as a runtime argument it is 16-divisible or nothing, and D 72's
        # loads were one element wide
        "HALF_DIM": head_dim // 2,
        "BLOCK_T": block_t,
        "BLOCK_HQ": block_hq,
        "BLOCK_HKV": block_hkv,
        "BLOCK_HALF": block_half,
        "num_warps": _warps(gpu_block_t * block_hq * block_half, head_dim // 2),
    }


def _warps(tile: int, half_dim: int) -> int:
    """Warps for a [BLOCK_T, BLOCK_HQ, BLOCK_HALF] tile: each thread one 16-byte vector of a 16-bit
    dtype (8 elements), or 4 elements where the half is not a multiple of 8 (D 72). There the second
    half's address is only 4-aligned: with 8 elements a thread, its store took a layout of its own,
    converted through shared memory, and triton 3.6 spilled; with 4, every load and store shares one
    layout. (Fewer warps, more elements a thread, converted layouts at D 128 too.)"""
    per_thread = 8 if half_dim % 8 == 0 else 4
    return max(1, min(32, tile // (32 * per_thread)))


def _check_args(q, k, cos, sin, positions):
    check_tensor("q", q, ndim=(3, 4), layout="[..., L, Hq, D]", unit_stride_last=True)
    check_tensor("k", k, ndim=q.ndim, layout="[..., L, Hkv, D]", unit_stride_last=True)
    check_same_dtype("k", k, "q", q)
    head_dim = q.shape[-1]
    if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != head_dim:
        raise ValueError(
            f"k: expected shape [{', '.join(map(str, q.shape[:-2]))}, Hkv, {head_dim}] (q's tokens and head dim), "
            f"got {list(k.shape)}"
        )
    if head_dim % 2 or not 2 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected an even head dim D in [2, {MAX_HEAD_DIM}], got {head_dim}")
    token_shape = tuple(q.shape[:-2])
    widths = f"{head_dim} or {head_dim // 2}"
    if positions is not None:
        check_tensor("positions", positions, dtypes=(torch.int32, torch.int64))
        _check_broadcasts("positions", positions.shape, token_shape, trailing=0)
    for name, table in (("cos", cos), ("sin", sin)):
        check_tensor(name, table, unit_stride_last=True)
        if positions is not None:
            if table.ndim != 2 or table.shape[-1] not in (head_dim, head_dim // 2) or table.shape[0] == 0:
                raise ValueError(
                    f"{name}: expected a table [max_positions >= 1, {widths}] (with positions), got {list(table.shape)}"
                )
            continue
        if table.ndim < 2 or table.shape[-2] != token_shape[-1] or table.shape[-1] not in (head_dim, head_dim // 2):
            raise ValueError(
                f"{name}: expected shape [..., {token_shape[-1]}, {widths}] ([..., L, D] or [..., L, D/2]), "
                f"got {list(table.shape)}"
            )
        _check_broadcasts(name, table.shape, token_shape, trailing=1)
    if sin.shape[-1] != cos.shape[-1] or (positions is not None and sin.shape[0] != cos.shape[0]):
        raise ValueError(f"sin: expected the width{' and rows' if positions is not None else ''} of cos "
                         f"{list(cos.shape)}, got {list(sin.shape)}")  # fmt: skip
    check_same_device({"q": q, "k": k, "cos": cos, "sin": sin, "positions": positions})


def _check_broadcasts(name: str, shape: torch.Size, token_shape: tuple, trailing: int) -> None:
    """An argument of `shape` with an entry (its `trailing` last dims) a token broadcasts to q's token dims:
    as torch.broadcast_shapes(leading, token_shape) == token_shape, in plain Python (torch's runs
    torch._refs' Python on the host, twice a rotary call: docs/performance-log.md, fourteenth
    session)."""
    leading = shape[: len(shape) - trailing]
    broadcasts = len(leading) <= len(token_shape) and all(
        size == 1 or size == token for size, token in zip(reversed(leading), reversed(token_shape))
    )
    if not broadcasts:
        raise ValueError(
            f"{name}: expected leading dims that broadcast to q's {list(token_shape[:-1])} (and L = {token_shape[-1]}), "
            f"got {list(shape)}"
        )


def _check_positions_at_run_time(positions, cos) -> None:
    """Where value checks run, every position is a row of the tables (the kernel clamps the rest)."""
    if positions is not None and positions.numel() and should_check_values(positions):
        low, high = value_range(positions)
        if low < 0 or high >= cos.shape[0]:
            raise ValueError(f"positions: expected rows in [0, {cos.shape[0]}) of the tables cos, sin, got {low}..{high}")


def _check_cache_args(q, k, v, k_cache, v_cache, cache_slots):
    given = {"v": v, "k_cache": k_cache, "v_cache": v_cache, "cache_slots": cache_slots}
    missing = [name for name, t in given.items() if t is None]
    if missing and len(missing) < len(given):
        raise ValueError(f"{', '.join(missing)}: expected v, k_cache, v_cache and cache_slots together (a cache write), "
                         f"got only {', '.join(n for n in given if n not in missing)}")  # fmt: skip
    if missing:
        return
    check_tensor("v", v, shape=tuple(k.shape), layout="(the shape of k)", unit_stride_last=True)
    check_same_dtype("v", v, "k", k)
    heads_kv, head_dim = k.shape[-2], k.shape[-1]
    check_tensor("k_cache", k_cache, shape=(None, heads_kv, head_dim), layout="[cache rows, Hkv, D]", unit_stride_last=True)
    check_tensor("v_cache", v_cache, shape=tuple(k_cache.shape), layout="(the shape of k_cache)", unit_stride_last=True)
    check_same_dtype("k_cache", k_cache, "k", k)
    check_same_dtype("v_cache", v_cache, "k", k)
    tokens = math.prod(k.shape[:-2])
    check_tensor("cache_slots", cache_slots, shape=(tokens,), layout="[tokens]: each token's cache row", dtypes=(torch.int64,))
    if tokens > 1 and cache_slots.stride(0) != 1:
        raise ValueError(f"cache_slots: expected a contiguous tensor (the kernel reads it as raw memory), got strides "
                         f"{list(cache_slots.stride())}; pass cache_slots.contiguous()")  # fmt: skip
    check_same_device({"q": q, "v": v, "k_cache": k_cache, "v_cache": v_cache, "cache_slots": cache_slots})


def _check_cache_at_run_time(q, k, cos, sin, positions, v, k_cache, v_cache, cache_slots) -> None:
    """The cache write's checks on the real tensors, inside the op (so a compiled graph runs them):
    the caches are written in place, so each must have no internal overlap and no element of either
    may lie in memory of the other or of a tensor the launch reads; and where value checks run,
    every slot is a row of the cache or -1 (a padding token, whose k and v are not written)."""
    check_no_internal_overlap("k_cache", k_cache)
    check_no_internal_overlap("v_cache", v_cache)
    check_separate_memory(
        {"k_cache": k_cache, "v_cache": v_cache},
        {"q": q, "k": k, "v": v, "cos": cos, "sin": sin, "positions": positions, "cache_slots": cache_slots},
    )
    if cache_slots.numel() and should_check_values(cache_slots):
        low, high = value_range(cache_slots)
        if low < -1 or high >= k_cache.shape[0]:
            raise ValueError(f"cache_slots: expected rows in [0, {k_cache.shape[0]}) of k_cache, or -1 (a padding "
                             f"token: no write), got {low}..{high}")  # fmt: skip


def apply_rotary(q, k, cos, sin, *, positions=None, v=None, k_cache=None, v_cache=None, cache_slots=None, backend="triton"):
    """Rotary embedding of q and k, rotate-half convention; returns new tensors (q_rot, k_rot).

    q [..., L, Hq, D], k [..., L, Hkv, D] (same leading dims, same dtype fp16/bf16/fp32, contiguous
    last dim, any other strides); cos, sin [..., L, D] in any float dtype, broadcast over heads and
    over leading dims they lack (e.g. [L, D] for a dense batch).

    With positions (int32 or int64 [..., L], broadcast likewise): cos, sin are the whole tables
    [max_positions, D], and token t takes their row positions[t], read in the kernel (no gather of
    rows before it). Tables of width D/2 instead of D give both halves of each head the same values:
    vLLM's cos_sin_cache is cos_sin_cache.chunk(2, -1) of them.

    With v (k's shape), k_cache, v_cache [cache rows, Hkv, D] (k's dtype, contiguous last dim) and
    cache_slots int64 [tokens] (each token of q's leading dims, flattened, to its cache row; vLLM's
    slot_mapping): the rotated k and v are also written into the caches at those rows, in place, in
    the same launch (a prefill filling its KV cache). A slot of -1 marks a padding token (vLLM's
    PAD_SLOT_ID): its k and v go to no row. Two tokens with one slot leave either's row.
    """
    check_backend(backend)
    _check_args(q, k, cos, sin, positions)
    _check_cache_args(q, k, v, k_cache, v_cache, cache_slots)
    record_call("apply_rotary", backend)
    writes = v is not None
    if backend == "reference":
        _check_positions_at_run_time(positions, cos)
        if writes:
            _check_cache_at_run_time(q, k, cos, sin, positions, v, k_cache, v_cache, cache_slots)
        return reference.apply_rotary(
            q, k, cos, sin, positions=positions, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=cache_slots
        )
    check_triton_device("q", q)
    if writes:
        return tuple(_rotary_cache_launch(q, k, cos, sin, positions, v, k_cache, v_cache, cache_slots))
    return tuple(_rotary_launch(q, k, cos, sin, positions))


@kernel_op("apply_rotary", fake=lambda q, k, cos, sin, positions: [q.new_empty(q.shape), k.new_empty(k.shape)])
def _rotary_launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   positions: Optional[torch.Tensor]) -> list[torch.Tensor]:  # fmt: skip
    _check_positions_at_run_time(positions, cos)
    return _launch(q, k, cos, sin, positions, None, None, None, None)


# a tuple, not a list: an op that writes its arguments may not return Tensor[] (functionalization
# takes a list output of a mutating op for an alias)
@kernel_op("apply_rotary_and_write_cache", fake=lambda q, k, *rest: (q.new_empty(q.shape), k.new_empty(k.shape)),
           mutates_args=("k_cache", "v_cache"))  # fmt: skip
def _rotary_cache_launch(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         positions: Optional[torch.Tensor], v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         cache_slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    _check_positions_at_run_time(positions, cos)
    _check_cache_at_run_time(q, k, cos, sin, positions, v, k_cache, v_cache, cache_slots)
    q_out, k_out = _launch(q, k, cos, sin, positions, v, k_cache, v_cache, cache_slots)
    return q_out, k_out


def _table_rows(table: torch.Tensor, token_shape: tuple, positions: Optional[torch.Tensor]) -> tuple[torch.Tensor, RowLayout]:
    """The rows of a cos/sin table (as `collapse_rows` gives them): one a token (broadcast to q's
    token dims), or with positions the table's own rows, which the kernel picks."""
    if positions is not None:
        return collapse_rows(table)
    return collapse_rows(table.expand(*token_shape, table.shape[-1]))


def _launch(q, k, cos, sin, positions, v, k_cache, v_cache, cache_slots) -> list[torch.Tensor]:
    q_out, k_out = new_output(q.shape, q.dtype, q.device), new_output(k.shape, k.dtype, k.device)
    token_shape = tuple(q.shape[:-2])
    (q, q_rows), (k, k_rows) = collapse_rows(q, trailing=2), collapse_rows(k, trailing=2)
    (cos, cos_rows), (sin, sin_rows) = _table_rows(cos, token_shape, positions), _table_rows(sin, token_shape, positions)
    has_positions = positions is not None
    positions, positions_rows = collapse_rows(positions.expand(*token_shape), trailing=0) if has_positions else (None, q_rows)
    num_heads_q, num_heads_kv, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    writes = v is not None
    v, v_rows = collapse_rows(v, trailing=2) if writes else (None, k_rows)
    v_head_stride = v.stride(-2) if writes else 0
    cache_strides = (k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1)) if writes else (0, 0, 0, 0)
    if q_rows.num_rows > 0 and num_heads_q + num_heads_kv > 0 and (not writes or k_cache.shape[0] > 0):
        cfg = _launch_config(num_heads_q, num_heads_kv, head_dim)
        grid = (cdiv(q_rows.num_rows, cfg["BLOCK_T"]),)
        strides = (q_rows.outer_stride, q_rows.inner_stride, q.stride(-2), k_rows.outer_stride, k_rows.inner_stride,
                   k.stride(-2), v_rows.outer_stride, v_rows.inner_stride, v_head_stride, *cache_strides)  # fmt: skip
        _rotary_kernel[grid](
            q, k, cos, sin, positions if has_positions else q, q_out, k_out, v if writes else k, k_cache if writes else k_out,
            v_cache if writes else k_out, cache_slots if writes else q, q_rows.num_rows, num_heads_q, num_heads_kv,
            k_cache.shape[0] if writes else 1, cos.shape[0] if has_positions else 1, *positions_rows[1:],
            *q_rows[1:], q.stride(-2), *k_rows[1:], k.stride(-2), *v_rows[1:], v_head_stride,
            *cos_rows[1:], *sin_rows[1:], *cache_strides,
            WRITE_CACHE=writes,
            HAS_POSITIONS=has_positions,
            HALF_WIDTH_TABLES=cos.shape[-1] != head_dim,
            STRIDE_MULTIPLE=stride_multiple(q.element_size(), strides),
            TABLE_STRIDE_MULTIPLE=stride_multiple(cos.element_size(), (cos_rows.outer_stride, cos_rows.inner_stride,
                                                                       sin_rows.outer_stride, sin_rows.inner_stride)),
            **cfg,
        )  # fmt: skip
    return [q_out, k_out]


@register_compile_configs
def _compile_configs():
    configs = []
    # (Hq, Hkv, D, where, cache write, positions and half-width tables)
    for heads_q, heads_kv, head_dim, where, write_cache, by_position in (
        (12, 2, 128, "LLM", False, False), (12, 2, 128, "LLM prefill", True, False), (16, 16, 72, "ViT-shaped", False, False),
        (12, 2, 128, "vLLM: positions, half-width tables", False, True),
    ):  # fmt: skip
        cfg = _launch_config(heads_q, heads_kv, head_dim)
        warps = cfg.pop("num_warps")
        configs += configs_per_dtype(
            FLOAT_DTYPES,
            op="apply_rotary",
            shape=f"Hq={heads_q} Hkv={heads_kv} D={head_dim} ({where}{', cache write' if write_cache else ''})",
            kernel=_rotary_kernel,
            signature={
                "q_ptr": "*T",
                "k_ptr": "*T",
                "cos_ptr": "*T",
                "sin_ptr": "*T",
                "positions_ptr": "*i64",
                "q_out_ptr": "*T",
                "k_out_ptr": "*T",
                "v_ptr": "*T",
                "k_cache_ptr": "*T",
                "v_cache_ptr": "*T",
                "slots_ptr": "*i64",
                "num_tokens": "i32",
                "num_heads_q": "i32",
                "num_heads_kv": "i32",
                "num_slots": "i32",
                "num_positions": "i32",
                **row_layout_signature("positions"),
                **row_layout_signature("q"),
                "q_head_stride": "i32",
                **row_layout_signature("k"),
                "k_head_stride": "i32",
                **row_layout_signature("v"),
                "v_head_stride": "i32",
                **row_layout_signature("cos"),
                **row_layout_signature("sin"),
                "k_cache_row_stride": "i64",
                "k_cache_head_stride": "i32",
                "v_cache_row_stride": "i64",
                "v_cache_head_stride": "i32",
            },  # fmt: skip
            constexprs={"WRITE_CACHE": write_cache, "HAS_POSITIONS": by_position, "HALF_WIDTH_TABLES": by_position, **cfg},
            num_warps=warps,
            num_stages=1,
            aligned=(
                "q_ptr",
                "k_ptr",
                "cos_ptr",
                "sin_ptr",
                "positions_ptr",
                "q_out_ptr",
                "k_out_ptr",
                "v_ptr",
                "k_cache_ptr",
                "v_cache_ptr",
                "slots_ptr",
            ),  # fmt: skip
        )
    return configs
