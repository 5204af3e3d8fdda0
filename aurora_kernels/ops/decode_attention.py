"""decode_attention: one new query token per sequence over its KV cache (contiguous or paged),
optionally appending the new token's K/V in the same call. The op every decode step runs 28 times.

The arithmetic: per sequence and KV head, 4 * G * D * L FLOPs (G = Hq / Hkv query heads) over
2 * L * D cache elements: ~G FLOP/byte, far under any GPU's ridge, so the kernel's job is to stream
the cache once at full bandwidth:

- GQA grouping: one program serves all G query heads of its KV head, so each K/V tile is read from
  memory once, not G times. The group rides in the M axis of tl.dot (padded to 16 rows).
- Split-KV (flash-decoding): at small batch B * Hkv programs cannot fill the GPU, so stage 1 splits
  each sequence's cache over `num_kv_splits` programs that each write a normalised partial output and
  its log-sum-exp; stage 2 (`_decode_merge_kernel`) merges them. With one split, stage 1 writes the
  final output and stage 2 is not launched. (Merging in the last split program to finish, through
  an atomic counter, saves the second launch but gained nothing in a model step: see
  docs/performance-log.md. It was removed: its counters were state shared by every stream.)
- Paged caches are gathered token by token through block_table (any page size, any tile size).
- In-kernel append: the program whose split holds position cache_seqlens[b] writes the new k, v into
  the cache and adds the new token to its softmax from registers (never reading back what it wrote).
- In-kernel rotary (as flash-attn's `flash_attn_with_kvcache(rotary_cos=...)`): given the model's
  full cos/sin tables, every program rotates q, and the appending program the new k, by the table row
  at position cache_seqlens[b] before using them. A decode step then needs no apply_rotary launch and
  no gather of table rows per layer: 2 * D table elements read per program against the cache's
  2 * L * D, and one fewer launch in each of the 28 layers.
- A key mask (`key_mask`, bool [B, S_max]: a padded batch's padding mask, as transformers holds
  it): a tile's K/V loads go out with its mask bytes, not after them (a dropped key's row is read,
  where gathering the kept rows first would copy the cache), and a dropped key's score is -inf and
  its value 0 (its row may be memory never written). Only in the KEY_MASK variant.
- Two trips to memory before the first product: the length, then everything it locates (the first
  K/V tile, q, the rotary rows, the new token), all in flight at once, where a chain of five trips
  would each wait for the one before (the kernel's comment says why). The price is registers (the
  compile report has them per config): at large batch fewer programs fit an SM.

What is checked: shapes, dtypes, devices and strides always, and with an append that the caches
have no internal overlap (each sequence's token lands in memory of its own) and share no element
with each other or with the tensors the launch reads; inside the op (so in a
compiled graph too), on CPU tensors or under `value_checks("always")`, also that 0 <=
cache_seqlens[b] (+1 with an append) fits the cache and that the block_table entries a sequence uses
are valid block indices. On CUDA by default those value checks would cost a host sync per call, so
they are the caller's contract, as in flash-attn; the kernel clamps the lengths into the cache and
skips pages outside the pool, so a broken contract gives a wrong output, never a read or a write
outside the cache. Two sequences whose block tables share a page, both appending, write the same
rows: that too is the caller's contract.
"""

from __future__ import annotations

import functools
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
    check_block_table_values,
    check_cache_seqlens_values,
    check_index_tensor,
    check_int,
    check_no_internal_overlap,
    check_same_device,
    check_same_dtype,
    check_separate_memory,
    check_softmax_scale,
    check_tensor,
    check_triton_device,
    should_check_values,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._dot import dot_acc, dot_in_fp32
from aurora_kernels.ops._layout import cdiv, pow2_at_least, sm_count, stride_multiple
from aurora_kernels.ops._pdl import early_next_launch_option, launch_next_kernel_now, pdl_options, wait_for_previous_kernel
from aurora_kernels.ops.attention import LOG2_E, MAX_HEAD_DIM

PAGED_BLOCK_SIZES = (16, 32, 64, 128, 256)
MAX_KV_SPLITS = 128
# num_kv_splits=None: aim for this many programs per SM (one more to hide each one's load latency)...
PROGRAMS_PER_SM = 2
# ...but give no split fewer cache tokens than one BLOCK_N tile: a shorter split reads less than its
# prologue and its partial output (D fp32 per query head, written and read again by the merge) cost.
# At B 1, Hkv 2, 4k context that is 64 splits: 128 programs, about one per SM of a 132-SM GPU, and
# the partials add ~10% to the 4 MB of K/V read.
MIN_TOKENS_PER_SPLIT = 64
# The log-sum-exp of a split whose keys all scored -inf (-FLT_MAX: no finite score comes this low, and
# beside any split with a finite one its weight is 0)
OVERFLOWED_LSE: tl.constexpr = tl.constexpr(-3.4028234663852886e38)


