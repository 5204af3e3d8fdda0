"""attention / attention_varlen: softmax attention forward for the ViT (256 tokens, D 72), the fusion
cross-attention (ragged text queries over 256 visual keys, D 128) and LLM prefill (causal, GQA 6,
D 128, ragged prompts). Layout as flash-attn: dense [B, L, H, D], packed [T, H, D] + cu_seqlens.

One flash-style kernel body serves both: a program owns BLOCK_M query rows of one (sequence, query
head), keeps q in registers and streams the keys in BLOCK_N blocks with an online softmax (running
row max and sum in fp32, exp2 with the scale folded into log2 e; in blocks with no mask, the row max
is taken before scaling and each exponent's argument is one FMA), so the [Lq, Lk] score matrix
never exists in memory. Packed sequences find their rows through cu_seqlens; dense batches through the
batch stride. GQA reads KV head h // (Hq // Hkv) by index: K/V are never repeated in memory, and the
programs of one KV head's query heads are neighbours in the grid, so they share K/V tiles in L2.

The arithmetic per (sequence, head): 4 * D * (visible query-key pairs) FLOPs over (2 Lq + 2 Lk) * D
elements: at L 2048, D 128 that is ~1000 FLOP/byte, compute-bound, so both dots stay on the tensor
cores (wgmma on sm_90) with fp32 accumulation.

Head dims that are not a power of two are split, not padded to the next power: D 72 and 80 run as a
64-wide dot plus a 16-wide tail dot (masked columns), D 96 as 64 + 32, so D 72 costs 80 columns of
work rather than 128 and the inputs are never copied.

Causal masks (bottom-right: query i sees key j <= i + Lk - Lq) split each program's key range in two
loops: blocks every row of the tile sees in full run with no mask arithmetic, the rest (the diagonal
and the ragged end) with masks. Blocks past the diagonal are never visited. Dense non-causal calls
whose keys are whole blocks (the ViT's 256) have no second loop, and for narrow heads their autotuner
also tries persistent programs (one per resident slot, walking the work items).
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
    check_bool,
    check_cu_seqlens,
    check_cu_seqlens_values,
    check_same_device,
    check_same_dtype,
    check_softmax_scale,
    check_tensor,
    check_triton_device,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._autotune import INTERPRETER, autotuned_launchers, power_of_4_class
from aurora_kernels.ops._dot import dot_acc, dot_in_fp32
from aurora_kernels.ops._layout import cdiv, pow2_at_least, sm_count, stride_multiple

MAX_HEAD_DIM = 256
LOG2_E = 1.4426950408889634
MAX_BLOCK_N = 128  # the largest key block of any candidate and of the interpreter's blocks
INT32_MAX = 2**31 - 1


def head_dim_blocks(head_dim: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_D_TAIL): the largest power of two <= D (at least 16) plus a power-of-two tail
    (0 when D is a power of two): 72 -> (64, 16), 80 -> (64, 16), 96 -> (64, 32), 128 -> (128, 0)."""
    main = max(16, 1 << (head_dim.bit_length() - 1))
    rest = head_dim - main
    return main, (pow2_at_least(rest, 16) if rest > 0 else 0)


@triton.jit
def _tile_pointers(base, keys, token_stride, cols, WIDE_OFFSETS: tl.constexpr):
    """base + keys x token_stride + cols, keys and cols broadcast to the tile's shape. The offsets are
    32-bit products and adds (half the instructions of 64-bit ones, in the loop that issues the K/V
    loads) where the launcher found every key's offset to fit (WIDE_OFFSETS False)."""
    if WIDE_OFFSETS:
        return base + keys.to(tl.int64) * token_stride + cols
    return base + (keys * token_stride + cols)


