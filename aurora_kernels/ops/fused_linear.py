"""fused_linear: y = epilogue(prologue(x) @ weight.T + bias) for the few rows of a decode step, with
the elementwise op that feeds the projection done on the way in (or the one that follows it, on the
way out). Four entry points, one kernel:

- `linear(x, weight, bias, residual)`: F.linear (the LLM's o_proj), + the residual stream if given
  (h + o in the epilogue, so that the next norm reads h alone: RunOptions.residual_in_epilogue);
- `rms_norm_linear(x, norm_weight, weight, bias, eps, residual)`: rms_norm (+ the residual add)
  then the projection (input_layernorm -> qkv_proj, post_attention_layernorm -> gate_up_proj);
- `silu_and_mul_linear(x, weight, bias, residual)`: silu(gate) * up then the projection (down_proj),
  + the residual stream as for `linear`;
- `rms_norm_linear_silu_and_mul(x, norm_weight, weight, bias, eps, residual)`: rms_norm, the gate_up
  projection, then silu(gate) * up, so that down_proj is a plain `linear`. Where the activation is
  down_proj's prologue, each of its programs recomputes it over all of K = 8960 from both halves of
  gate_up (35 KB from L2 and 8960 sigmoids a program at one row, against 72 KB of weight at 4
  columns); in gate_up's epilogue each output is computed once, from a gate row and an up row that
  one program streams side by side.

Why: a batch-1 decode step of the LLM reads 3 GB of weights through 28 x 4 small GEMMs, whose
smallest (qkv, o: 6.3 and 4.7 MB) cuBLAS streams far below the copy bandwidth, and the norms and the
activation between them are 3 more launches a layer, each with its gap. Fusing each into the
projection that consumes it takes a layer from 10 launches to 6 (the measurements that led here:
docs/performance-log.md).

The arithmetic, for M rows, K in, N out: 2*M*N*K FLOPs over N*K weight bytes (+ M*K in, M*N out).
At M <= 32 that is <= 32 FLOP/byte, far under any GPU's ridge: the kernel is a stream over the
weight, and its floor is N*K*itemsize / copy bandwidth. Nothing is reused but the M input rows.

Tiling: a program owns BLOCK_N output columns of BLOCK_M rows and walks K in BLOCK_K chunks,
streaming its [BLOCK_N, BLOCK_K] weight tiles once. The grid is (N / BLOCK_N, M / BLOCK_M).
- The prologue is recomputed by every program from the M input rows (a few KB, read from L2):
  cheaper than a launch. The programs of the first column block also write h = x + residual, the
  residual stream's next value.
- The silu_and_mul epilogue pairs rows: a program's BLOCK_N weight rows are BLOCK_N / 2 gate rows
  and the up rows of the same columns (a 1-row config takes one pair), so that each column's two
  sums are the program's when its loop ends, and K is never split. The wgmma tiles read such a tile
  by TMA as one box of a 3-D view of the weight, [2, N/2, K]: [2, BLOCK_N / 2, BLOCK_K], gate rows
  then up rows, one copy and one product a step as without the epilogue.
- One row (batch-1 decode), or up to GEMV_MAX_ROWS = 4 fp16/bf16 rows (USE_DOT False): a GEMV on
  the FMA units in fp32, BLOCK_M 1, 2 or 4. It allows narrow column blocks (BLOCK_N 1..8), so even
  down_proj's N = 1536 makes hundreds of programs. Each lane keeps its own products (and the
  rms_norm's squares) in a [BLOCK_M, BLOCK_N, BLOCK_K] fp32 tile, summed over K once after the loop;
  each warp owns whole 256-column slabs of the tile, the input chunk's own layout; and each step
  loads its weight tile before its input chunk. So the loop is loads and FMAs only, with no barrier
  (the compile report checks), and its weight loads do not wait for the input's. The rows share
  the weight's stream: at 4 rows each weight element feeds 4 FMAs, about a fifth of an H100's FP32
  rate at the copy bandwidth, where the tensor-core tiles would pad 4 rows to 64 (wgmma) or 16.
  The rms_norm's 1/rms is a common factor of a row's products, applied after the loop: one pass.
  (A reduction at every step, and barriers in the loop, each cost the earlier versions a large
  part of the bandwidth: docs/performance-log.md.) Under programmatic dependent launch
  (ops/_pdl.py; the model's generate uses it) its first step is peeled off the loop, so that its
  weight tile is read before the wait for the kernel before.
- More rows (and fp32 beyond one): tl.dot on [BLOCK_M, BLOCK_K] x [BLOCK_K, BLOCK_N] (tensor cores;
  the padding rows cost only arithmetic, which is free here). The normalised or activated input is
  rounded to the input dtype before the product, as the unfused ops' output would be, so the
  rms_norm prologue makes two passes: the rows' norms, then the normalised chunks. On sm_90+
  (fp16/bf16, a weight TMA can read: `weight_tma_ok`) the tiles are Hopper's, the weight tiles
  brought by TMA from a TensorDescriptor into a ring of shared memory and multiplied by warpgroup
  MMAs (wgmma), whose M is 64 at the least. Up to 32 rows the product is swapped (SWAP_AB, as
  cuBLAS's kernels at these batches): out.T = weight @ x.T, the weight's columns in wgmma's M and
  the rows, rounded up to 16 or 32, in its N, so no MMA works on padding rows and the accumulator
  is BLOCK_N x 16..32 fp32, not 64 x BLOCK_N. More rows take BLOCK_M 64 in the MMA's M, the input
  chunk with its prologue in registers as wgmma's A operand. Elsewhere BLOCK_M is the rows rounded
  up to 16 (at most 32), the weight read by pointers and the dots sm_80's mma.sync. Alone, too few
  programs would walk all of K (12 to 24 for down_proj), so K is split over programs where the
  column blocks alone would not fill every SM once (`k_splits`: down_proj at 8 rows makes 9 or 18
  splits), each split's fp32 sums added up by a second kernel.
  Whether these tiles beat cuBLAS plus the unfused op is the GPU's to say: the model takes them for
  batched steps only under RunOptions.fuse_batched_projections (docs/performance-log.md).
Rows beyond BLOCK_M re-read the weight (from L2 when it fits): these ops are for decode-sized
batches. Prefill-sized inputs are correct but belong to cuBLAS.
"""

from __future__ import annotations