@triton.jit
def _cache_rows(block_table_row_ptr, positions, batch, cache_batch_stride, cache_token_stride, capacity, num_pages,
                PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr):  # fmt: skip
    """Element offsets (int64) of cache positions `positions` of one sequence (multiples of
    STRIDE_MULTIPLE, as the launcher checked the strides are), and whether each lies in a page of
    the pool. Paged, the block table is read only at positions within the capacity (inside the
    sequence's row; a tile's last keys may pass it) and the page it names is clamped into
    [0, num_pages), so every offset lies in the cache whatever the block table holds (it goes
    unchecked on CUDA): a bad entry is read as another page of the pool, and a write must also ask
    `in_pool`. The page is clamped, not masked: masking the loads by it cost the split kernel up to
    60 registers a thread and spilled, as did clamping the column (the compile report)."""
    if PAGED:
        pages = tl.load(block_table_row_ptr + positions // PAGE_SIZE, mask=positions < capacity, other=0)
        in_pool = (pages >= 0) & (pages < num_pages)
        pages = tl.minimum(tl.maximum(pages, 0), num_pages - 1).to(tl.int64)
        rows = pages * cache_batch_stride + (positions % PAGE_SIZE).to(tl.int64) * cache_token_stride
    else:
        in_pool = positions < capacity
        rows = batch.to(tl.int64) * cache_batch_stride + positions.to(tl.int64) * cache_token_stride
    return tl.multiple_of(rows, STRIDE_MULTIPLE), in_pool


@triton.jit
def _rotate(x, partner, cos, sin, sign, ROTARY: tl.constexpr):
    """x rotated rotate-half style when ROTARY: x * cos + sign * partner * sin, where partner holds
    x's other-half column and sign is -1 on the first half; rounded back to x's dtype, as
    apply_rotary's output would be."""
    if ROTARY:
        x = (x.to(tl.float32) * cos.to(tl.float32) + sign * partner.to(tl.float32) * sin.to(tl.float32)).to(x.dtype)
    return x


@triton.jit
def _kv_tile_rows(block_table_row, key_mask_row, key_start, cached_end, batch, k_cache_batch_stride,
                  k_cache_token_stride, v_cache_batch_stride, v_cache_token_stride, capacity, num_pages,
                  BLOCK_N: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr,
                  KEY_MASK: tl.constexpr):  # fmt: skip
    """Where the cached keys and values at positions key_start + [0, BLOCK_N) of one sequence lie
    (their rows' element offsets, paged through the block table), which are cached (key_ok: the
    rows to load) and which of those are attended (key_kept: with KEY_MASK, those the sequence's
    row of the caller's mask keeps, a byte a key; else key_ok). The loads do not wait for the mask:
    a dropped key's row is read, and its score and value set aside once both have arrived."""
    positions = key_start + tl.arange(0, BLOCK_N)
    key_ok = positions < cached_end
    key_kept = key_ok
    if KEY_MASK:
        key_kept = key_ok & (tl.load(key_mask_row + positions, mask=key_ok, other=0) != 0)
    k_rows, _ = _cache_rows(block_table_row, positions, batch, k_cache_batch_stride, k_cache_token_stride, capacity,
                            num_pages, PAGED, PAGE_SIZE, STRIDE_MULTIPLE)  # fmt: skip
    v_rows, _ = _cache_rows(block_table_row, positions, batch, v_cache_batch_stride, v_cache_token_stride, capacity,
                            num_pages, PAGED, PAGE_SIZE, STRIDE_MULTIPLE)  # fmt: skip
    return k_rows, v_rows, key_ok, key_kept


@triton.jit
def _kv_tile_load(k_head_base, v_head_base, k_rows, v_rows, key_ok, key_kept, cols, col_ok, KEY_MASK: tl.constexpr):
    """The cached keys (transposed, [D, BLOCK_N]) and values ([BLOCK_N, D]) at those rows, 0 where
    the key is not cached; with KEY_MASK the values of dropped keys 0 too (their rows may hold
    anything, NaN in memory never written, and a weight of 0 times NaN is NaN)."""
    k = tl.load(k_head_base + k_rows[None, :] + cols[:, None], mask=key_ok[None, :] & col_ok[:, None], other=0.0)
    v = tl.load(v_head_base + v_rows[:, None] + cols[None, :], mask=key_ok[:, None] & col_ok[None, :], other=0.0)
    if KEY_MASK:
        v = tl.where(key_kept[:, None], v, 0.0)
    return k, v


@triton.jit
def _attend_tile(q, k, v, key_ok, row_max, row_sum, acc, qk_scale_log2, DOT_IN_FP32: tl.constexpr):
    """The online softmax's step over one tile of keys: (row_max, row_sum, acc) updated."""
    scores = dot_acc(q, k, tl.zeros((q.shape[0], k.shape[1]), tl.float32), DOT_IN_FP32) * qk_scale_log2
    scores = tl.where(key_ok[None, :], scores, float("-inf"))
    new_max = tl.maximum(row_max, tl.max(scores, 1))
    p = tl.math.exp2(scores - new_max[:, None])
    alpha = tl.math.exp2(row_max - new_max)
    row_sum = row_sum * alpha + tl.sum(p, 1)
    acc = dot_acc(p.to(v.dtype), v, acc * alpha[:, None], DOT_IN_FP32)
    return new_max, row_sum, acc


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, cache_seqlens_ptr, k_new_ptr, v_new_ptr, block_table_ptr, key_mask_ptr,
    rotary_cos_ptr, rotary_sin_ptr, partial_out_ptr, partial_lse_ptr, out_ptr,
    heads_per_kv, qk_scale_log2, num_kv_splits, capacity, num_pages, rotary_rows,
    q_batch_stride, q_head_stride,
    k_cache_batch_stride, k_cache_token_stride, k_cache_head_stride,
    v_cache_batch_stride, v_cache_token_stride, v_cache_head_stride,
    k_new_batch_stride, k_new_head_stride, v_new_batch_stride, v_new_head_stride,
    block_table_stride, key_mask_stride, rotary_cos_stride, rotary_sin_stride,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr, APPEND: tl.constexpr, ROTARY: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr, DOT_IN_FP32: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr,
    USE_PDL: tl.constexpr, KEY_MASK: tl.constexpr,
):  # fmt: skip
    split = tl.program_id(0)
    kv_head = tl.program_id(1)
    batch = tl.program_id(2)
    groups = tl.arange(0, BLOCK_G)
    group_ok = groups < heads_per_kv
    heads = (kv_head * heads_per_kv + groups).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < HEAD_DIM
    first_half = cols < HEAD_DIM // 2
    partner = tl.where(first_half, cols + HEAD_DIM // 2, cols - HEAD_DIM // 2)
    sign = tl.where(first_half, -1.0, 1.0)
    q_rows = tl.multiple_of(batch.to(tl.int64) * q_batch_stride + heads * q_head_stride, STRIDE_MULTIPLE)
    q_mask = group_ok[:, None] & col_ok[None, :]
    block_table_row = block_table_ptr + batch.to(tl.int64) * block_table_stride
    key_mask_row = key_mask_ptr + batch.to(tl.int64) * key_mask_stride
    k_head_base = k_cache_ptr + tl.multiple_of(kv_head.to(tl.int64) * k_cache_head_stride, STRIDE_MULTIPLE)
    v_head_base = v_cache_ptr + tl.multiple_of(kv_head.to(tl.int64) * v_cache_head_stride, STRIDE_MULTIPLE)

    # Latency first. At batch 1 a split is usually one tile (MIN_TOKENS_PER_SPLIT == BLOCK_N) of a
    # cache of a few hundred tokens: a call is a chain of trips to memory, and each trip behind a
    # barrier (a conversion through shared memory) waits for the one before (with q rotated before
    # the loop the length, the rotary rows, q and the first K/V tile were read one after another).
    # So the program goes to memory twice before its first product: for the length, then for
    # everything the length locates, all issued before any value is used: the split's first tile
    # is peeled off the loop, the tables are read in q's layout, and q is loaded after the tile (an
    # unrotated q goes to shared memory for the dot right after its load, behind a barrier). The
    # compile report checks that no global load is issued behind a barrier ahead of the first product.
    # Under PDL the first trip (and a paged cache's block table) comes before the wait, while the
    # kernel before still runs: after it, one trip.
    # The length clamped into the cache (capacity: S_max, or the block table's pages x PAGE_SIZE):
    # where cache_seqlens went unchecked (CUDA, value checks off) a bad length gives a wrong output at
    # worst, never a read or a write outside the cache; a full cache takes no append. For valid
    # lengths the clamps change nothing.
    cached = tl.minimum(tl.maximum(tl.load(cache_seqlens_ptr + batch), 0), capacity)
    total = tl.minimum(cached + APPEND, capacity)
    # splits are whole BLOCK_N tiles, so only a split's last tile is ragged
    split_len = tl.cdiv(tl.cdiv(total, num_kv_splits), BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, total)
    cached_end = tl.minimum(end, cached)
    # rotary: the table row at the new token's position (cache_seqlens[b]); columns past D read 0, so
    # padded columns stay 0. Read in q's [BLOCK_G, BLOCK_D] layout, every group row the same (L1
    # serves the repeats): a 1-D row went to q's layout through shared memory, a barrier.
    cols_q = tl.zeros((BLOCK_G, 1), tl.int32) + cols[None, :]
    cos = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    sin = cos
    if ROTARY:
        # a position past the tables (unchecked on CUDA) reads their last row: clamped, not masked
        # (a mask cost the kernel 60 registers a thread)
        table_row = tl.minimum(cached, rotary_rows - 1).to(tl.int64)
        cos = tl.load(rotary_cos_ptr + table_row * rotary_cos_stride + cols_q, mask=cols_q < HEAD_DIM, other=0.0)
        sin = tl.load(rotary_sin_ptr + table_row * rotary_sin_stride + cols_q, mask=cols_q < HEAD_DIM, other=0.0)
    k_rows, v_rows, key_ok, key_kept = _kv_tile_rows(block_table_row, key_mask_row, start, cached_end, batch,
                                                     k_cache_batch_stride, k_cache_token_stride, v_cache_batch_stride,
                                                     v_cache_token_stride, capacity, num_pages, BLOCK_N, PAGED, PAGE_SIZE,
                                                     STRIDE_MULTIPLE, KEY_MASK)  # fmt: skip
    if KEY_MASK:  # which of a tile's places held a key the mask keeps, over the split's tiles (reduced
        # after the loop: a reduction here would put a barrier ahead of the first tile's loads)
        kept_places = key_kept.to(tl.int32)
    # Under PDL the length, the block table, the key mask and the rotary rows are read before the
    # wait: no kernel launched under PDL writes them, so whatever wrote them has finished
    # (ops/_pdl.py). The cache (a split kernel just before may have appended to it), q and the new
    # token are read after it, and every write comes after it.
    wait_for_previous_kernel(USE_PDL)
    k, v = _kv_tile_load(k_head_base, v_head_base, k_rows, v_rows, key_ok, key_kept, cols, col_ok, KEY_MASK)
    q = tl.load(q_ptr + q_rows[:, None] + cols[None, :], mask=q_mask, other=0.0)
    q_partner = q
    if ROTARY:
        q_partner = tl.load(q_ptr + q_rows[:, None] + partner[None, :], mask=q_mask, other=0.0)
    if APPEND:
        # the program whose split holds position cache_seqlens[b] appends the new token
        appends = (start <= cached) & (cached < end)
        new_mask = tl.where(appends, col_ok, False)  # not `&`: triton 3.9's interpreter makes a bool scalar & vector int32
        k_new_row = k_new_ptr + batch.to(tl.int64) * k_new_batch_stride + kv_head.to(tl.int64) * k_new_head_stride
        k_new = tl.load(k_new_row + cols, mask=new_mask, other=0.0)
        k_new_partner = k_new
        if ROTARY:
            k_new_partner = tl.load(k_new_row + partner, mask=new_mask, other=0.0)
        v_new_row = v_new_ptr + batch.to(tl.int64) * v_new_batch_stride + kv_head.to(tl.int64) * v_new_head_stride
        v_new = tl.load(v_new_row + cols, mask=new_mask, other=0.0)
    q = _rotate(q, q_partner, cos, sin, sign[None, :], ROTARY)

    # row_max starts finite (-1e30), so masked keys (-inf) give p = 0 and never a NaN
    row_max = tl.full((BLOCK_G,), -1.0e30, tl.float32)
    row_sum = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    row_max, row_sum, acc = _attend_tile(q, k, v, key_kept, row_max, row_sum, acc, qk_scale_log2, DOT_IN_FP32)
    for key_start in range(start + BLOCK_N, cached_end, BLOCK_N):
        k_rows, v_rows, key_ok, key_kept = _kv_tile_rows(block_table_row, key_mask_row, key_start, cached_end, batch,
                                                         k_cache_batch_stride, k_cache_token_stride, v_cache_batch_stride,
                                                         v_cache_token_stride, capacity, num_pages, BLOCK_N, PAGED,
                                                         PAGE_SIZE, STRIDE_MULTIPLE, KEY_MASK)  # fmt: skip
        if KEY_MASK:
            kept_places = tl.maximum(kept_places, key_kept.to(tl.int32))
        k, v = _kv_tile_load(k_head_base, v_head_base, k_rows, v_rows, key_ok, key_kept, cols, col_ok, KEY_MASK)
        row_max, row_sum, acc = _attend_tile(q, k, v, key_kept, row_max, row_sum, acc, qk_scale_log2, DOT_IN_FP32)

    if APPEND:
        if appends:
            k_new_q = _rotate(k_new[None, :], k_new_partner[None, :], cos, sin, sign[None, :], ROTARY)
            new_score = tl.sum(q.to(tl.float32) * k_new_q.to(tl.float32), 1) * qk_scale_log2
            new_max = tl.maximum(row_max, new_score)
            alpha = tl.math.exp2(row_max - new_max)
            p_new = tl.math.exp2(new_score - new_max)
            row_sum = row_sum * alpha + p_new
            acc = acc * alpha[:, None] + p_new[:, None] * v_new.to(tl.float32)[None, :]
            row_max = new_max
            # position < capacity here (a full cache has no appending program); a page outside the pool
            # (a bad block table) takes no write
            position = tl.full((1,), 0, tl.int32) + cached
            k_row, k_ok = _cache_rows(block_table_row, position, batch, k_cache_batch_stride, k_cache_token_stride,
                                      capacity, num_pages, PAGED, PAGE_SIZE, STRIDE_MULTIPLE)  # fmt: skip
            v_row, v_ok = _cache_rows(block_table_row, position, batch, v_cache_batch_stride, v_cache_token_stride,
                                      capacity, num_pages, PAGED, PAGE_SIZE, STRIDE_MULTIPLE)  # fmt: skip
            first_row = (groups == 0)[:, None] & col_ok[None, :]  # the rows of k_new and v_new are copies
            tl.store(k_head_base + k_row[:, None] + cols_q, k_new_q, mask=first_row & k_ok[:, None])
            tl.store(v_head_base + v_row + cols, v_new, mask=col_ok & v_ok)

    # A split (or sequence) with no tokens, or none the key mask keeps, has row_sum 0: output 0,
    # log-sum-exp -inf. One whose keys all scored -inf (q.k x scale overflowed) has row_sum 0 too,
    # but torch's softmax makes such a row NaN: a single split writes NaN, a split writes the
    # log-sum-exp OVERFLOWED_LSE, which the merge turns into NaN when no split had a finite score. A
    # NaN score leaves acc NaN either way.
    has_keys = row_sum > 0.0
    split_had_keys = end > start
    if KEY_MASK:  # with no key the mask keeps (and no append) the split has no keys
        split_had_keys = tl.max(kept_places, 0) > 0
        if APPEND:
            split_had_keys = split_had_keys | appends
    if SINGLE_SPLIT:
        # row_sum 0 with keys: acc (0) / 0 is the NaN
        out_tile = acc / tl.where(split_had_keys, row_sum, 1.0)[:, None]
        tl.store(out_ptr + (batch.to(tl.int64) * heads_per_kv * tl.num_programs(1) + heads)[:, None] * HEAD_DIM + cols[None, :],
                 out_tile.to(out_ptr.dtype.element_ty), mask=group_ok[:, None] & col_ok[None, :])  # fmt: skip
    else:
        out_tile = acc / tl.where(has_keys, row_sum, 1.0)[:, None]
        # partials [B, Hq, num_kv_splits, D] and log-sum-exps (base 2) [B, Hq, num_kv_splits], fp32
        slots = (batch.to(tl.int64) * heads_per_kv * tl.num_programs(1) + heads) * num_kv_splits + split
        tl.store(partial_out_ptr + slots[:, None] * HEAD_DIM + cols[None, :], out_tile, mask=group_ok[:, None] & col_ok[None, :])
        lse = tl.where(has_keys, row_max + tl.math.log2(tl.where(has_keys, row_sum, 1.0)),
                       tl.where(split_had_keys, OVERFLOWED_LSE, float("-inf")))  # fmt: skip
        tl.store(partial_lse_ptr + slots, lse, mask=group_ok)


@triton.jit
def _merge_rows(partial_out_ptr, partial_lse_ptr, out_ptr, first_row, num_rows, num_kv_splits,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr):  # fmt: skip
    """out[row] = sum_s 2^(lse_s - max) partial_s / sum_s 2^(lse_s - max) over the splits, for the
    query heads row = first_row + [0, num_rows) (row = b * Hq + h, int64) at once, BLOCK_S splits at
    a time with a running max per row; all splits empty -> 0. Each chunk's log-sum-exps and partials
    are loaded before anything is reduced: loaded after the max, the partials waited behind its
    barriers for the log-sum-exps. The partials are read once, from L2 (.cg)."""
    rows = first_row + tl.arange(0, BLOCK_H)
    row_ok = tl.arange(0, BLOCK_H) < num_rows
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < HEAD_DIM
    top = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    total = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
    for first in range(0, num_kv_splits, BLOCK_S):
        splits = first + tl.arange(0, BLOCK_S)
        slots = rows[:, None] * num_kv_splits + splits[None, :]
        slot_ok = row_ok[:, None] & (splits < num_kv_splits)[None, :]
        lse = tl.load(partial_lse_ptr + slots, mask=slot_ok, other=float("-inf"), cache_modifier=".cg")
        partial = tl.load(partial_out_ptr + slots[:, :, None] * HEAD_DIM + cols[None, None, :],
                          mask=slot_ok[:, :, None] & col_ok[None, None, :], other=0.0, cache_modifier=".cg")  # fmt: skip
        new_top = tl.maximum(top, tl.max(lse, 1))
        base = tl.where(new_top == float("-inf"), 0.0, new_top)
        rescale = tl.math.exp2(top - base)
        weights = tl.math.exp2(lse - base[:, None])
        acc = acc * rescale[:, None] + tl.sum(weights[:, :, None] * partial, 1)
        total = total * rescale + tl.sum(weights, 1)
        top = new_top
    out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    out = tl.where((top == OVERFLOWED_LSE)[:, None], float("nan"), out)  # keys, but every score -inf
    tl.store(out_ptr + rows[:, None] * HEAD_DIM + cols[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])  # fmt: skip


@triton.jit
def _decode_merge_kernel(partial_out_ptr, partial_lse_ptr, out_ptr, num_kv_splits,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                         USE_PDL: tl.constexpr, NEXT_LAUNCHED: tl.constexpr):  # fmt: skip
    """Stage 2: one program per (b, query head). NEXT_LAUNCHED (under PDL): the next kernel may
    launch at once (ops/_pdl.py, `early_next_launch_option`)."""
    if NEXT_LAUNCHED:
        launch_next_kernel_now(USE_PDL)
    wait_for_previous_kernel(USE_PDL, NEXT_LAUNCHED)
    _merge_rows(partial_out_ptr, partial_lse_ptr, out_ptr, tl.program_id(0).to(tl.int64), 1, num_kv_splits,
                HEAD_DIM, BLOCK_D, 1, BLOCK_S)  # fmt: skip


@functools.lru_cache(maxsize=None)
def default_num_kv_splits(batch: int, heads_kv: int, max_context: int, device: torch.device) -> int:
    """Split count from the shapes alone (no host sync): enough programs for PROGRAMS_PER_SM on every
    SM, no split under MIN_TOKENS_PER_SPLIT cache tokens, at most MAX_KV_SPLITS. max_context is the
    cache's capacity (S_max, or max_blocks * block_size), the longest context that can occur, since the
    real lengths live on the device. Then as few splits as cover the capacity in splits of that many
    whole MIN_TOKENS_PER_SPLIT chunks: a count that leaves the last split empty at full capacity
    launches a program more a sequence and KV head, and the merge reads a partial more, for nothing
    (B 8, 4k context: 17 splits of 256 tokens are 16). B 1, Hkv 2, 4k context on 132 SMs: 64 splits;
    B 128: 2; B 256: 1."""
    programs = max(1, batch * heads_kv)
    wanted = cdiv(PROGRAMS_PER_SM * sm_count(device), programs)
    by_length = max(1, cdiv(max_context, MIN_TOKENS_PER_SPLIT))
    splits = max(1, min(wanted, by_length, MAX_KV_SPLITS))
    split_tokens = cdiv(cdiv(max_context, splits), MIN_TOKENS_PER_SPLIT) * MIN_TOKENS_PER_SPLIT
    return cdiv(max_context, split_tokens) if max_context > 0 else 1


def decode_config(head_dim: int, heads_per_kv: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch options of the split kernel (fixed, not autotuned: the op runs inside
    CUDA graphs, where an autotuner's first-call benchmarking cannot)."""
    fp32 = dtype == torch.float32
    return {
        "BLOCK_D": pow2_at_least(head_dim, 16),
        "BLOCK_G": pow2_at_least(heads_per_kv, 16),
        # fp32: ieee dots on the FMA units, small tiles and 8 warps to stay clear of spills (4 warps
        # spilled with the paged append path under triton 3.6's ptxas)
        "BLOCK_N": 16 if fp32 else 64,
        "num_warps": 8 if fp32 else 4,
        "num_stages": 2 if fp32 else 3,
    }


def _check_args(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits, rotary_cos, rotary_sin,
                out, key_mask):  # fmt: skip
    check_tensor("q", q, ndim=4, layout="[B, 1, Hq, D]", unit_stride_last=True)
    batch, _, heads_q, head_dim = q.shape
    check_tensor("q", q, shape=(batch, 1, heads_q, head_dim), layout="[B, 1, Hq, D]")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected a head dim D in [1, {MAX_HEAD_DIM}], got {head_dim}")
    paged = block_table is not None
    layout = (
        "[num_blocks, block_size, Hkv, D] (paged: with block_table)"
        if paged
        else "[B, S_max, Hkv, D] (contiguous: no block_table)"
    )
    check_tensor("k_cache", k_cache, shape=(None if paged else batch, None, None, head_dim), layout=layout, unit_stride_last=True)
    check_tensor("v_cache", v_cache, shape=tuple(k_cache.shape), layout=f"{layout} (the shape of k_cache)", unit_stride_last=True)
    check_same_dtype("k_cache", k_cache, "q", q)
    check_same_dtype("v_cache", v_cache, "q", q)
    heads_kv = k_cache.shape[2]
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(f"k_cache: expected a number of KV heads that divides the {heads_q} query heads (GQA), got {heads_kv}")
    if (k is None) != (v is None):
        raise ValueError("k, v: expected both (to append one token per sequence) or neither")
    if k is not None:
        check_tensor("k", k, shape=(batch, 1, heads_kv, head_dim), layout="[B, 1, Hkv, D]", unit_stride_last=True)
        check_tensor("v", v, shape=(batch, 1, heads_kv, head_dim), layout="[B, 1, Hkv, D]", unit_stride_last=True)
        check_same_dtype("k", k, "q", q)
        check_same_dtype("v", v, "q", q)
    check_same_device({"q": q, "k_cache": k_cache, "v_cache": v_cache, "cache_seqlens": cache_seqlens,
                       "k": k, "v": v, "block_table": block_table, "out": out, "key_mask": key_mask})  # fmt: skip
    if out is not None:
        check_tensor("out", out, shape=tuple(q.shape), layout="[B, 1, Hq, D] (the shape of q)", dtypes=None)
        check_same_dtype("out", out, "q", q)
        if not out.is_contiguous():
            raise ValueError(f"out: expected a contiguous tensor (the kernels write its rows in order), got strides "
                             f"{list(out.stride())}")  # fmt: skip
    check_index_tensor("cache_seqlens", cache_seqlens, shape=(batch,), layout="[B]", device=q.device)
    if paged:
        block_size = k_cache.shape[1]
        if block_size not in PAGED_BLOCK_SIZES:
            raise ValueError(f"k_cache: expected a paged block size in {PAGED_BLOCK_SIZES} (dim 1), got {block_size}")
        check_index_tensor("block_table", block_table, shape=(batch, None), layout="[B, max_blocks]", device=q.device)
    if key_mask is not None:
        if paged:
            raise ValueError("key_mask: expected a contiguous cache (no block_table): a paged cache's keys are the pages "
                             "its block table names")  # fmt: skip
        check_tensor("key_mask", key_mask, shape=(batch, k_cache.shape[1]), layout="[B, S_max] (the cache's positions)",
                     dtypes=(torch.bool,), unit_stride_last=True)  # fmt: skip
    check_softmax_scale(softmax_scale)
    if num_kv_splits is not None:
        check_int("num_kv_splits", num_kv_splits, minimum=1)
        if num_kv_splits > MAX_KV_SPLITS:
            raise ValueError(f"num_kv_splits: expected at most {MAX_KV_SPLITS}, got {num_kv_splits}")
    _check_rotary_tables(rotary_cos, rotary_sin, q, k, cache_seqlens)


def _check_rotary_tables(rotary_cos, rotary_sin, q, k, cache_seqlens):
    """rotary_cos, rotary_sin [max_positions, D] (both or neither, with k and v)."""
    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos, rotary_sin: expected both (to rotate q and k in the kernel) or neither")
    if rotary_cos is None:
        return
    if k is None:
        raise ValueError("rotary_cos, rotary_sin: expected k and v too: the rotation is at the appended token's "
                         "position cache_seqlens[b]")  # fmt: skip
    head_dim = q.shape[-1]
    if head_dim % 2:
        raise ValueError(f"q: expected an even head dim D with rotary_cos/rotary_sin, got {head_dim}")
    for name, table in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
        check_tensor(name, table, shape=(None, head_dim), layout="[max_positions, D]", device=q.device, unit_stride_last=True)
    if rotary_sin.shape[0] != rotary_cos.shape[0]:
        raise ValueError(
            f"rotary_sin: expected shape {list(rotary_cos.shape)} (the shape of rotary_cos), got {list(rotary_sin.shape)}"
        )
    if rotary_cos.shape[0] == 0:
        raise ValueError("rotary_cos: expected at least one row (position) [max_positions, D], got 0")


def _capacity(k_cache, block_table) -> int:
    """The positions a sequence's cache holds: S_max, or its block table row's pages x page size (0
    for a pool of no pages: no entry names a page there)."""
    if block_table is None:
        return k_cache.shape[1]
    return k_cache.shape[1] * block_table.shape[1] if k_cache.shape[0] else 0


def _check_at_run_time(q, k_cache, v_cache, cache_seqlens, k, v, block_table, rotary_cos, rotary_sin, out,
                       key_mask) -> None:  # fmt: skip
    """The checks that need the real tensors, called inside the op so that a compiled graph runs
    them too (tracing can neither read data pointers nor sort symbolic strides): with an append, the
    caches are written in place, so each must have no internal overlap (each sequence's token lands
    in memory of its own); no element of a tensor written in place (the caches with an append, a
    given out) may lie in memory of another or of a tensor the launch reads; and the value checks
    (they read cache_seqlens and block_table): the lengths (+1 with an append) fit the cache, the
    pages a sequence uses are in the pool, every position cache_seqlens[b] has a rotary row."""
    written, read = {}, {"q": q, "k": k, "v": v, "cache_seqlens": cache_seqlens, "block_table": block_table,
                         "rotary_cos": rotary_cos, "rotary_sin": rotary_sin, "key_mask": key_mask}  # fmt: skip
    if k is not None:
        check_no_internal_overlap("k_cache", k_cache)
        check_no_internal_overlap("v_cache", v_cache)
        written.update(k_cache=k_cache, v_cache=v_cache)
    else:
        read.update(k_cache=k_cache, v_cache=v_cache)
    if out is not None:
        written["out"] = out  # contiguous (checked): no internal overlap
    if written:
        check_separate_memory(written, read)
    if not should_check_values(cache_seqlens):
        return
    appended = 0 if k is None else 1
    check_cache_seqlens_values("cache_seqlens", cache_seqlens, _capacity(k_cache, block_table), appended)
    if block_table is not None:
        check_block_table_values("block_table", block_table, k_cache.shape[0], k_cache.shape[1], cache_seqlens, appended)
    if rotary_cos is not None and cache_seqlens.numel():
        last = int(cache_seqlens.max())
        if last >= rotary_cos.shape[0]:
            raise ValueError(f"rotary_cos: expected a row for every position cache_seqlens[b], got {rotary_cos.shape[0]} rows "
                             f"and position {last}")  # fmt: skip


def decode_attention(
    q, k_cache, v_cache, cache_seqlens, k=None, v=None, block_table=None, softmax_scale=None, num_kv_splits=None,
    rotary_cos=None, rotary_sin=None, *, out=None, key_mask=None, backend="triton",
):  # fmt: skip
    """Attention of one query token per sequence over its KV cache.

    q [B, 1, Hq, D]; k_cache, v_cache [B, S_max, Hkv, D], or paged [num_blocks, block_size, Hkv, D]
    with block_table int32 [B, max_blocks]; cache_seqlens int32 [B]: tokens already cached. With
    k, v [B, 1, Hkv, D], those are written into the cache at position cache_seqlens[b] (in place) and
    attended to. Returns [B, 1, Hq, D]; a sequence with nothing to attend to gives 0.
    num_kv_splits: how many programs split one sequence's cache (None: `default_num_kv_splits`).
    rotary_cos, rotary_sin [max_positions, D] (transformers' full-width rotate-half tables, fp16, bf16
    or fp32; with k, v only): q and k are first rotated by row cache_seqlens[b], the new token's
    position, so the cache holds rotated keys: apply_rotary fused in (flash-attn's rotary_cos).
    cache_seqlens is not advanced: the caller adds 1 after an append, as with flash-attn.
    out: a contiguous [B, 1, Hq, D] tensor of q's dtype that the kernels write the result into (no
    new tensor; a serving engine's output buffer, as vLLM passes one), returned.
    key_mask: bool [B, S_max] (a contiguous cache only; the last dim contiguous, any row stride: a
    slice of a padding mask): cached key j of sequence b is attended only where key_mask[b, j], the
    appended token always; a sequence whose keys the mask drops all gives 0. A padded batch's keys
    read in place, where gathering the real ones would copy the cache (transformers' padded decode).
    The call holds no state between calls: calls from several threads or streams at once are safe,
    as long as no two of them write the same cache rows (two sequences whose block tables share a
    page, both appending, is the caller's to avoid, as in flash-attn).
    """
    check_backend(backend)
    _check_args(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits, rotary_cos, rotary_sin,
                out, key_mask)  # fmt: skip
    record_call("decode_attention", backend)
    if backend == "reference":
        _check_at_run_time(q, k_cache, v_cache, cache_seqlens, k, v, block_table, rotary_cos, rotary_sin, out, key_mask)
        return reference.decode_attention(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale,
                                          rotary_cos=rotary_cos, rotary_sin=rotary_sin, out=out, key_mask=key_mask)  # fmt: skip
    check_triton_device("q", q)
    args = (q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits, rotary_cos, rotary_sin, key_mask)
    if out is None:
        return _decode_attention_launch(*args)
    _decode_attention_into_launch(*args, out)
    return out


@kernel_op("decode_attention", fake=lambda q, *args: q.new_empty(q.shape), mutates_args=("k_cache", "v_cache"))
def _decode_attention_launch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                             k: Optional[torch.Tensor], v: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
                             softmax_scale: Optional[float], num_kv_splits: Optional[int],
                             rotary_cos: Optional[torch.Tensor], rotary_sin: Optional[torch.Tensor],
                             key_mask: Optional[torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """decode_attention into a new [B, 1, Hq, D] output."""
    _check_at_run_time(q, k_cache, v_cache, cache_seqlens, k, v, block_table, rotary_cos, rotary_sin, None, key_mask)
    out = new_output(q.shape, q.dtype, q.device)
    _launch_into(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits, rotary_cos, rotary_sin,
                 key_mask, out)  # fmt: skip
    return out


@kernel_op("decode_attention_into", fake=lambda *args: None, mutates_args=("k_cache", "v_cache", "out"))
def _decode_attention_into_launch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                                  k: Optional[torch.Tensor], v: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
                                  softmax_scale: Optional[float], num_kv_splits: Optional[int],
                                  rotary_cos: Optional[torch.Tensor], rotary_sin: Optional[torch.Tensor],
                                  key_mask: Optional[torch.Tensor], out: torch.Tensor) -> None:  # fmt: skip
    """decode_attention into the caller's out."""
    _check_at_run_time(q, k_cache, v_cache, cache_seqlens, k, v, block_table, rotary_cos, rotary_sin, out, key_mask)
    _launch_into(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits, rotary_cos, rotary_sin,
                 key_mask, out)  # fmt: skip


def _launch_into(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits, rotary_cos, rotary_sin,
                 key_mask, out) -> None:  # fmt: skip
    """Split stage (+ merge stage when num_kv_splits > 1) into out [B, 1, Hq, D] (contiguous); appends
    k, v (rotated with q when the rotary tables are given) to the caches in place when given."""
    batch, _, heads_q, head_dim = q.shape
    heads_kv = k_cache.shape[2]
    if out.numel() == 0:
        return
    paged = block_table is not None
    page_size = k_cache.shape[1] if paged else 1
    max_context = _capacity(k_cache, block_table)
    if num_kv_splits is None:
        num_kv_splits = default_num_kv_splits(batch, heads_kv, max_context, q.device)
    config = decode_config(head_dim, heads_q // heads_kv, q.dtype)
    single_split = num_kv_splits == 1
    if single_split:
        partial_out = partial_lse = out  # unused
    else:
        partial_out = torch.empty((batch, heads_q, num_kv_splits, head_dim), dtype=torch.float32, device=q.device)
        partial_lse = torch.empty((batch, heads_q, num_kv_splits), dtype=torch.float32, device=q.device)
    append = k is not None
    k_new, v_new = (k, v) if append else (q, q)  # q stands in for the unused pointers
    rotary = rotary_cos is not None
    cos, sin = (rotary_cos, rotary_sin) if rotary else (q, q)
    masked = key_mask is not None
    mask_bytes = key_mask.view(torch.uint8) if masked else cache_seqlens  # cache_seqlens stands in, unused
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    pdl = pdl_options(q.device)
    # a decode step makes this call once a layer: each tensor's strides read once (host time)
    q_strides, k_new_strides, v_new_strides = q.stride(), k_new.stride(), v_new.stride()
    cache_strides = (*k_cache.stride()[:3], *v_cache.stride()[:3])
    _decode_split_kernel[(num_kv_splits, heads_kv, batch)](
        q, k_cache, v_cache, cache_seqlens, k_new, v_new, block_table if paged else cache_seqlens, mask_bytes,
        cos, sin, partial_out, partial_lse, out,
        heads_q // heads_kv, scale * LOG2_E, num_kv_splits, max_context, k_cache.shape[0], cos.shape[0],
        q_strides[0], q_strides[2], *cache_strides,
        k_new_strides[0], k_new_strides[2], v_new_strides[0], v_new_strides[2],
        block_table.stride(0) if paged else 0, key_mask.stride(0) if masked else 0, cos.stride(0), sin.stride(0),
        HEAD_DIM=head_dim, PAGED=paged, PAGE_SIZE=page_size, APPEND=append, ROTARY=rotary, SINGLE_SPLIT=single_split,
        DOT_IN_FP32=dot_in_fp32(q.dtype), KEY_MASK=masked,
        STRIDE_MULTIPLE=stride_multiple(q.element_size(), (q_strides[0], q_strides[2], *cache_strides)),
        **config, **pdl,
    )  # fmt: skip
    if not single_split:
        _decode_merge_kernel[(batch * heads_q,)](
            partial_out, partial_lse, out, num_kv_splits,
            HEAD_DIM=head_dim, BLOCK_D=config["BLOCK_D"], BLOCK_S=pow2_at_least(num_kv_splits),
            NEXT_LAUNCHED=early_next_launch_option(pdl["USE_PDL"]), **pdl,
        )  # fmt: skip


# The model's decode: Hq 12 / Hkv 2, D 128, contiguous and paged caches, with and without append.
MODEL_HEADS = (12, 2, 128)


@register_compile_configs
def _compile_configs():
    heads_q, heads_kv, head_dim = MODEL_HEADS
    configs = []
    split_signature = {
        "q_ptr": "*T", "k_cache_ptr": "*T", "v_cache_ptr": "*T", "cache_seqlens_ptr": "*i32", "k_new_ptr": "*T",
        "v_new_ptr": "*T", "block_table_ptr": "*i32", "key_mask_ptr": "*i32", "rotary_cos_ptr": "*T", "rotary_sin_ptr": "*T",
        "partial_out_ptr": "*fp32", "partial_lse_ptr": "*fp32",
        "out_ptr": "*T", "heads_per_kv": "i32", "qk_scale_log2": "fp32", "num_kv_splits": "i32",
        "capacity": "i32", "num_pages": "i32", "rotary_rows": "i32",
        **{name: "i32" for name in _decode_split_kernel.arg_names if name.endswith("_stride")},
    }  # fmt: skip
    # what the launcher's specialisation sees as 16-divisible at the model's shapes: pointers and the
    # tensors' strides (D 128, Hkv 2); not the block table's, a count of pages that follows the capacity
    aligned = tuple(n for n in split_signature if n.endswith(("_ptr", "_stride")) and n != "block_table_stride")
    # with a key mask (transformers' padded decode: a slice of its padding mask, bytes) neither the
    # mask's start nor its row stride
    mask_aligned = tuple(n for n in aligned if n not in ("key_mask_ptr", "key_mask_stride"))
    for dtype in FLOAT_DTYPES:
        config = decode_config(head_dim, heads_q // heads_kv, dtype)
        launch = {"num_warps": config.pop("num_warps"), "num_stages": config.pop("num_stages")}
        # paged: the model's page size (16); a page size changes a constant of the gather, not the code's shape
        for paged, page_size in ((False, 1), (True, 16)):
            # rotary only with an append; the model's decode appends, its tables in the model's dtype
            for append, rotary in ((False, False), (True, False), (True, True)):
                # programmatic dependent launch: the model's call (contiguous cache) in bf16 (its dtype)
                model_call = (append, rotary, paged) == (True, True, False)
                splits = ("split", "1 split") + (("split, PDL",) if model_call and dtype == torch.bfloat16 else ())
                for split in splits:
                    configs += configs_per_dtype(
                        (dtype,), op="decode_attention", kernel=_decode_split_kernel, signature=split_signature,
                        shape=f"Hq 12 Hkv 2 D 128 {'paged ' + str(page_size) if paged else 'contiguous'}"
                              f"{' +append' if append else ''}{' +rotary' if rotary else ''} {split}",
                        constexprs={"HEAD_DIM": head_dim, **config, "PAGED": paged, "PAGE_SIZE": page_size, "APPEND": append,
                                    "ROTARY": rotary, "SINGLE_SPLIT": split == "1 split", "DOT_IN_FP32": dtype == torch.float32,
                                    "USE_PDL": split.endswith("PDL"), "KEY_MASK": False},
                        aligned=aligned, uses_dot=dtype != torch.float32, loads_before_barrier=dtype != torch.float32,
                        # ahead of its PDL wait: the sequence's length and, with rotary, its cos and sin rows
                        loads_before_wait=1 + 2 * rotary if split.endswith("PDL") else None,
                        **launch,
                    )  # fmt: skip
        # a key mask: the patched transformers models' padded decode step (contiguous cache, no append)
        for split in ("split", "1 split"):
            configs += configs_per_dtype(
                (dtype,), op="decode_attention", kernel=_decode_split_kernel,
                signature={**split_signature, "key_mask_ptr": "*u8"},
                shape=f"Hq 12 Hkv 2 D 128 contiguous +key mask {split}",
                constexprs={"HEAD_DIM": head_dim, **config, "PAGED": False, "PAGE_SIZE": 1, "APPEND": False,
                            "ROTARY": False, "SINGLE_SPLIT": split == "1 split", "DOT_IN_FP32": dtype == torch.float32,
                            "USE_PDL": False, "KEY_MASK": True},
                aligned=mask_aligned, uses_dot=dtype != torch.float32, loads_before_barrier=dtype != torch.float32,
                **launch,
            )  # fmt: skip
        # under PDL (bf16, the model's), with and without the early launch of the next kernel
        pdl_forms = ((False, False), (True, False), (True, True)) if dtype == torch.bfloat16 else ((False, False),)
        for use_pdl, next_launched in pdl_forms:
            configs += configs_per_dtype(
                (dtype,), op="decode_attention", kernel=_decode_merge_kernel,
                shape=f"merge of up to 128 splits, D 128{', PDL' if use_pdl else ''}{', next launched early' if next_launched else ''}",
                signature={"partial_out_ptr": "*fp32", "partial_lse_ptr": "*fp32", "out_ptr": "*T", "num_kv_splits": "i32"},
                constexprs={"HEAD_DIM": head_dim, "BLOCK_D": 128, "BLOCK_S": MAX_KV_SPLITS, "USE_PDL": use_pdl,
                            "NEXT_LAUNCHED": next_launched},
                aligned=("partial_out_ptr", "partial_lse_ptr", "out_ptr"), num_warps=4, num_stages=1, loads_before_barrier=True,
                loads_before_wait=0 if use_pdl else None,
                run_option="weight_prefetch" if next_launched else "",
            )  # fmt: skip
    return configs