@triton.jit
def _attend_key_block(
    acc, acc_tail, row_max, row_sum, q, q_tail, k_base, v_base, key_start, rows, len_k, causal_shift,
    k_token_stride, v_token_stride, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, DOT_IN_FP32: tl.constexpr, WIDE_OFFSETS: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over keys key_start .. key_start + BLOCK_N."""
    keys = key_start + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_D)
    key_ok = keys < len_k
    # k is loaded as its transpose [D, BLOCK_N] so the dot reads q @ k^T directly
    k_ptrs = _tile_pointers(k_base, keys[None, :], k_token_stride, cols[:, None], WIDE_OFFSETS)
    v_ptrs = _tile_pointers(v_base, keys[:, None], v_token_stride, cols[None, :], WIDE_OFFSETS)
    if MASKED:
        k = tl.load(k_ptrs, mask=key_ok[None, :] & (cols[:, None] < HEAD_DIM), other=0.0)
    else:
        k = tl.load(k_ptrs, mask=cols[:, None] < HEAD_DIM, other=0.0)
    scores = dot_acc(q, k, tl.zeros((q.shape[0], BLOCK_N), tl.float32), DOT_IN_FP32)
    if BLOCK_D_TAIL > 0:
        tail_cols = BLOCK_D + tl.arange(0, BLOCK_D_TAIL)
        tail_ok = tail_cols < HEAD_DIM
        k_tail_ptrs = _tile_pointers(k_base, keys[None, :], k_token_stride, tail_cols[:, None], WIDE_OFFSETS)
        if MASKED:
            k_tail = tl.load(k_tail_ptrs, mask=key_ok[None, :] & tail_ok[:, None], other=0.0)
        else:
            k_tail = tl.load(k_tail_ptrs, mask=tail_ok[:, None], other=0.0)
        scores = dot_acc(q_tail, k_tail, scores, DOT_IN_FP32)
    # row_max starts finite (-1e30), so a row that sees no key in this block gets p = 0, alpha = 1
    if MASKED:
        visible = key_ok[None, :]
        if CAUSAL:
            visible = visible & (keys[None, :] <= rows[:, None] + causal_shift)
        scores = tl.where(visible, scores * qk_scale_log2, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        p = tl.math.exp2(scores - new_max[:, None])
    else:
        # qk_scale_log2 >= 0 (a negative scale's sign is in q: NEGATE_Q), so the row max of the scaled
        # scores is the scaled row max, and each exponent's argument one FMA: two FP32 operations an
        # element where scaling first made three
        new_max = tl.maximum(row_max, tl.max(scores, 1) * qk_scale_log2)
        p = tl.math.exp2(tl.fma(scores, qk_scale_log2, -new_max[:, None]))
    alpha = tl.math.exp2(row_max - new_max)
    row_sum = row_sum * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(v_ptrs, mask=key_ok[:, None] & (cols[None, :] < HEAD_DIM), other=0.0)
    else:
        v = tl.load(v_ptrs, mask=cols[None, :] < HEAD_DIM, other=0.0)
    p = p.to(v.dtype)
    acc = dot_acc(p, v, acc * alpha[:, None], DOT_IN_FP32)
    if BLOCK_D_TAIL > 0:
        v_tail_ptrs = _tile_pointers(v_base, keys[:, None], v_token_stride, tail_cols[None, :], WIDE_OFFSETS)
        if MASKED:
            v_tail = tl.load(v_tail_ptrs, mask=key_ok[:, None] & tail_ok[None, :], other=0.0)
        else:
            v_tail = tl.load(v_tail_ptrs, mask=tail_ok[None, :], other=0.0)
        acc_tail = dot_acc(p, v_tail, acc_tail * alpha[:, None], DOT_IN_FP32)
    return acc, acc_tail, new_max, row_sum


@triton.jit
def _query_block_coords(item, query_blocks, num_heads, num_seqs, CAUSAL: tl.constexpr):
    """(query block, head, sequence) of work item `item`. The GPU starts programs in the order of their
    items. Causal: the query block slowest, counting down, and the head fastest. Causal work grows
    with the query block, so every sequence's and head's longest blocks start first and the shortest
    fill the tail (block-fastest order left the last heads' longest blocks to start late:
    docs/performance-log.md), and the query heads that share a KV head run side by side on the same
    keys. Otherwise (every block the same work) the block fastest: one (sequence, head)'s blocks side
    by side, sharing its K/V tiles in L2."""
    if CAUSAL:
        head = item % num_heads
        seq_and_block = item // num_heads
        batch = seq_and_block % num_seqs
        m_block = query_blocks - 1 - seq_and_block // num_seqs
    else:
        m_block = item % query_blocks
        seq_and_head = item // query_blocks
        head = seq_and_head % num_heads
        batch = seq_and_head // num_heads
    return m_block, head, batch


@triton.jit
def _sequence_bases(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k, head, batch, heads_per_kv,
    q_batch_stride, q_token_stride, q_head_stride, k_batch_stride, k_token_stride, k_head_stride,
    v_batch_stride, v_token_stride, v_head_stride, out_batch_stride, out_token_stride, out_head_stride,
    IS_VARLEN: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr,
):  # fmt: skip
    """The first row of (sequence, head) in q, k, v and out, and the sequence's query and key lengths."""
    batch64 = batch.to(tl.int64)
    kv_head = (head // heads_per_kv).to(tl.int64)
    # packed inputs pass batch strides of 0 and move to their sequence's first row
    q_offset = batch64 * q_batch_stride + head.to(tl.int64) * q_head_stride
    k_offset = batch64 * k_batch_stride + kv_head * k_head_stride
    v_offset = batch64 * v_batch_stride + kv_head * v_head_stride
    o_offset = batch64 * out_batch_stride + head.to(tl.int64) * out_head_stride
    if IS_VARLEN:
        # Offsets clamped to the packed rows (seqlen_q/k here): where cu_seqlens went unchecked (CUDA,
        # value checks off) a bad offset gives a wrong output at worst, never a read or a write outside
        # q, k, v and out. For valid offsets the clamps change nothing.
        q_first = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + batch), 0), seqlen_q)
        len_q = tl.minimum(tl.maximum(tl.load(cu_seqlens_q_ptr + batch + 1), q_first), seqlen_q) - q_first
        k_first = tl.minimum(tl.maximum(tl.load(cu_seqlens_k_ptr + batch), 0), seqlen_k)
        len_k = tl.minimum(tl.maximum(tl.load(cu_seqlens_k_ptr + batch + 1), k_first), seqlen_k) - k_first
        q_offset += q_first.to(tl.int64) * q_token_stride
        o_offset += q_first.to(tl.int64) * out_token_stride
        k_offset += k_first.to(tl.int64) * k_token_stride
        v_offset += k_first.to(tl.int64) * v_token_stride
    else:
        len_q = seqlen_q
        len_k = seqlen_k
    # Every stride is a multiple of STRIDE_MULTIPLE (the launcher checked): saying so lets the compiler
    # prove 16-byte alignment and vectorise the tile loads. Triton alone only learns divisibility by 16
    # of each stride, which a head stride of 72 (the ViT) lacks: its loads would be 2 bytes each.
    q_base = q_ptr + tl.multiple_of(q_offset, STRIDE_MULTIPLE)
    k_base = k_ptr + tl.multiple_of(k_offset, STRIDE_MULTIPLE)
    v_base = v_ptr + tl.multiple_of(v_offset, STRIDE_MULTIPLE)
    o_base = out_ptr + tl.multiple_of(o_offset, STRIDE_MULTIPLE)
    return q_base, k_base, v_base, o_base, len_q, len_k