import functools
import itertools
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from aurora_kernels._compile import configs_per_dtype, register_compile_configs
from aurora_kernels._dispatch import kernel_op, new_output, record_call
from aurora_kernels._validation import (
    FLOAT_DTYPES,
    check_backend,
    check_eps,
    check_row_input,
    check_same_device,
    check_same_dtype,
    check_tensor,
    check_triton_device,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._autotune import INTERPRETER, autotuned_launchers
from aurora_kernels.ops._dot import dot_acc, dot_in_fp32
from aurora_kernels.ops._layout import (
    cdiv,
    collapse_rows,
    pow2_at_least,
    row_layout_signature,
    row_starts,
    sm_count,
    stride_multiple,
)
from aurora_kernels.ops._pdl import pdl_options, prefetch_rows_to_l2, wait_for_previous_kernel, weight_prefetch_option

# The prologue constexpr: what the kernel applies to x before the product; the epilogue constexpr:
# what it applies to the product after; the public op of each pair.
PROLOGUES = ("none", "rms_norm", "silu_and_mul")
EPILOGUES = ("none", "silu_and_mul")
OP_NAMES = {
    ("none", "none"): "linear",
    ("rms_norm", "none"): "rms_norm_linear",
    ("silu_and_mul", "none"): "silu_and_mul_linear",
    ("rms_norm", "silu_and_mul"): "rms_norm_linear_silu_and_mul",
}
MAX_BLOCK_M = 32  # rows per program of the mma tiles (B=32 decode); more rows, more programs
GEMV_MAX_ROWS = 4  # up to this many fp16/bf16 rows take the GEMV (on the FMA units)
GEMV_KINDS = ("gemv", "gemv_rows")
WGMMA_BLOCK_M = 64  # rows per program of the wgmma tiles: wgmma's M
# The swapped wgmma tiles (kind "wgmma_swap_ab") put the rows in the MMA's N: 16 or 32 of them, the
# rows rounded up (Triton 3.6 lowers an N of 8 to mma.sync, not wgmma)
SWAP_AB_MIN_ROWS, SWAP_AB_MAX_ROWS = 16, 32
TMA_KINDS = ("wgmma", "wgmma_swap_ab")  # the kinds whose weight tiles come by TMA


# The tiles' axes. The tensor-core path multiplies [rows, K] input chunks by [N, K] weight tiles; the
# GEMV's products are rank 3, [rows, N, K], and each of its operands is loaded in that rank, as
# [rows, 1, K] and [1, N, K]. (Loaded in rank 2 and broadcast, they were converted to the product's
# layout through shared memory at every step.) The helpers below take vectors of rows, columns and
# input features and place them on these axes.
@triton.jit
def _along_rows(v, USE_DOT: tl.constexpr):
    """A vector over the program's rows [BLOCK_M] on the input chunk's rows axis."""
    if USE_DOT:
        return v[:, None]
    else:
        return v[:, None, None]


@triton.jit
def _along_cols(v, USE_DOT: tl.constexpr):
    """A vector over the program's columns [BLOCK_N] on the weight tile's columns axis."""
    if USE_DOT:
        return v[:, None]
    else:
        return v[None, :, None]


@triton.jit
def _along_k(v, USE_DOT: tl.constexpr):
    """A vector over input features [BLOCK_K] on the K axis of the input chunk and the weight tile."""
    if USE_DOT:
        return v[None, :]
    else:
        return v[None, None, :]


@triton.jit
def _load_h(x_ptr, residual_ptr, x_rows, res_rows, k, mask, HAS_RESIDUAL: tl.constexpr, USE_DOT: tl.constexpr):
    """x (+ residual) at columns k of the programs' rows, in fp32 (mask on the input chunk's axes)."""
    h = tl.load(x_ptr + _along_rows(x_rows, USE_DOT) + _along_k(k, USE_DOT), mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + _along_rows(res_rows, USE_DOT) + _along_k(k, USE_DOT), mask=mask, other=0.0)
        h += residual.to(tl.float32)
    return h


@triton.jit
def _write_h(h, residual_out_ptr, rows, k, mask, in_features, writes_h, HAS_RESIDUAL: tl.constexpr, USE_DOT: tl.constexpr):
    """The programs of column block 0 (and K split 0) write h = x + residual at columns k (the
    residual stream's next value, contiguous [rows, K])."""
    if HAS_RESIDUAL:
        if writes_h:
            residual_out = residual_out_ptr + _along_rows(rows.to(tl.int64), USE_DOT) * in_features + _along_k(k, USE_DOT)
            tl.store(residual_out, h.to(residual_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _input_chunk(x_ptr, residual_ptr, norm_weight_ptr, residual_out_ptr, x_rows, res_rows, rows, row_mask, k,
                 in_features, writes_h, inv_rms, sum_squares,
                 PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, USE_DOT: tl.constexpr):  # fmt: skip
    """Columns k of the product's input, the prologue applied, for the programs' rows (on the input
    chunk's axes); and the GEMV's running sum of squares (rms_norm: it applies 1/rms after its loop)."""
    k_mask = k < in_features
    mask = _along_rows(row_mask, USE_DOT) & _along_k(k_mask, USE_DOT)
    if PROLOGUE == 1:
        norm_weight = tl.load(norm_weight_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
        h = _load_h(x_ptr, residual_ptr, x_rows, res_rows, k, mask, HAS_RESIDUAL, USE_DOT)
        if USE_DOT:
            a = h * inv_rms[:, None] * norm_weight[None, :]
        else:
            _write_h(h, residual_out_ptr, rows, k, mask, in_features, writes_h, HAS_RESIDUAL, USE_DOT)
            sum_squares += h * h
            a = h * _along_k(norm_weight, USE_DOT)
    elif PROLOGUE == 2:
        gate = tl.load(x_ptr + _along_rows(x_rows, USE_DOT) + _along_k(k, USE_DOT), mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + _along_rows(x_rows, USE_DOT) + in_features + _along_k(k, USE_DOT), mask=mask, other=0.0)
        up = up.to(tl.float32)
        if USE_DOT:
            a = gate * tl.sigmoid(gate) * up
        else:  # the same value: in the other order, ptxas 13 spilled 4 bytes of the 4-row GEMV tiles
            a = gate * up * tl.sigmoid(gate)
    else:
        a = tl.load(x_ptr + _along_rows(x_rows, USE_DOT) + _along_k(k, USE_DOT), mask=mask, other=0.0)
    return a, sum_squares


@triton.jit
def _weight_tile(weight, weight_rows, col_start, k_start, k, col_mask, in_features, WEIGHT_TMA: tl.constexpr,
                 USE_DOT: tl.constexpr, EPILOGUE: tl.constexpr = 0):  # fmt: skip
    """The weight tile at (col_start, k_start): [BLOCK_N, BLOCK_K] by TMA from the weight's
    TensorDescriptor (zeros outside the weight, as the masks give), or by pointers (weight_rows:
    the columns' rows, on the weight tile's columns axis). Under the silu_and_mul epilogue the
    descriptor is the weight's [2, N/2, K] view and col_start a column of the halves: its box
    [2, BLOCK_N / 2, BLOCK_K] holds the columns' gate rows, then their up rows, as the tile's
    rows (zeros past N/2 in either half)."""
    if WEIGHT_TMA:
        if EPILOGUE == 1:
            box = weight.load([0, col_start, k_start])
            tile = tl.reshape(box, (box.shape[0] * box.shape[1], box.shape[2]))
        else:
            tile = weight.load([col_start, k_start])
    else:
        mask = _along_cols(col_mask, USE_DOT) & _along_k(k < in_features, USE_DOT)
        tile = tl.load(weight_rows + _along_k(k, USE_DOT), mask=mask, other=0.0)
    return tile


@triton.jit
def _accumulate(acc, a, w, dtype: tl.constexpr, USE_DOT: tl.constexpr, DOT_IN_FP32: tl.constexpr,
                SWAP_AB: tl.constexpr):  # fmt: skip
    """The tensor-core path: acc [BLOCK_M, BLOCK_N] += a @ w.T, or under SWAP_AB its transpose
    acc [BLOCK_N, BLOCK_M] += w @ a.T (the weight's columns in the MMA's M, the rows in its N). The
    GEMV: a [BLOCK_M, 1, BLOCK_K] times the weight tile [1, BLOCK_N, BLOCK_K] into acc [BLOCK_M,
    BLOCK_N, BLOCK_K], with no reduction inside the loop."""
    if USE_DOT:
        if SWAP_AB:
            acc = dot_acc(w, tl.trans(a.to(dtype)), acc, DOT_IN_FP32)
        else:
            acc = dot_acc(a.to(dtype), tl.trans(w), acc, DOT_IN_FP32)
    else:
        acc += w.to(tl.float32) * a.to(tl.float32)
    return acc


@triton.jit
def _tile_columns(pid_n, tile_row, out_features, OUT_N: tl.constexpr, EPILOGUE: tl.constexpr):
    """(output column, weight row) of the program's tile row(s) `tile_row`: the same row, or under
    the silu_and_mul epilogue its OUT_N columns' gate rows, then their up rows (out_features rows
    further down the weight)."""
    if EPILOGUE == 1:
        col = pid_n * OUT_N + tile_row % OUT_N
        return col, col + (tile_row // OUT_N) * out_features
    else:
        col = pid_n * OUT_N + tile_row
        return col, col


@triton.jit
def _fused_linear_kernel(
    x_ptr, residual_ptr, norm_weight_ptr, weight, bias_ptr, out_ptr, residual_out_ptr, partial_ptr,
    num_rows, in_features, out_features, k_per_split,
    x_outer_stride, x_inner_size, x_inner_stride,
    res_outer_stride, res_inner_size, res_inner_stride,
    weight_row_stride, eps,
    PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr, USE_PDL: tl.constexpr, PREFETCH_L2: tl.constexpr,
    SPLIT_K: tl.constexpr, WEIGHT_TMA: tl.constexpr, SWAP_AB: tl.constexpr, EPILOGUE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    # TILE_N weight rows a program (`tile_rows`), OUT_N output columns. EPILOGUE 1 (silu_and_mul):
    # the weight is [2 * out_features, K], gate rows then up rows; the program's first OUT_N tile
    # rows are its columns' gate rows, the next OUT_N their up rows (a 1-row config takes one
    # pair; why not gate, up, gate, up: docs/performance-log.md)
    TILE_N: tl.constexpr = 2 if EPILOGUE == 1 and BLOCK_N == 1 else BLOCK_N
    OUT_N: tl.constexpr = TILE_N // 2 if EPILOGUE == 1 else TILE_N
    # HAS_RESIDUAL: the residual stream. rms_norm's prologue adds it to x before the norm (and the
    # first column block writes h); after the other prologues the projection's output takes it
    # (ADDS_RESIDUAL: o_proj's and down_proj's adds, where h = h + o); split, _sum_k_splits_kernel adds it
    ADDS_RESIDUAL: tl.constexpr = HAS_RESIDUAL and PROLOGUE != 1
    pid_n = tl.program_id(0)
    # SPLIT_K (tensor-core path): program (n, m, s) takes K columns [s * k_per_split, ...), a multiple
    # of BLOCK_K, so no chunk crosses into the next split; its fp32 sums go to partial_ptr and
    # _sum_k_splits_kernel adds the splits and the bias
    pid_k = 0
    k_begin = 0
    k_end = in_features
    writes_h = pid_n == 0
    if SPLIT_K:
        pid_k = tl.program_id(2)
        k_begin = pid_k * k_per_split
        k_end = tl.minimum(k_begin + k_per_split, in_features)
        writes_h = writes_h & (pid_k == 0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < num_rows
    cols, tile_weight_rows = _tile_columns(pid_n, tl.arange(0, TILE_N), out_features, OUT_N, EPILOGUE)
    col_mask = cols < out_features
    x_rows = row_starts(rows, x_outer_stride, x_inner_size, x_inner_stride, STRIDE_MULTIPLE)
    res_rows = row_starts(rows, res_outer_stride, res_inner_size, res_inner_stride, STRIDE_MULTIPLE)
    # weight: a pointer, or under WEIGHT_TMA (the wgmma tiles) a TensorDescriptor of [N, K] whose
    # block is [BLOCK_N, BLOCK_K] (of [2, N/2, K], block [2, OUT_N, BLOCK_K], under EPILOGUE 1)
    col_start = pid_n * OUT_N
    if WEIGHT_TMA:
        weight_rows = weight_row_stride  # unused: the descriptor finds the tile
    else:
        weight_rows = weight + _along_cols(tile_weight_rows.to(tl.int64), USE_DOT) * weight_row_stride
    dtype = out_ptr.dtype.element_ty

    # Under PDL (ops/_pdl.py) the GEMV loads its first weight tile before waiting for the kernel
    # before it (weights are not written during a decode step) and makes its first step after the
    # wait; with PREFETCH_L2 it also asks the L2 for the rest of its rows then, so that the whole
    # weight streams in while the kernel before finishes. The tensor-core path waits first.
    k_first = 0
    if USE_PDL and not USE_DOT:
        k = tl.arange(0, BLOCK_K)
        first_weight_tile = _weight_tile(weight, weight_rows, col_start, 0, k, col_mask, in_features, False, USE_DOT)
        if PREFETCH_L2:
            rest_bytes = tl.maximum(in_features - BLOCK_K, 0) * (weight.dtype.element_ty.primitive_bitwidth // 8)
            for r in tl.static_range(TILE_N):
                col, weight_row = _tile_columns(pid_n, r, out_features, OUT_N, EPILOGUE)
                prefetch_rows_to_l2(weight + weight_row.to(tl.int64) * weight_row_stride + BLOCK_K,
                                    tl.where(col < out_features, rest_bytes, 0))  # fmt: skip
    wait_for_previous_kernel(USE_PDL)
    # ADDS_RESIDUAL: the GEMV reads its outputs' residual here, after the wait (the kernel before may
    # write it) and before its loop (read after it, ptxas spilled the loop's offsets: 4 to 8 bytes
    # in 5 of the PDL GEMV configs under Triton 3.9); the tensor-core path reads it after its loop
    out_mask = row_mask[:, None] & col_mask[None, :]
    if ADDS_RESIDUAL and not USE_DOT:
        residual = tl.load(residual_ptr + res_rows[:, None] + cols[None, :], mask=out_mask, other=0.0)

    # A row's 1/rms is a common factor of all its products. The tensor-core path needs the normalised
    # input rounded to the input dtype before its first product (as the unfused rms_norm writes it),
    # so it makes a first pass over the rows for their norms. The GEMV keeps its input in fp32 and
    # applies 1/rms after its loop: it streams the weight from its first step, with no pass before.
    if USE_DOT:
        sum_squares = tl.zeros((BLOCK_M,), tl.float32)
        inv_rms = sum_squares  # read by the rms_norm prologue only
        if PROLOGUE == 1:
            for k_start in range(0, in_features, BLOCK_K):
                k = k_start + tl.arange(0, BLOCK_K)
                mask = row_mask[:, None] & (k < in_features)[None, :]
                h = _load_h(x_ptr, residual_ptr, x_rows, res_rows, k, mask, HAS_RESIDUAL, USE_DOT)
                _write_h(h, residual_out_ptr, rows, k, mask, in_features, writes_h, HAS_RESIDUAL, USE_DOT)
                sum_squares += tl.sum(h * h, axis=1)
            inv_rms = tl.rsqrt(sum_squares / in_features + eps)
        if SWAP_AB:
            acc = tl.zeros((TILE_N, BLOCK_M), tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, TILE_N), tl.float32)
    else:
        # The loop is loads and FMAs only: each lane keeps its own products (and the rms_norm's
        # squares) in fp32 and they are summed over K once, after the loop. A reduction inside it
        # would put barriers between one weight tile's loads and the next, and would give the input
        # chunk a layout of its own, converted through shared memory at every step. The BLOCK_M
        # rows share the weight's stream: each weight element feeds BLOCK_M products.
        sum_squares = tl.zeros((BLOCK_M, 1, BLOCK_K), tl.float32)
        inv_rms = tl.zeros((BLOCK_M,), tl.float32)  # unused: the GEMV applies 1/rms after its loop
        acc = tl.zeros((BLOCK_M, TILE_N, BLOCK_K), tl.float32)
    if USE_PDL and not USE_DOT:
        a, sum_squares = _input_chunk(x_ptr, residual_ptr, norm_weight_ptr, residual_out_ptr, x_rows, res_rows, rows, row_mask,
                                      tl.arange(0, BLOCK_K), in_features, writes_h, inv_rms, sum_squares,
                                      PROLOGUE, HAS_RESIDUAL, USE_DOT)  # fmt: skip
        acc = _accumulate(acc, a, first_weight_tile, dtype, USE_DOT, DOT_IN_FP32, SWAP_AB)
        k_first = BLOCK_K
    # UNROLL > 1 (tried by bench/sweep_fused_linear.py only, not shipped): the GEMV issues that many
    # steps' weight loads before their FMAs, more bytes in flight per warp
    for k_start in tl.range(k_begin + k_first, k_end, BLOCK_K, loop_unroll_factor=UNROLL):
        k = k_start + tl.arange(0, BLOCK_K)
        # The GEMV loads its weight tile first, so that it is in flight while the input chunk comes
        # from L2 and its prologue is computed: loaded after them, it waited for them (and for the
        # residual store between). The tensor-core path is pipelined, and loading first spilled there.
        if not USE_DOT:
            w = _weight_tile(weight, weight_rows, col_start, k_start, k, col_mask, in_features, False, USE_DOT)
        a, sum_squares = _input_chunk(x_ptr, residual_ptr, norm_weight_ptr, residual_out_ptr, x_rows, res_rows, rows, row_mask,
                                      k, in_features, writes_h, inv_rms, sum_squares, PROLOGUE, HAS_RESIDUAL, USE_DOT)  # fmt: skip
        if USE_DOT:
            w = _weight_tile(weight, weight_rows, col_start, k_start, k, col_mask, in_features, WEIGHT_TMA, USE_DOT,
                             EPILOGUE)  # fmt: skip
        acc = _accumulate(acc, a, w, dtype, USE_DOT, DOT_IN_FP32, SWAP_AB)
    if not USE_DOT:
        acc = tl.sum(acc, axis=2)
        if PROLOGUE == 1:
            acc *= tl.rsqrt(tl.sum(sum_squares, axis=2) / in_features + eps)
    elif SWAP_AB:
        acc = tl.trans(acc)  # [BLOCK_M, BLOCK_N], as the stores below take it

    if SPLIT_K:
        partial = partial_ptr + (pid_k * num_rows + rows).to(tl.int64)[:, None] * out_features + cols[None, :]
        tl.store(partial, acc, mask=out_mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + tile_weight_rows, mask=col_mask, other=0.0).to(tl.float32)[None, :]
        if EPILOGUE == 1:
            # silu(gate) * up from the fp32 sums: one rounding, where the two ops round gate and up first
            gate, up = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, OUT_N)), (0, 2, 1)))
            acc = gate * up * tl.sigmoid(gate)
            cols = pid_n * OUT_N + tl.arange(0, OUT_N)
            out_mask = row_mask[:, None] & (cols < out_features)[None, :]
        if ADDS_RESIDUAL:
            if USE_DOT:
                residual = tl.load(residual_ptr + res_rows[:, None] + cols[None, :], mask=out_mask, other=0.0)
            acc += residual.to(tl.float32)
        out = out_ptr + rows.to(tl.int64)[:, None] * out_features + cols[None, :]
        tl.store(out, acc.to(dtype), mask=out_mask)


@triton.jit
def _sum_k_splits_kernel(partial_ptr, bias_ptr, residual_ptr, out_ptr, num_k_splits, split_stride, out_features,
                         res_outer_stride, res_inner_size, res_inner_stride,
                         HAS_BIAS: tl.constexpr, ADDS_RESIDUAL: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr,
                         USE_PDL: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """out[row, cols] = the K splits' fp32 sums [num_k_splits, rows, N] added up, + bias (+ the
    residual stream), rounded. Under PDL it is launched while the split kernel runs and waits for it
    before reading a sum."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < out_features
    partial = partial_ptr + tl.program_id(1).to(tl.int64) * out_features + cols
    acc = tl.zeros((BLOCK_N,), tl.float32)
    wait_for_previous_kernel(USE_PDL)
    for _ in range(num_k_splits):
        acc += tl.load(partial, mask=col_mask, other=0.0)
        partial += split_stride
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    if ADDS_RESIDUAL:
        row_start = row_starts(tl.program_id(1), res_outer_stride, res_inner_size, res_inner_stride, STRIDE_MULTIPLE)
        acc += tl.load(residual_ptr + row_start + cols, mask=col_mask, other=0.0).to(tl.float32)
    out = out_ptr + tl.program_id(1).to(tl.int64) * out_features + cols
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


# Autotune candidates on a GPU, (BLOCK_N, BLOCK_K, warps, stages), keyed on the problem's (K, N),
# the rows' block and the prologue. "gemv": one row on the FMA units; "gemv_rows": 2 to 4 fp16/bf16
# rows on them; "wgmma_swap_ab" (up to 32 rows) and "wgmma" (sm_90+), "dot_half" (elsewhere): more
# fp16/bf16 rows on tensor cores; "dot_fp32": fp32 (ieee dots on the FMA units).
# The GEMV tiles each give every warp a whole [BLOCK_N, 256] slab of the tile (BLOCK_K = 256 x warps:
# 32 lanes x 16 bytes in bf16/fp16, twice over in fp32). Then the input chunk's natural layout is the
# weight tile's: the loop needs no layout conversion and no barrier (the compile report checks
# `loop_barriers`). Narrower BLOCK_K per warp splits a tile's rows over the warps instead, and the
# input chunk went through shared memory at every step, behind 2 to 4 barriers (as it did for the
# tiles an earlier sweep picked: bench/results/nvidia-h200/gemv-probe/). More warps split
# K within a program (more bytes in flight for the small-N projections: qkv, o_proj and down_proj
# make only 192 to 256 programs of 8 columns); fewer columns make more programs. The loop has no
# dot, so Triton does not pipeline it (stages 1): a warp's bytes in flight are its slab, and
# occupancy does the rest. The list is what a cold-weight sweep (bench/sweep_fused_linear.py) keeps:
# the autotuner's pick within 0.1 us of the best tile at each projection (docs/performance-log.md).
# "gemv_rows" keeps the same slabs with fewer columns, since each lane's products are BLOCK_M times
# as many (BLOCK_N x 8 x BLOCK_M fp32 registers): 4-column tiles took 204 to 255 registers at 4 rows
# and spilled in fp32 (which keeps the fp32 tiles beyond one row: Triton 3.6's ptxas also spilled
# 8 bytes of three 2-row fp32 tiles). Not yet timed on a GPU.
# Each tile compiles without spills at every projection under Triton 3.6 and 3.9 (the compile report
# checks). Of the tensor-core tiles tried: before the split, 16x256 with 3 or 4 stages, 32x128,
# 64x128 with 4 warps and 128x64 spilled somewhere; with it, 16x256 with 4 warps (8 B under 3.9, at
# 32 rows) and 64x128 with 8 warps, 32x128 with 4 and 64x64 with 4 (8 to 24 B, the SwiGLU prologue
# at 16 rows), so these two take 8 warps.
# "wgmma": fp16/bf16 rows on sm_90+ with a TMA-readable weight (`weight_tma_ok`): 64-row tiles, the
# warpgroup MMA's smallest (fewer rows are zero padding), the weight tiles by TMA into a
# `stages`-deep ring of shared memory, the input chunk in registers as wgmma's A operand;
# "wgmma_swap_ab", the same up to 32 rows with the product swapped (BLOCK_N is wgmma's M, the rows
# its N): 34-130 registers, no spills, 81-188 KB of shared memory, so one or two blocks an SM with
# 4 to 8 weight tiles in flight each (128x256 went over the shared memory limit; 256x64 on 8 warps
# compiled, but its width would have split down_proj's K 35 ways, `k_splits`); "dot_half"
# tiles, with their 16 or 32 rows, compile to sm_80's mma.sync whatever their stages. Triton's Hopper
# pipeline still fences each TMA issue with barriers (3 a K step under Triton 3.6, 4 or 5 under
# 3.9, in the compile report), so the tiles take BLOCK_K 64 and 128, not less. Of the wgmma tiles tried, 64x256 (4 or 8 warps),
# 128x256 with 8 and 128x128 with 4 spilled somewhere under Triton 3.9.
_GPU_CONFIGS = {
    "gemv": ((8, 256, 1, 1), (8, 512, 2, 1), (4, 1024, 4, 1), (4, 2048, 8, 1), (2, 2048, 8, 1)),
    "gemv_rows": ((2, 1024, 4, 1), (1, 1024, 4, 1), (2, 2048, 8, 1), (1, 2048, 8, 1)),
    "wgmma": ((64, 128, 8, 4), (128, 128, 8, 3), (128, 64, 8, 4), (64, 64, 4, 6)),
    "wgmma_swap_ab": ((128, 64, 4, 6), (64, 128, 4, 6), (64, 64, 4, 8), (128, 128, 4, 4)),
    "dot_half": ((16, 256, 8, 2), (64, 64, 8, 3)),
    "dot_fp32": ((16, 64, 4, 2),),
}


def tma_block_shape(block_n: int, block_k: int, epilogue: int) -> list[int]:
    """The TMA box of a wgmma config: its weight tile [BLOCK_N, BLOCK_K], or under the silu_and_mul
    epilogue [2, BLOCK_N / 2, BLOCK_K] of the weight's [2, N/2, K] view (gate rows, then up rows)."""
    return [2, block_n // 2, block_k] if epilogue else [block_n, block_k]


def _weight_block_shape(nargs: dict) -> None:
    """The wgmma configs' pre-hook: the weight descriptor's block is the config's tile."""
    nargs["weight"].block_shape = tma_block_shape(nargs["BLOCK_N"], nargs["BLOCK_K"], nargs["EPILOGUE"])


# (kind, candidate, prologue, has_residual, dtype) that the launcher never takes: its compile spills.
# The rms_norm GEMV without a residual (layer 0's qkv; gate_up's and the LM head's under
# RunOptions.residual_in_epilogue; a user's call) on the 4 x 1024 tile: ptxas keeps it at 72
# registers and spills 4 to 8 bytes, the lane's K offsets, reloaded at every K step (fp16 under
# Triton 3.9, bf16 under PDL under Triton 3.6). A register cap on the tile that stops it raised
# every other variant of the tile's registers by 10 to 40 (docs/performance-log.md). The autotuner
# takes one of the other four GEMV tiles there.
SPILLING_CANDIDATES = {("gemv", (4, 1024, 4, 1), "rms_norm", False, dtype) for dtype in (torch.float16, torch.bfloat16)}


def candidate_fits(kind: str, candidate: tuple, prologue: str, has_residual: bool, dtype: torch.dtype) -> bool:
    """Whether the launcher's autotuner may take `candidate` of `kind` for such a call."""
    return (kind, tuple(candidate), prologue, has_residual, dtype) not in SPILLING_CANDIDATES


def _fits_call(kind: str, config, call: dict) -> bool:
    candidate = (config.kwargs["BLOCK_N"], config.kwargs["BLOCK_K"], config.num_warps, config.num_stages)
    return candidate_fits(kind, candidate, PROLOGUES[call["PROLOGUE"]], call["HAS_RESIDUAL"], call["x_ptr"].dtype)


_LAUNCHERS = autotuned_launchers(
    _fused_linear_kernel, _GPU_CONFIGS,
    lambda kind, c: triton.Config({"BLOCK_N": c[0], "BLOCK_K": c[1]}, num_warps=c[2], num_stages=c[3],
                                  pre_hook=_weight_block_shape if kind in TMA_KINDS else None),
    key=["in_features", "out_features", "BLOCK_M", "PROLOGUE", "HAS_RESIDUAL", "EPILOGUE"],
    fits=_fits_call,
)  # fmt: skip


# The tensor-core path splits K where its column and row blocks alone would leave SMs idle: at 8 and
# 32 rows, down_proj (N 1536, K 8960) makes 24 programs of BLOCK_N 64, each walking all of K, where
# cuBLAS's kernel splits K (the figures: docs/performance-log.md). Each
# split writes fp32 sums and `_sum_k_splits_kernel` adds them up (+ the bias): one more launch, and
# [splits, rows, N] fp32 written and read again, a few hundred KB at decode sizes. A split is a
# multiple of K_SPLIT_MULTIPLE columns, which every tensor-core candidate's BLOCK_K divides (and the
# interpreter's 128), so no chunk crosses into the next split. The rms_norm prologue's first pass
# still reads whole rows in every split (8 rows of 1536: 24 KB a program, from L2), for the norm.
K_SPLIT_MULTIPLE = 256
DOT_PROGRAMS_PER_SM = 2


def k_splits(in_features: int, out_features: int, row_blocks: int, device: torch.device, kind: str) -> tuple[int, int]:
    """(num_k_splits, k_per_split) of a tensor-core kind: enough programs for DOT_PROGRAMS_PER_SM on
    every SM, counting the columns in blocks of the kind's widest BLOCK_N. At one row block on 132
    SMs, "wgmma" and "wgmma_swap_ab" (BLOCK_N up to 128): down_proj 18 splits of 512, qkv and o_proj
    6 of 256, gate_up (140 column blocks, a wave already) none; "dot_half" (64): down_proj 9 of 1024,
    qkv and o_proj 6 of 256, gate_up none."""
    programs = cdiv(out_features, max(c[0] for c in _GPU_CONFIGS[kind])) * row_blocks
    if programs >= sm_count(device):  # a wave on every SM already: a split would only add its sum
        return 1, in_features
    wanted = cdiv(DOT_PROGRAMS_PER_SM * sm_count(device), programs)
    k_per_split = cdiv(cdiv(in_features, wanted), K_SPLIT_MULTIPLE) * K_SPLIT_MULTIPLE
    return cdiv(in_features, k_per_split), k_per_split


def weight_tma_ok(weight: torch.Tensor) -> bool:
    """Whether the tensor-core path may read `weight` by TMA into wgmma tiles: fp16/bf16 on a GPU of
    sm_90 or later (or a CPU tensor: the interpreter takes the H100's path), with the 16-byte aligned
    start and row stride that a TMA descriptor needs (a row slice of a fused weight has both when
    its offset and stride are multiples of 8 elements), and rows that do not overlap."""
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return False
    if weight.device.type == "cuda":
        index = weight.device.index if weight.device.index is not None else torch.cuda.current_device()
        if _cuda_major_capability(index) < 9:
            return False
    row_bytes = weight.stride(0) * weight.element_size()
    # rows that overlap (a stride under K: an expanded weight, say) are for the pointer tiles alone
    return weight.data_ptr() % 16 == 0 and row_bytes % 16 == 0 and weight.stride(0) >= weight.shape[1]


@functools.lru_cache(maxsize=None)
def _cuda_major_capability(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def _launcher_kind(num_rows: int, dtype: torch.dtype, weight_tma: bool) -> str:
    if num_rows == 1:
        return "gemv"
    if dtype == torch.float32:
        return "dot_fp32"
    if num_rows <= GEMV_MAX_ROWS:
        return "gemv_rows"
    if not weight_tma:
        return "dot_half"
    return "wgmma_swap_ab" if num_rows <= SWAP_AB_MAX_ROWS else "wgmma"


def _interpreter_blocks(in_features: int, out_features: int) -> dict:
    """Large blocks: the interpreter's cost grows with programs and loop steps, not with tile size
    (BLOCK_K stays at 128 so the tests' K > 128 walk several chunks)."""
    return {"BLOCK_N": min(pow2_at_least(out_features, 16), 128), "BLOCK_K": min(pow2_at_least(in_features, 16), 128)}


def _check_weights(x, in_features: int, weight, bias):
    check_tensor("weight", weight, ndim=2, layout="[N, K]")
    check_tensor("weight", weight, shape=(weight.shape[0], in_features), layout="[N, K]", unit_stride_last=True)
    check_same_dtype("weight", weight, "x", x)
    if weight.shape[0] == 0:
        raise ValueError("weight: expected at least one output feature N (dim 0), got 0")
    if bias is not None:
        check_tensor("bias", bias, shape=(weight.shape[0],), layout="[N]", unit_stride_last=True)


def linear(x, weight, bias=None, residual=None, *, backend="triton"):
    """F.linear for decode-sized inputs: x [..., K] @ weight.T + bias (+ residual) -> [..., N].

    x: fp16/bf16/fp32, contiguous last dim, any other strides; weight [N, K] in x's dtype with a
    contiguous last dim (a row slice of a fused weight is fine); bias [N] (any float dtype) or None;
    residual [..., N] in x's dtype, contiguous last dim, or None: the residual stream, added to the
    fp32 product before its one rounding (o_proj's h + o).
    """
    check_backend(backend)
    in_features = check_row_input("x", x, max_cols=2**31 - 1, dim="K")
    _check_weights(x, in_features, weight, bias)
    _check_output_residual(x, weight, residual)
    check_same_device({"x": x, "weight": weight, "bias": bias, "residual": residual})
    return _dispatch("linear", backend, (x, weight, bias, residual),
                     (x, weight, bias, None, residual, 0.0, PROLOGUES.index("none"), 0))  # fmt: skip


def rms_norm_linear(x, norm_weight, weight, bias=None, eps=1e-6, residual=None, *, backend="triton"):
    """linear(rms_norm(x, norm_weight, eps, residual), weight, bias) in one kernel.

    x [..., K] and residual (x's shape and dtype, or None) as for `rms_norm`; norm_weight [K];
    weight [N, K] and bias [N] as for `linear`. Returns y [..., N], or (y, x + residual) with a
    residual, as `rms_norm` returns the residual stream's next value.
    """
    _check_rms_norm_linear(x, norm_weight, weight, bias, eps, residual, backend)
    return _dispatch("rms_norm_linear", backend, (x, norm_weight, weight, bias, eps, residual),
                     (x, weight, bias, norm_weight, residual, float(eps), PROLOGUES.index("rms_norm"), 0))  # fmt: skip


def rms_norm_linear_silu_and_mul(x, norm_weight, weight, bias=None, eps=1e-6, residual=None, *, backend="triton"):
    """silu_and_mul(rms_norm_linear(x, norm_weight, weight, bias, eps, residual)) in one kernel: the
    gate_up projection with SwiGLU's activation in its epilogue, so that down_proj is a plain `linear`.

    x, residual, norm_weight as for `rms_norm_linear`; weight [2I, K] = concat(gate, up) rows (the
    fused gate_up_proj's) and bias [2I] or None. Returns y = silu(gate) * up [..., I] (from the
    projection's fp32 sums: the two ops would round gate and up to x's dtype first), or (y, x +
    residual).
    """
    _check_rms_norm_linear(x, norm_weight, weight, bias, eps, residual, backend)
    if weight.shape[0] % 2:
        raise ValueError(f"weight: expected an even number of rows [2I, K] (gate and up halves), got {weight.shape[0]}")
    return _dispatch("rms_norm_linear_silu_and_mul", backend, (x, norm_weight, weight, bias, eps, residual),
                     (x, weight, bias, norm_weight, residual, float(eps), PROLOGUES.index("rms_norm"),
                      EPILOGUES.index("silu_and_mul")))  # fmt: skip


def _check_rms_norm_linear(x, norm_weight, weight, bias, eps, residual, backend):
    check_backend(backend)
    in_features = check_row_input("x", x, max_cols=2**31 - 1, dim="K")
    check_tensor("norm_weight", norm_weight, shape=(in_features,), layout="[K]", unit_stride_last=True)
    if residual is not None:
        check_tensor("residual", residual, shape=tuple(x.shape), layout="(the shape of x)", unit_stride_last=True)
        check_same_dtype("residual", residual, "x", x)
    _check_weights(x, in_features, weight, bias)
    check_same_device({"x": x, "norm_weight": norm_weight, "residual": residual, "weight": weight, "bias": bias})
    check_eps(eps)


def silu_and_mul_linear(x, weight, bias=None, residual=None, *, backend="triton"):
    """linear(silu_and_mul(x), weight, bias, residual) in one kernel: x [..., 2I] = concat(gate, up),
    weight [N, I], bias [N] or None, residual [..., N] or None (as for `linear`) -> [..., N]."""
    check_backend(backend)
    width = check_row_input("x", x, max_cols=2**31 - 1, dim="2I")
    if width % 2:
        raise ValueError(f"x: expected an even last dim [..., 2I] (gate and up halves), got {width}")
    _check_weights(x, width // 2, weight, bias)
    _check_output_residual(x, weight, residual)
    check_same_device({"x": x, "weight": weight, "bias": bias, "residual": residual})
    return _dispatch("silu_and_mul_linear", backend, (x, weight, bias, residual),
                     (x, weight, bias, None, residual, 0.0, PROLOGUES.index("silu_and_mul"), 0))  # fmt: skip


def _check_output_residual(x, weight, residual):
    """A residual added to the output: the output's shape [..., N] and x's dtype."""
    if residual is not None:
        shape = (*x.shape[:-1], weight.shape[0])
        check_tensor("residual", residual, shape=shape, layout="(the output's shape [..., N])", unit_stride_last=True)
        check_same_dtype("residual", residual, "x", x)


def _dispatch(op: str, backend: str, reference_args: tuple, launch_args: tuple):
    """The checked call of a public op: its reference, or the kernel; y, or (y, h) with a residual."""
    record_call(op, backend)
    if backend == "reference":
        return getattr(reference, op)(*reference_args)
    check_triton_device("x", launch_args[0])
    outputs = _LAUNCH_AS[op](*launch_args)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _writes_h(residual, prologue: int) -> bool:
    """With rms_norm, h = x + residual is a second output; the other prologues add the residual to
    the projection's output (the kernel's ADDS_RESIDUAL)."""
    return residual is not None and prologue == PROLOGUES.index("rms_norm")


def _fake(x, weight, bias, norm_weight, residual, eps, prologue, epilogue):
    out = x.new_empty((*x.shape[:-1], weight.shape[0] // 2 if epilogue else weight.shape[0]))
    return [out, x.new_empty(x.shape)] if _writes_h(residual, prologue) else [out]


def _fused_linear_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         norm_weight: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                         eps: float, prologue: int, epilogue: int) -> list[torch.Tensor]:  # fmt: skip
    """[y] or, with residual and rms_norm, [y, x + residual]."""
    return launch(x, weight, bias, norm_weight, residual, eps, prologue, epilogue)


# One custom op per public function (one launcher behind them): a compiled graph and an error (a
# backward, say) name the function the user called.
_LAUNCH_AS = {op: kernel_op(op, fake=_fake)(_fused_linear_launch) for op in OP_NAMES.values()}


def launch(x, weight, bias, norm_weight, residual, eps: float, prologue: int, epilogue: int = 0,
           config: tuple | None = None, unroll: int = 1, kind: str | None = None) -> list:  # fmt: skip
    """The launcher. epilogue 1 (silu_and_mul): y = silu(gate) * up of the product, whose gate and up
    halves are the weight's first and last N/2 rows; it never splits K (a program needs both whole
    sums), and its TMA kinds read the weight as [2, N/2, K]. config (BLOCK_N, BLOCK_K, warps, stages) launches that candidate instead of the
    autotuner's choice (or the interpreter's blocks): the tests run every candidate this way, since a
    GPU test run keeps only each autotuner's first (autotuning off). unroll: the K loop's unroll
    factor (1 in every shipped config; the tile sweep also tries 2). kind: a key of _GPU_CONFIGS, the
    path to take instead of the one the rows, the dtype and the weight choose (`_launcher_kind`), so
    that benchmarks can race the paths at the same rows (the TMA_KINDS need `weight_tma_ok(weight)`;
    "gemv_rows" takes blocks of up to GEMV_MAX_ROWS rows, "wgmma_swap_ab" of up to SWAP_AB_MAX_ROWS)."""
    weight_rows, in_features = weight.shape
    out_features = weight_rows // 2 if epilogue else weight_rows
    out = new_output((*x.shape[:-1], out_features), x.dtype, x.device)
    writes_h = _writes_h(residual, prologue)
    residual_out = new_output(x.shape, x.dtype, x.device) if writes_h else None
    x, x_rows = collapse_rows(x)
    residual, res_rows = collapse_rows(residual) if residual is not None else (None, x_rows)
    num_rows = x_rows.num_rows
    if num_rows == 0:
        return [out, residual_out] if writes_h else [out]
    if kind is None:
        kind = _launcher_kind(num_rows, x.dtype, num_rows > 1 and weight_tma_ok(weight))
    block_m = {
        "gemv": 1,
        "gemv_rows": min(pow2_at_least(num_rows), GEMV_MAX_ROWS),
        "wgmma": WGMMA_BLOCK_M,
        "wgmma_swap_ab": min(pow2_at_least(num_rows, SWAP_AB_MIN_ROWS), SWAP_AB_MAX_ROWS),
    }.get(kind, min(pow2_at_least(num_rows, 16), MAX_BLOCK_M))
    row_blocks = cdiv(num_rows, block_m)
    num_k_splits, k_per_split = (
        (1, in_features) if kind in GEMV_KINDS or epilogue else k_splits(in_features, out_features, row_blocks, x.device, kind)
    )
    partial = new_output((num_k_splits, num_rows, out_features), torch.float32, x.device) if num_k_splits > 1 else out
    if config is not None:
        blocks = {"BLOCK_N": config[0], "BLOCK_K": config[1], "num_warps": config[2], "num_stages": config[3]}
    elif INTERPRETER:
        blocks = _interpreter_blocks(in_features, weight_rows)
    else:
        blocks = None  # the autotuner's (a wgmma config's pre-hook sets the descriptor's block)
    weight_arg = weight
    if kind in TMA_KINDS:
        block_n, block_k = (blocks["BLOCK_N"], blocks["BLOCK_K"]) if blocks else (WGMMA_BLOCK_M, 16)  # the pre-hook's
        shape, strides = list(weight.shape), list(weight.stride())
        if epilogue:  # [2, N/2, K]: the gate half, then the up half
            shape, strides = [2, out_features, in_features], [out_features * strides[0], *strides]
        weight_arg = TensorDescriptor(weight, shape, strides, tma_block_shape(block_n, block_k, epilogue))
    args = (
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else x, weight_arg,
        bias if bias is not None else x, out, residual_out if writes_h else out, partial,
        num_rows, in_features, out_features, k_per_split, *x_rows[1:], *res_rows[1:], weight.stride(0), eps,
    )  # fmt: skip
    constexprs = {
        "PROLOGUE": prologue,
        "HAS_RESIDUAL": residual is not None,
        "HAS_BIAS": bias is not None,
        "USE_DOT": kind not in GEMV_KINDS,
        "DOT_IN_FP32": dot_in_fp32(x.dtype),
        "STRIDE_MULTIPLE": stride_multiple(x.element_size(), (x_rows.outer_stride, x_rows.inner_stride,
                                                              res_rows.outer_stride, res_rows.inner_stride)),
        "SPLIT_K": num_k_splits > 1,
        "WEIGHT_TMA": kind in TMA_KINDS,
        "SWAP_AB": kind == "wgmma_swap_ab",
        "EPILOGUE": epilogue,
        "BLOCK_M": block_m,
        "UNROLL": unroll,
        **pdl_options(x.device),
    }  # fmt: skip
    constexprs["PREFETCH_L2"] = kind in GEMV_KINDS and weight_prefetch_option(constexprs["USE_PDL"], weight)
    if blocks is not None:
        grid = (cdiv(out_features, columns_per_program(blocks["BLOCK_N"], epilogue)), row_blocks, num_k_splits)
        _fused_linear_kernel[grid](*args, **constexprs, **blocks)
    else:
        launcher = _LAUNCHERS[kind]
        launcher[lambda meta: (cdiv(out_features, columns_per_program(meta["BLOCK_N"], epilogue)), row_blocks, num_k_splits)](
            *args, **constexprs
        )
    if num_k_splits > 1:
        block_n = _sum_block_n(out_features)
        _sum_k_splits_kernel[(cdiv(out_features, block_n), num_rows)](
            partial, bias if bias is not None else partial, residual if residual is not None else partial, out,
            num_k_splits, num_rows * out_features, out_features, *res_rows[1:],
            HAS_BIAS=bias is not None, ADDS_RESIDUAL=residual is not None and not writes_h,
            STRIDE_MULTIPLE=constexprs["STRIDE_MULTIPLE"], BLOCK_N=block_n, num_warps=SUM_WARPS, **pdl_options(x.device),
        )  # fmt: skip
    return [out, residual_out] if writes_h else [out]


SUM_WARPS = 4


def tile_rows(block_n: int, epilogue: int) -> int:
    """The weight rows a program of a BLOCK_N config streams (the kernel's TILE_N): under the
    silu_and_mul epilogue a 1-row config takes one pair, a gate row and its up row."""
    return max(block_n, 2) if epilogue else block_n


def columns_per_program(block_n: int, epilogue: int) -> int:
    """The output columns of a program of a BLOCK_N config (the kernel's OUT_N): under the
    silu_and_mul epilogue its gate and up rows pair up."""
    return tile_rows(block_n, epilogue) // 2 if epilogue else block_n


def _sum_block_n(out_features: int) -> int:
    """Columns a program of the split sum takes: up to 1024 (8 fp32 a thread of 4 warps)."""
    return min(pow2_at_least(out_features, 16), 1024)


# The model's decode projections: the four of a layer, the MLP's two under
# RunOptions.activation_in_gate_up (SwiGLU in gate_up's epilogue, down_proj plain), and the LM head
# after the final norm: (where, prologue, epilogue, K, N weight rows, has_residual, has_bias)
MODEL_PROJECTIONS = (
    ("input_layernorm -> qkv_proj", "rms_norm", "none", 1536, 2048, True, True),
    ("o_proj", "none", "none", 1536, 1536, False, False),
    ("post_attention_layernorm -> gate_up_proj", "rms_norm", "none", 1536, 17920, True, False),
    ("silu_and_mul -> down_proj", "silu_and_mul", "none", 8960, 1536, False, False),
    ("post_attention_layernorm -> gate_up_proj -> silu_and_mul", "rms_norm", "silu_and_mul", 1536, 17920, True, False),
    ("down_proj", "none", "none", 8960, 1536, False, False),
    ("norm -> lm_head", "rms_norm", "none", 1536, 151936, True, False),
)


@register_compile_configs
def _compile_configs():
    """Every autotune candidate at each of the model's projections: the GEMV (one row) in every dtype,
    and its row blocks of 2 and 4 in fp16/bf16; the wgmma tiles (the launcher's pick for 5..64 fp16/bf16
    rows on sm_90: swapped at 16 and 32 rows, and at 64) and, for weights TMA cannot read, the mma
    tiles at BLOCK_M 16 and 32 (B=8 and B=32 decode), K split as `k_splits` splits it on 132 SMs; the
    fp32 tiles at 16 and 32. With programmatic dependent launch (USE_PDL), in bf16, the model's dtype:
    the GEMV (with and without its L2 prefetch), the wgmma tiles (the swapped ones at 16 rows) and the
    mma tiles at 16. Each projection also with the residual stream flipped (`_residual_variants`),
    and none that `candidate_fits` keeps from the launcher. Then the split sum, in each dtype, with
    and without the residual's add."""
    half = (torch.float16, torch.bfloat16)
    kinds = {  # kind -> (dtypes, row blocks, the row blocks that also get a PDL variant in bf16)
        "gemv": (FLOAT_DTYPES, (1,), (1,)),
        "gemv_rows": (half, (2, GEMV_MAX_ROWS), (2, GEMV_MAX_ROWS)),
        "wgmma": (half, (WGMMA_BLOCK_M,), (WGMMA_BLOCK_M,)),
        "wgmma_swap_ab": (half, (SWAP_AB_MIN_ROWS, SWAP_AB_MAX_ROWS), (SWAP_AB_MIN_ROWS,)),
        "dot_half": (half, (16, MAX_BLOCK_M), (16,)),
        "dot_fp32": ((torch.float32,), (16, MAX_BLOCK_M), ()),
    }
    configs, compiled = [], set()
    for where, prologue, epilogue, in_features, out_features, has_residual, has_bias in _residual_variants():
        for kind, candidates in _GPU_CONFIGS.items():
            dtypes, block_ms, pdl_block_ms = kinds[kind]
            split_k = (kind not in GEMV_KINDS and epilogue == "none"
                       and k_splits(in_features, out_features, 1, torch.device("cpu"), kind)[0] > 1)  # fmt: skip
            # K and N are run-time arguments: a projection whose constexprs are one listed before
            # (the LM head's are gate_up's, the plain down_proj's o_proj's) compiles to the same code
            code = (kind, prologue, epilogue, has_residual, has_bias, split_k)
            if code in compiled:
                continue
            compiled.add(code)
            for block_m in block_ms:
                for candidate in candidates:
                    block_n, block_k, warps, stages = candidate
                    box = tma_block_shape(block_n, block_k, EPILOGUES.index(epilogue))
                    weight_type = f"tensordesc<T{box}>" if kind in TMA_KINDS else "*T"
                    # (dtype, USE_PDL, PREFETCH_L2): every dtype, then bf16 under PDL (the GEMV with and
                    # without its L2 weight prefetch)
                    pdl_variants = [(torch.bfloat16, True, False)] if block_m in pdl_block_ms else []
                    pdl_variants += [(torch.bfloat16, True, True)] if kind in GEMV_KINDS else []
                    for dtype, use_pdl, prefetch in [(d, False, False) for d in dtypes] + pdl_variants:
                        if not candidate_fits(kind, candidate, prologue, has_residual, dtype):
                            continue
                        # generate launches the one-row GEMV under PDL by default; more rows run
                        # fused (and so under PDL) only under fuse_batched_projections
                        run_option = "fuse_batched_projections" if use_pdl and block_m > 1 else ""
                        run_option = "weight_prefetch" if prefetch else run_option
                        # under PDL the GEMV reads its first weight tile ahead of the wait (one 16-byte
                        # load a weight row of the program; not its input); the tensor-core tiles nothing
                        loads_ahead_of_wait = tile_rows(block_n, EPILOGUES.index(epilogue)) if kind in GEMV_KINDS else 0
                        configs += configs_per_dtype(
                            (dtype,),
                            op=OP_NAMES[prologue, epilogue],
                            shape=f"{where}, K={in_features} N={out_features}, M<={block_m}",
                            kernel=_fused_linear_kernel,
                            signature={
                                "x_ptr": "*T",
                                "residual_ptr": "*T",
                                "norm_weight_ptr": "*T",
                                "weight": weight_type,
                                "bias_ptr": "*T",
                                "out_ptr": "*T",
                                "residual_out_ptr": "*T",
                                "partial_ptr": "*fp32",
                                "num_rows": "i32",
                                "in_features": "i32",
                                "out_features": "i32",
                                "k_per_split": "i32",
                                **row_layout_signature("x"),
                                **row_layout_signature("res"),
                                "weight_row_stride": "i32",
                                "eps": "fp32",
                            },  # fmt: skip
                            constexprs={
                                "PROLOGUE": PROLOGUES.index(prologue),
                                "HAS_RESIDUAL": has_residual,
                                "HAS_BIAS": has_bias,
                                "USE_DOT": kind not in GEMV_KINDS,
                                "DOT_IN_FP32": dtype == torch.float32,
                                "USE_PDL": use_pdl,
                                "PREFETCH_L2": prefetch,
                                "SPLIT_K": split_k,
                                "WEIGHT_TMA": kind in TMA_KINDS,
                                "SWAP_AB": kind == "wgmma_swap_ab",
                                "EPILOGUE": EPILOGUES.index(epilogue),
                                "BLOCK_M": block_m,
                                "BLOCK_N": block_n,
                                "BLOCK_K": block_k,
                                "UNROLL": 1,
                            },  # fmt: skip
                            num_warps=warps,
                            num_stages=stages,
                            aligned=(
                                "x_ptr",
                                "residual_ptr",
                                "norm_weight_ptr",
                                *(("weight",) if kind not in TMA_KINDS else ()),
                                "bias_ptr",
                                "out_ptr",
                                "residual_out_ptr",
                                "partial_ptr",
                                "in_features",
                                "out_features",
                                "k_per_split",
                                "x_outer_stride",
                                "res_outer_stride",
                                "weight_row_stride",
                            ),  # fmt: skip
                            # fp32 dots run in ieee precision on the FMA units, by choice (parity bound 1e-5)
                            uses_dot=kind in (*TMA_KINDS, "dot_half"),
                            wgmma=kind in TMA_KINDS,
                            barrier_free_loops=kind in GEMV_KINDS,
                            loads_before_wait=loads_ahead_of_wait if use_pdl else None,
                            run_option=run_option,
                        )
    # every dtype, then bf16 under PDL; without and with the residual's add
    for (dtypes, use_pdl), adds_residual in itertools.product(((FLOAT_DTYPES, False), ((torch.bfloat16,), True)), (False, True)):
        configs += configs_per_dtype(
            dtypes,
            op="linear",
            shape="sum of the K splits, N=1536 (o_proj, down_proj)"
            + (" + residual" if adds_residual else "")
            + (", PDL" if use_pdl else ""),
            kernel=_sum_k_splits_kernel,
            signature={
                "partial_ptr": "*fp32",
                "bias_ptr": "*T",
                "residual_ptr": "*T",
                "out_ptr": "*T",
                "num_k_splits": "i32",
                "split_stride": "i64",
                "out_features": "i32",
                **row_layout_signature("res"),
            },  # fmt: skip
            constexprs={"HAS_BIAS": False, "ADDS_RESIDUAL": adds_residual, "USE_PDL": use_pdl, "BLOCK_N": _sum_block_n(1536)},
            num_warps=SUM_WARPS,
            num_stages=1,
            aligned=("partial_ptr", "bias_ptr", "residual_ptr", "out_ptr", "split_stride", "out_features", "res_outer_stride"),
            loads_before_wait=0 if use_pdl else None,
            run_option="fuse_batched_projections" if use_pdl else "",  # K is split in batched tiles alone
        )
    return configs


def _residual_variants() -> list[tuple]:
    """MODEL_PROJECTIONS, each also with its residual stream flipped: layer 0's qkv and, under
    RunOptions.residual_in_epilogue, gate_up's and the LM head's norms take h alone, while o_proj
    and down_proj add the residual to their outputs (each a kernel variant of its own)."""
    variants = []
    for where, prologue, epilogue, in_features, out_features, has_residual, has_bias in MODEL_PROJECTIONS:
        flipped = f"{where} + residual" if not has_residual else f"{where}, no residual"
        variants += [(where, prologue, epilogue, in_features, out_features, has_residual, has_bias),
                     (flipped, prologue, epilogue, in_features, out_features, not has_residual, has_bias)]  # fmt: skip
    return variants