@triton.jit
def _attend_query_block(
    q_base, k_base, v_base, o_base, row_start, len_q, len_k, qk_scale_log2, q_token_stride, k_token_stride,
    v_token_stride, out_token_stride,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr, CAUSAL: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, NEGATE_Q: tl.constexpr, WIDE_OFFSETS: tl.constexpr, WHOLE_KEY_BLOCKS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Query rows row_start .. row_start + BLOCK_M of one (sequence, head) over its keys, into out.
    WHOLE_KEY_BLOCKS: the launcher found the keys to be whole BLOCK_N blocks with no causal mask, so
    the masked loop is left out (one loop, which Triton can flatten into a persistent program's)."""
    rows = row_start + tl.arange(0, BLOCK_M)
    row_ok = rows < len_q
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    q = tl.load(
        q_base + rows64[:, None] * q_token_stride + cols[None, :], mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM), other=0.0
    )
    # a negative softmax scale: (-q) k^T times |scale|, so the kernel's scale is >= 0. Negated in fp32
    # (exact both ways): the interpreter would negate a bf16 tensor's raw bits as an integer.
    if NEGATE_Q:
        q = (-q.to(tl.float32)).to(q.dtype)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    if BLOCK_D_TAIL > 0:
        tail_cols = BLOCK_D + tl.arange(0, BLOCK_D_TAIL)
        tail_ok = tail_cols < HEAD_DIM
        q_tail = tl.load(
            q_base + rows64[:, None] * q_token_stride + tail_cols[None, :], mask=row_ok[:, None] & tail_ok[None, :], other=0.0
        )
        if NEGATE_Q:
            q_tail = (-q_tail.to(tl.float32)).to(q_tail.dtype)
        acc_tail = tl.zeros((BLOCK_M, BLOCK_D_TAIL), tl.float32)
    else:
        # unused placeholders: the tail dots are compiled out when BLOCK_D_TAIL == 0
        q_tail = q
        acc_tail = acc
    row_max = tl.full((BLOCK_M,), -1.0e30, tl.float32)
    row_sum = tl.zeros((BLOCK_M,), tl.float32)

    causal_shift = len_k - len_q  # query i sees keys j <= i + causal_shift
    whole_blocks_end = (len_k // BLOCK_N) * BLOCK_N
    if CAUSAL:
        keys_end = tl.minimum(len_k, row_start + BLOCK_M + causal_shift)
        # keys every row of the tile sees: j <= row_start + causal_shift
        unmasked_end = tl.minimum((tl.maximum(row_start + causal_shift + 1, 0) // BLOCK_N) * BLOCK_N, whole_blocks_end)
    else:
        keys_end = len_k
        unmasked_end = whole_blocks_end
    for key_start in range(0, unmasked_end, BLOCK_N):
        acc, acc_tail, row_max, row_sum = _attend_key_block(
            acc, acc_tail, row_max, row_sum, q, q_tail, k_base, v_base, key_start, rows, len_k, causal_shift,
            k_token_stride, v_token_stride, qk_scale_log2,
            HEAD_DIM, BLOCK_D, BLOCK_D_TAIL, BLOCK_N, CAUSAL, False, DOT_IN_FP32, WIDE_OFFSETS,
        )  # fmt: skip
    if not WHOLE_KEY_BLOCKS:
        for key_start in range(unmasked_end, keys_end, BLOCK_N):
            acc, acc_tail, row_max, row_sum = _attend_key_block(
                acc, acc_tail, row_max, row_sum, q, q_tail, k_base, v_base, key_start, rows, len_k, causal_shift,
                k_token_stride, v_token_stride, qk_scale_log2,
                HEAD_DIM, BLOCK_D, BLOCK_D_TAIL, BLOCK_N, CAUSAL, True, DOT_IN_FP32, WIDE_OFFSETS,
            )  # fmt: skip

    # A row that saw no key (empty key sequence, or above the causal diagonal) has row_sum 0 and acc
    # 0: output 0. A row that saw keys whose scores were all -inf (q.k x scale overflowed) has row_sum
    # 0 too: NaN, as torch's softmax gives; so does a NaN among the scores (row_sum NaN).
    if CAUSAL:
        saw_a_key = tl.where(len_k > 0, rows + causal_shift >= 0, False)
    else:
        saw_a_key = len_k > 0
    inv_sum = 1.0 / tl.where(saw_a_key, row_sum, 1.0)  # row_sum 0 with keys: acc (0) x inf is the NaN
    out_rows = o_base + rows64[:, None] * out_token_stride
    out_dtype = o_base.dtype.element_ty
    tl.store(out_rows + cols[None, :], (acc * inv_sum[:, None]).to(out_dtype), mask=row_ok[:, None] & (cols[None, :] < HEAD_DIM))
    if BLOCK_D_TAIL > 0:
        tl.store(
            out_rows + tail_cols[None, :], (acc_tail * inv_sum[:, None]).to(out_dtype), mask=row_ok[:, None] & tail_ok[None, :]
        )


@triton.jit
def _attend_item(
    item, query_blocks, q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k,
    num_heads, num_seqs, heads_per_kv, qk_scale_log2, q_batch_stride, q_token_stride, q_head_stride,
    k_batch_stride, k_token_stride, k_head_stride, v_batch_stride, v_token_stride, v_head_stride,
    out_batch_stride, out_token_stride, out_head_stride,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr, CAUSAL: tl.constexpr,
    IS_VARLEN: tl.constexpr, DOT_IN_FP32: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr, NEGATE_Q: tl.constexpr,
    WIDE_OFFSETS: tl.constexpr, WHOLE_KEY_BLOCKS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVERY_ITEM_HAS_ROWS: tl.constexpr,
):  # fmt: skip
    """Work item `item` of `query_blocks` x heads x sequences: its query block, if the sequence has
    rows there (a packed sequence shorter than the longest has none in its last blocks). Where the
    launch is dense every item has (EVERY_ITEM_HAS_ROWS), and the check is left out: a branch around
    the key loop keeps Triton from flattening a persistent program's item loop into it."""
    m_block, head, batch = _query_block_coords(item, query_blocks, num_heads, num_seqs, CAUSAL)
    q_base, k_base, v_base, o_base, len_q, len_k = _sequence_bases(
        q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k, head, batch, heads_per_kv,
        q_batch_stride, q_token_stride, q_head_stride, k_batch_stride, k_token_stride, k_head_stride,
        v_batch_stride, v_token_stride, v_head_stride, out_batch_stride, out_token_stride, out_head_stride,
        IS_VARLEN, STRIDE_MULTIPLE,
    )  # fmt: skip
    if EVERY_ITEM_HAS_ROWS or m_block * BLOCK_M < len_q:
        _attend_query_block(
            q_base, k_base, v_base, o_base, m_block * BLOCK_M, len_q, len_k, qk_scale_log2, q_token_stride,
            k_token_stride, v_token_stride, out_token_stride, HEAD_DIM, BLOCK_D, BLOCK_D_TAIL, CAUSAL, DOT_IN_FP32,
            NEGATE_Q, WIDE_OFFSETS, WHOLE_KEY_BLOCKS, BLOCK_M, BLOCK_N,
        )  # fmt: skip


@triton.jit(do_not_specialize=["num_heads", "num_seqs", "query_rows_class"])
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr,
    seqlen_q, seqlen_k, num_heads, num_seqs, heads_per_kv, qk_scale_log2,  # seqlen_q/k: the dense lengths, or the packed rows
    q_batch_stride, q_token_stride, q_head_stride,
    k_batch_stride, k_token_stride, k_head_stride,
    v_batch_stride, v_token_stride, v_head_stride,
    out_batch_stride, out_token_stride, out_head_stride,
    query_rows_class,  # unused here: part of the autotuner's key (QUERY_ROWS_CLASSES)
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D_TAIL: tl.constexpr,
    CAUSAL: tl.constexpr, IS_VARLEN: tl.constexpr, DOT_IN_FP32: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr,
    NEGATE_Q: tl.constexpr, WIDE_OFFSETS: tl.constexpr, WHOLE_KEY_BLOCKS: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """One work item (query block, head, sequence) a program or, PERSISTENT (dense inputs whose keys
    are whole key blocks with no causal mask: WHOLE_KEY_BLOCKS), a program per resident slot walking
    the items in steps of the grid: one loop of items around one loop of key blocks, which Triton
    flattens and pipelines as one, so the next item's q, k and v tiles load during this item's last
    key blocks."""
    tl.static_assert(not WHOLE_KEY_BLOCKS or not (CAUSAL or IS_VARLEN), "whole key blocks: dense, non-causal")
    tl.static_assert(not PERSISTENT or WHOLE_KEY_BLOCKS, "persistent programs: whole key blocks only")
    if PERSISTENT:
        query_blocks = tl.cdiv(seqlen_q, BLOCK_M)  # dense: seqlen_q is every sequence's length
        for item in tl.range(tl.program_id(0), query_blocks * num_heads * num_seqs, tl.num_programs(0), flatten=True):
            _attend_item(
                item, query_blocks, q_ptr, k_ptr, v_ptr, out_ptr, cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k,
                num_heads, num_seqs, heads_per_kv, qk_scale_log2, q_batch_stride, q_token_stride, q_head_stride,
                k_batch_stride, k_token_stride, k_head_stride, v_batch_stride, v_token_stride, v_head_stride,
                out_batch_stride, out_token_stride, out_head_stride, HEAD_DIM, BLOCK_D, BLOCK_D_TAIL, CAUSAL, IS_VARLEN,
                DOT_IN_FP32, STRIDE_MULTIPLE, NEGATE_Q, WIDE_OFFSETS, WHOLE_KEY_BLOCKS, BLOCK_M, BLOCK_N, True,
            )  # fmt: skip
    else:
        _attend_item(
            tl.program_id(0), tl.num_programs(0) // (num_heads * num_seqs), q_ptr, k_ptr, v_ptr, out_ptr,
            cu_seqlens_q_ptr, cu_seqlens_k_ptr, seqlen_q, seqlen_k, num_heads, num_seqs, heads_per_kv, qk_scale_log2,
            q_batch_stride, q_token_stride, q_head_stride, k_batch_stride, k_token_stride, k_head_stride,
            v_batch_stride, v_token_stride, v_head_stride, out_batch_stride, out_token_stride, out_head_stride,
            HEAD_DIM, BLOCK_D, BLOCK_D_TAIL, CAUSAL, IS_VARLEN, DOT_IN_FP32, STRIDE_MULTIPLE, NEGATE_Q, WIDE_OFFSETS,
            WHOLE_KEY_BLOCKS, BLOCK_M, BLOCK_N, False,
        )  # fmt: skip


# Autotune candidates on a GPU (BLOCK_M, BLOCK_N, warps, stages), keyed on (head dim, causal, packed,
# size class of the query rows) and the dtype. fp16/bf16 tiles feed wgmma; fp32 (ieee dots on the FMA
# units, for the parity bound) takes small tiles, 32 x 16 on 8 warps, to stay clear of spills (on 4,
# ptxas 13 spilled it). The compile report checks every one at the model's shapes and gives the
# blocks an SM holds at once (blocks/SM). A Triton loop waits for each product before its softmax:
# blocks that share an SM overlap one's softmax with another's products (what FlashAttention-3
# schedules between two warpgroups). So besides 128 x 64 on 8 warps (one block an SM at D 128), the
# tiles are ones several blocks of fit: 64 x 64 (two an SM at D 128, three at the ViT's 72: 64 + 16
# columns of work), 64 x 32 (three, four) and, for heads of at most NARROW_HEAD_DIM, 128 x 32 on 8
# warps (two). The tiles of one block an SM that never won a tuning (128 x 128, 64 x 128) are out,
# and BLOCK_N 256 spilled at every head dim and tile tried (docs/performance-log.md).
_GPU_CONFIGS = {
    "half": ((128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3)),
    "half_narrow_head": ((128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (128, 32, 8, 3)),
    "fp32": ((32, 16, 8, 1), (16, 16, 4, 2)),
}
NARROW_HEAD_DIM = 80
# Dense, non-causal launches whose keys are whole MAX_BLOCK_N blocks (the ViT's 256) leave the masked
# loop out (WHOLE_KEY_BLOCKS: one loop; the ViT's 64 x 64 tile then takes 127 registers, not 141, under
# Triton 3.6). With heads of at most NARROW_HEAD_DIM (the ViT: 4 or 8 key blocks a query block, so a
# program's start, its q tile and first K/V tiles, is a large part of its time) their autotuner also
# tries persistent programs (BLOCK_M, BLOCK_N, warps, stages, blocks an SM): that many programs an SM,
# each walking the work items in steps of the grid with the next item's tiles loading during this
# one's last key blocks. The blocks an SM may not exceed what the compile report gives for the tile
# (a program that cannot start until another has walked all its items doubles the time); a test holds
# them to it under both Tritons.
PERSISTENT_CONFIGS = ((64, 64, 4, 3, 2), (64, 32, 4, 3, 2))
PERSISTENT_BLOCKS_PER_SM = {(c[0], c[1]): c[4] for c in PERSISTENT_CONFIGS}
_GPU_CONFIGS["half_narrow_head_whole_key_blocks"] = (*_GPU_CONFIGS["half_narrow_head"], *PERSISTENT_CONFIGS)


def whole_key_blocks(packed: bool, causal: bool, len_k: int) -> bool:
    """Whether every program sees whole key blocks and no mask: dense, non-causal, the key length a
    multiple of MAX_BLOCK_N (so of every candidate's and the interpreter's BLOCK_N)."""
    return not packed and not causal and len_k > 0 and len_k % MAX_BLOCK_N == 0


def launcher_kind(head_dim: int, dtype: torch.dtype, whole_blocks: bool = False) -> str:
    if dtype == torch.float32:
        return "fp32"
    if head_dim > NARROW_HEAD_DIM:
        return "half"
    return "half_narrow_head_whole_key_blocks" if whole_blocks else "half_narrow_head"


MIN_BLOCK_M = 16  # the fewest query rows of any candidate's block: the most programs a launch can take
MAX_PROGRAMS = 2**31 - 1  # the grid's one axis, and the program ids' int32
_LAUNCHERS = autotuned_launchers(
    _attention_kernel, _GPU_CONFIGS,
    lambda kind, c: triton.Config({"BLOCK_M": c[0], "BLOCK_N": c[1], "PERSISTENT": len(c) > 4}, num_warps=c[2],
                                  num_stages=c[3]),
    key=["HEAD_DIM", "CAUSAL", "IS_VARLEN", "query_rows_class"],  # the autotuner adds the tensors' dtypes
)  # fmt: skip
# Size classes of query rows x heads for the autotuner's key, 4096 .. 1M (at most 5 tunings per head
# dim, causality, layout and dtype): one 256-token image x 16 heads is 32 programs of BLOCK_M 128, a
# quarter of an H100, and 32 images are 1024, so their best tiles can differ.
QUERY_ROWS_CLASSES = (4**6, 4**10)


def _interpreter_blocks(max_seqlen_q: int, max_seqlen_k: int) -> dict:
    """Large blocks: the interpreter's cost grows with programs and loop steps, not with tile size."""
    return {"BLOCK_M": min(pow2_at_least(max_seqlen_q, 16), 128), "BLOCK_N": min(pow2_at_least(max_seqlen_k, 16), MAX_BLOCK_N)}


def wide_offsets(k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the kernel must form the K/V tiles' offsets in 64 bits: where a key's offset from its
    sequence's first row (up to the key rows, dense Lk or packed Tk, plus a block past them, times the
    token stride, plus D) may not fit in 32 bits, and for fp32, whose 16-row tiles spilled with
    32-bit offsets (ptxas 13; docs/performance-log.md)."""
    if k.dtype == torch.float32:
        return True
    key_rows = k.shape[-3] + MAX_BLOCK_N
    return key_rows * max(k.stride(-3), v.stride(-3)) + k.shape[-1] > INT32_MAX


def _launch_into(q, k, v, out, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale, blocks=None):
    """Dense inputs are [B, L, H, D] (cu_seqlens None, max_seqlen the lengths), packed ones [T, H, D].

    blocks: {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "PERSISTENT"} to force a config (tests),
    or None for the autotuner (GPU) / large blocks (interpreter).
    """
    heads_q, head_dim = q.shape[-2], q.shape[-1]
    packed = cu_seqlens_q is not None
    batch = cu_seqlens_q.shape[0] - 1 if packed else q.shape[0]
    if packed:  # no sequence is longer than the packed rows: a larger max_seqlen launches no more programs
        max_seqlen_q, max_seqlen_k = min(max_seqlen_q, q.shape[0]), min(max_seqlen_k, k.shape[0])
    programs = cdiv(max_seqlen_q, MIN_BLOCK_M) * heads_q * batch
    if programs > MAX_PROGRAMS:
        raise ValueError(
            f"q: expected at most {MAX_PROGRAMS} programs (blocks of {MIN_BLOCK_M} query rows x {heads_q} heads x "
            f"{batch} sequences), got {programs}"
        )

    def strides(t):  # (batch, token, head) strides; packed tensors have no batch axis
        return (0, *t.stride()[:2]) if packed else t.stride()[:3]

    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    block_d, block_d_tail = head_dim_blocks(head_dim)
    # the kernel's lengths: the dense ones, or the packed rows that bound every packed sequence
    lengths = (q.shape[0], k.shape[0]) if packed else (max_seqlen_q, max_seqlen_k)
    args = (q, k, v, out, cu_seqlens_q if packed else out, cu_seqlens_k if packed else out,
            *lengths, heads_q, batch, heads_q // k.shape[-2], abs(scale) * LOG2_E,
            *strides(q), *strides(k), *strides(v), *strides(out), power_of_4_class(q.shape[:-1].numel(), *QUERY_ROWS_CLASSES))  # fmt: skip
    whole_blocks = whole_key_blocks(packed, bool(causal), max_seqlen_k)
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": block_d, "BLOCK_D_TAIL": block_d_tail, "CAUSAL": bool(causal),
                  "IS_VARLEN": packed, "DOT_IN_FP32": dot_in_fp32(q.dtype), "NEGATE_Q": scale < 0,
                  "WIDE_OFFSETS": wide_offsets(k, v), "WHOLE_KEY_BLOCKS": whole_blocks,
                  "STRIDE_MULTIPLE": stride_multiple(q.element_size(), [*strides(q), *strides(k), *strides(v), *strides(out)])}  # fmt: skip

    def grid(meta):
        items = cdiv(max_seqlen_q, meta["BLOCK_M"]) * heads_q * batch
        if not meta["PERSISTENT"]:
            return (items,)
        return (min(items, sm_count(q.device) * PERSISTENT_BLOCKS_PER_SM[meta["BLOCK_M"], meta["BLOCK_N"]]),)

    if blocks is None and INTERPRETER:
        blocks = _interpreter_blocks(max_seqlen_q, max_seqlen_k)
    if blocks is not None:
        blocks = {"PERSISTENT": False, **blocks}
        _attention_kernel[grid(blocks)](*args, **constexprs, **blocks)
    else:
        _LAUNCHERS[launcher_kind(head_dim, q.dtype, whole_blocks)][grid](*args, **constexprs)
    return out


def _launch_new(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale):
    """Dense (cu_seqlens None, max_seqlen the lengths) or packed attention into a new output."""
    out = new_output(q.shape, q.dtype, q.device)
    if out.numel() == 0 or max_seqlen_q == 0:
        return out
    return _launch_into(q, k, v, out, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale)


@kernel_op("attention", fake=lambda q, *args: q.new_empty(q.shape))
def _attention_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                      softmax_scale: Optional[float]) -> torch.Tensor:  # fmt: skip
    return _launch_new(q, k, v, None, None, q.shape[1], k.shape[1], causal, softmax_scale)


def _check_varlen_values(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> None:
    check_cu_seqlens_values("cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, "max_seqlen_q")
    check_cu_seqlens_values("cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, "max_seqlen_k")


@kernel_op("attention_varlen", fake=lambda q, *args: q.new_empty(q.shape))
def _attention_varlen_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                             cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int, causal: bool,
                             softmax_scale: Optional[float]) -> torch.Tensor:  # fmt: skip
    # the value checks run here, inside the op: eagerly, and at run time in a compiled graph
    _check_varlen_values(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    return _launch_new(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, softmax_scale)


def check_qkv(q, k, v, packed: bool) -> None:
    """q [.., Lq, Hq, D], k and v [.., Lk, Hkv, D] with Hq % Hkv == 0, one dtype and device."""
    prefix, ndim = ("", 3) if packed else ("B, ", 4)
    tokens_q, tokens_k = ("Tq", "Tk") if packed else ("Lq", "Lk")
    check_tensor("q", q, ndim=ndim, layout=f"[{prefix}{tokens_q}, Hq, D]", unit_stride_last=True)
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected a head dim D in [1, {MAX_HEAD_DIM}], got {head_dim}")
    batch = () if packed else (q.shape[0],)
    check_tensor("k", k, shape=(*batch, None, None, head_dim), layout=f"[{prefix}{tokens_k}, Hkv, D]", unit_stride_last=True)
    check_tensor("v", v, shape=tuple(k.shape), layout=f"[{prefix}{tokens_k}, Hkv, D] (the shape of k)", unit_stride_last=True)
    check_same_dtype("k", k, "q", q)
    check_same_dtype("v", v, "q", q)
    heads_q, heads_kv = q.shape[-2], k.shape[-2]
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(f"k: expected a number of KV heads that divides the {heads_q} query heads (GQA), got {heads_kv}")
    check_same_device({"q": q, "k": k, "v": v})


def attention(q, k, v, causal=False, softmax_scale=None, *, backend="triton"):
    """softmax(q k^T * scale) v over dense batches.

    q [B, Lq, Hq, D], k and v [B, Lk, Hkv, D] (fp16/bf16/fp32, contiguous last dim, any other strides;
    Hq % Hkv == 0 for GQA/MQA). softmax_scale defaults to 1/sqrt(D). causal with Lq != Lk is aligned
    bottom-right (query i sees keys j <= i + Lk - Lq); a query that sees no key gives 0.
    Returns [B, Lq, Hq, D] (contiguous).
    """
    check_backend(backend)
    check_qkv(q, k, v, packed=False)
    check_bool("causal", causal)
    check_softmax_scale(softmax_scale)
    record_call("attention", backend)
    if backend == "reference":
        return reference.attention(q, k, v, bool(causal), softmax_scale)
    check_triton_device("q", q)
    return _attention_launch(q, k, v, bool(causal), softmax_scale)


def attention_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, softmax_scale=None,
    *, backend="triton",
):  # fmt: skip
    """Attention over packed ragged sequences.

    q [Tq, Hq, D], k and v [Tk, Hkv, D]; cu_seqlens_q, cu_seqlens_k int32 [B + 1] offsets (sequence b is
    rows cu_seqlens[b]:cu_seqlens[b+1]; empty sequences allowed); max_seqlen_q/k at least the longest
    sequence. Each sequence attends only to its own keys; causal aligned bottom-right per sequence.
    Returns [Tq, Hq, D] (contiguous); a query row that sees no key is 0.
    """
    check_backend(backend)
    check_qkv(q, k, v, packed=True)
    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.device, max_seqlen_q, "max_seqlen_q")
    check_tensor("cu_seqlens_k", cu_seqlens_k, shape=tuple(cu_seqlens_q.shape), layout="(the shape of cu_seqlens_q)",
                 dtypes=(torch.int32,))  # fmt: skip
    check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q.device, max_seqlen_k, "max_seqlen_k")
    check_bool("causal", causal)
    check_softmax_scale(softmax_scale)
    record_call("attention_varlen", backend)
    if backend == "reference":
        _check_varlen_values(q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        return reference.attention_varlen(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(causal), softmax_scale
        )
    check_triton_device("q", q)
    return _attention_varlen_launch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(causal),
                                    softmax_scale)  # fmt: skip


def _signature(packed_label: str) -> dict:
    strides = {f"{t}_{axis}_stride": "i32" for t in ("q", "k", "v", "out") for axis in ("batch", "token", "head")}
    return {"q_ptr": "*T", "k_ptr": "*T", "v_ptr": "*T", "out_ptr": "*T",
            "cu_seqlens_q_ptr": "*i32" if packed_label else "*T", "cu_seqlens_k_ptr": "*i32" if packed_label else "*T",
            "seqlen_q": "i32", "seqlen_k": "i32", "num_heads": "i32", "num_seqs": "i32", "heads_per_kv": "i32", "qk_scale_log2": "fp32", **strides,
            "query_rows_class": "i32"}  # fmt: skip


# The model's three uses: (name, head dim, causal, packed, key length: a dense use's; packed ones vary)
MODEL_USES = (
    ("ViT B x 256 tokens, 16 heads", 72, False, False, 256),
    ("fusion cross-attention, packed text over 256 keys, 12 heads", 128, False, True, None),
    ("LLM prefill, packed, causal, GQA 12/2", 128, True, True, None),
)


@register_compile_configs
def _compile_configs():
    """Every autotune candidate at each of the model's uses, each dtype."""
    configs = []
    for use, head_dim, causal, packed, key_length in MODEL_USES:
        block_d, block_d_tail = head_dim_blocks(head_dim)
        signature = _signature("packed" if packed else "")
        # what the launcher's specialisation sees as 16-divisible: pointers, and strides that are
        # multiples of 16 elements (a head stride of 72 is not)
        aligned = tuple(
            n for n in signature if n.endswith("_ptr") or (n.endswith("_stride") and (head_dim % 16 == 0 or "head" not in n))
        )
        whole_blocks = not packed and whole_key_blocks(packed, causal, key_length)
        for dtype in FLOAT_DTYPES:
            for block_m, block_n, warps, stages, *persistent in _GPU_CONFIGS[launcher_kind(head_dim, dtype, whole_blocks)]:
                configs += configs_per_dtype(
                    (dtype,), op="attention_varlen" if packed else "attention", shape=f"{use} D={head_dim}",
                    kernel=_attention_kernel, signature=signature,
                    constexprs={"HEAD_DIM": head_dim, "BLOCK_D": block_d, "BLOCK_D_TAIL": block_d_tail, "CAUSAL": causal,
                                "IS_VARLEN": packed, "DOT_IN_FP32": dtype == torch.float32, "NEGATE_Q": False,
                                "WIDE_OFFSETS": dtype == torch.float32, "WHOLE_KEY_BLOCKS": whole_blocks,
                                "PERSISTENT": bool(persistent),
                                "BLOCK_M": block_m, "BLOCK_N": block_n},
                    num_warps=warps, num_stages=stages, aligned=aligned,
                    # fp32 dots run in ieee precision on the FMA units, by choice (parity bound 1e-5)
                    uses_dot=dtype != torch.float32,
                )  # fmt: skip
    return configs
