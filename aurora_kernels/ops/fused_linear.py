"""fused_linear: y = prologue(x) @ weight.T + bias for the few rows of a decode step, with the
elementwise op that feeds the projection done on the way in. Three entry points, one kernel:

- `linear(x, weight, bias)`: F.linear (the LLM's o_proj);
- `rms_norm_linear(x, norm_weight, weight, bias, eps, residual)`: rms_norm (+ the residual add)
  then the projection (input_layernorm -> qkv_proj, post_attention_layernorm -> gate_up_proj);
- `silu_and_mul_linear(x, weight, bias)`: silu(gate) * up then the projection (down_proj).

Why: a batch-1 decode step of the LLM reads 3 GB of weights through 28 x 4 small GEMMs, and on an
H200 it spent 1.23 ms in cuBLAS against a 0.74 ms floor for the whole step (bench/results/
nvidia-h200/NOTES.md): the qkv and o products (6.3 and 4.7 MB) ran at a quarter of the copy
bandwidth, and the norms and the activation between them were 3 more launches a layer, each with
its gap. Fusing each into the projection that consumes it takes a layer from 10 launches to 6.

The arithmetic, for M rows, K in, N out: 2*M*N*K FLOPs over N*K weight bytes (+ M*K in, M*N out).
At M <= 32 that is <= 32 FLOP/byte, far under any GPU's ridge: the kernel is a stream over the
weight, and its floor is N*K*itemsize / copy bandwidth. Nothing is reused but the M input rows.

Tiling: a program owns BLOCK_N output columns of BLOCK_M rows and walks K in BLOCK_K chunks,
streaming its [BLOCK_N, BLOCK_K] weight tiles once. The grid is (N / BLOCK_N, M / BLOCK_M).
- The prologue is recomputed by every program from the M input rows (a few KB, read from L2):
  cheaper than a launch. The programs of the first column block also write h = x + residual, the
  residual stream's next value.
- One row (batch-1 decode, USE_DOT False): a GEMV on the FMA units in fp32, BLOCK_M = 1. It allows
  narrow column blocks (BLOCK_N 2..8), so even down_proj's N = 1536 makes hundreds of programs.
  Each lane keeps its own products (and the rms_norm's squares) in a [BLOCK_N, BLOCK_K] fp32 tile,
  summed over K once after the loop; each warp owns whole 256-column slabs of the tile, the input
  chunk's own layout; and each step loads its weight tile before its input chunk. So the loop is
  loads and FMAs only, with no barrier (the compile report checks), and its weight loads do not wait
  for the input's. The rms_norm's 1/rms is a common factor of a row's products, applied after the
  loop: one pass. History, on the H200: the first version reduced at every step (1.37 ms of
  a batch-1 step); the second summed the products once but kept barriers in its loop (2 a step for
  the squares' sum at qkv and gate_up; 2 more at 4 of its 5 tiles, which sent the input chunk to the
  weight tile's layout through shared memory) and loaded its weights after its input: 1.13 ms, and
  a batch-1 step of 1.50 ms against 1.69 with cuBLAS and the separate ops. This third version is
  not timed yet. Under programmatic dependent launch (ops/_pdl.py, off by default) its first step
  is peeled off the loop, so that its weight tile is read before the wait for the kernel before.
- More rows: tl.dot on [BLOCK_M >= 16, BLOCK_K] x [BLOCK_K, BLOCK_N] (tensor cores; the padding rows
  cost only arithmetic, which is free here). The normalised or activated input is rounded to the
  input dtype before the product, as the unfused ops' output would be, so the rms_norm prologue
  makes two passes: the rows' norms, then the normalised chunks. Correct, but slow: in a B=8
  decode step on the H200 they took 7.15 ms against cuBLAS's 1.21 ms (too few programs, each
  walking all of K: down_proj's K = 8960 wants a split-K that is not written yet).
Rows beyond BLOCK_M re-read the weight (from L2 when it fits): these ops are for decode-sized
batches. Prefill-sized inputs are correct but belong to cuBLAS.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

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
from aurora_kernels.ops._layout import cdiv, collapse_rows, pow2_at_least, row_starts, stride_multiple
from aurora_kernels.ops._pdl import pdl_options, wait_for_previous_kernel

# The prologue constexpr: what the kernel applies to x before the product; the public op of each.
PROLOGUES = ("none", "rms_norm", "silu_and_mul")
PROLOGUE_OPS = {"none": "linear", "rms_norm": "rms_norm_linear", "silu_and_mul": "silu_and_mul_linear"}
MAX_BLOCK_M = 32  # rows per program on the tensor-core path (B=32 decode); more rows, more programs


@triton.jit
def _load_h(x_ptr, residual_ptr, x_rows, res_rows, k, mask, HAS_RESIDUAL: tl.constexpr):
    """x (+ residual) at columns k of the programs' rows, in fp32."""
    h = tl.load(x_ptr + x_rows[:, None] + k[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h += tl.load(residual_ptr + res_rows[:, None] + k[None, :], mask=mask, other=0.0).to(tl.float32)
    return h


@triton.jit
def _write_h(h, residual_out_ptr, rows, k, mask, in_features, pid_n, HAS_RESIDUAL: tl.constexpr):
    """The programs of column block 0 write h = x + residual at columns k (the residual stream's
    next value, contiguous [rows, K])."""
    if HAS_RESIDUAL:
        if pid_n == 0:
            residual_out = residual_out_ptr + rows.to(tl.int64)[:, None] * in_features + k[None, :]
            tl.store(residual_out, h.to(residual_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _input_chunk(x_ptr, residual_ptr, norm_weight_ptr, residual_out_ptr, x_rows, res_rows, rows, row_mask, k,
                 in_features, pid_n, inv_rms, sum_squares,
                 PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, USE_DOT: tl.constexpr):  # fmt: skip
    """Columns k of the product's input, the prologue applied, for the programs' rows; and the
    GEMV's running sum of squares (rms_norm: it applies 1/rms after its loop)."""
    k_mask = k < in_features
    mask = row_mask[:, None] & k_mask[None, :]
    if PROLOGUE == 1:
        norm_weight = tl.load(norm_weight_ptr + k, mask=k_mask, other=0.0).to(tl.float32)
        h = _load_h(x_ptr, residual_ptr, x_rows, res_rows, k, mask, HAS_RESIDUAL)
        if USE_DOT:
            a = h * inv_rms[:, None] * norm_weight[None, :]
        else:
            _write_h(h, residual_out_ptr, rows, k, mask, in_features, pid_n, HAS_RESIDUAL)
            sum_squares += h * h
            a = h * norm_weight[None, :]
    elif PROLOGUE == 2:
        gate = tl.load(x_ptr + x_rows[:, None] + k[None, :], mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + x_rows[:, None] + in_features + k[None, :], mask=mask, other=0.0).to(tl.float32)
        if USE_DOT:
            a = gate * tl.sigmoid(gate) * up
        else:  # the same value: in the other order, ptxas 13 spilled 4 bytes of the 4-row GEMV tiles
            a = gate * up * tl.sigmoid(gate)
    else:
        a = tl.load(x_ptr + x_rows[:, None] + k[None, :], mask=mask, other=0.0)
    return a, sum_squares


@triton.jit
def _weight_tile(weight_rows, k, col_mask, in_features):
    return tl.load(weight_rows + k[None, :], mask=col_mask[:, None] & (k < in_features)[None, :], other=0.0)


@triton.jit
def _accumulate(acc, a, w, dtype: tl.constexpr, USE_DOT: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    """The tensor-core path: acc [BLOCK_M, BLOCK_N] += a @ w.T. The GEMV: a [1, BLOCK_K] broadcast
    over the weight tile into acc [BLOCK_N, BLOCK_K], 2-D, with no reduction inside the loop."""
    if USE_DOT:
        acc = dot_acc(a.to(dtype), tl.trans(w), acc, DOT_IN_FP32)
    else:
        acc += w.to(tl.float32) * a.to(tl.float32)
    return acc


@triton.jit
def _fused_linear_kernel(
    x_ptr, residual_ptr, norm_weight_ptr, weight_ptr, bias_ptr, out_ptr, residual_out_ptr,
    num_rows, in_features, out_features,
    x_outer_stride, x_inner_size, x_inner_stride,
    res_outer_stride, res_inner_size, res_inner_stride,
    weight_row_stride, eps,
    PROLOGUE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
    DOT_IN_FP32: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr, USE_PDL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UNROLL: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < num_rows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < out_features
    x_rows = row_starts(rows, x_outer_stride, x_inner_size, x_inner_stride, STRIDE_MULTIPLE)
    res_rows = row_starts(rows, res_outer_stride, res_inner_size, res_inner_stride, STRIDE_MULTIPLE)
    weight_rows = weight_ptr + cols.to(tl.int64)[:, None] * weight_row_stride
    dtype = out_ptr.dtype.element_ty

    # Under PDL (ops/_pdl.py) the GEMV loads its first weight tile before waiting for the kernel
    # before it (weights are not written during a decode step) and makes its first step after the
    # wait; the tensor-core path waits first.
    k_first = 0
    if USE_PDL and not USE_DOT:
        k = tl.arange(0, BLOCK_K)
        first_weight_tile = _weight_tile(weight_rows, k, col_mask, in_features)
    wait_for_previous_kernel(USE_PDL)

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
                h = _load_h(x_ptr, residual_ptr, x_rows, res_rows, k, mask, HAS_RESIDUAL)
                _write_h(h, residual_out_ptr, rows, k, mask, in_features, pid_n, HAS_RESIDUAL)
                sum_squares += tl.sum(h * h, axis=1)
            inv_rms = tl.rsqrt(sum_squares / in_features + eps)
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    else:
        # BLOCK_M == 1. The loop is loads and FMAs only: each lane keeps its own products (and the
        # rms_norm's squares) in fp32 and they are summed over K once, after the loop. A reduction
        # inside it would put barriers between one weight tile's loads and the next, and would give
        # the input chunk a layout of its own, converted through shared memory at every step.
        sum_squares = tl.zeros((BLOCK_M, BLOCK_K), tl.float32)
        inv_rms = tl.zeros((BLOCK_M,), tl.float32)  # unused: the GEMV applies 1/rms after its loop
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    if USE_PDL and not USE_DOT:
        a, sum_squares = _input_chunk(x_ptr, residual_ptr, norm_weight_ptr, residual_out_ptr, x_rows, res_rows, rows, row_mask,
                                      tl.arange(0, BLOCK_K), in_features, pid_n, inv_rms, sum_squares,
                                      PROLOGUE, HAS_RESIDUAL, USE_DOT)  # fmt: skip
        acc = _accumulate(acc, a, first_weight_tile, dtype, USE_DOT, DOT_IN_FP32)
        k_first = BLOCK_K
    # UNROLL > 1 (tried by bench/sweep_fused_linear.py only, not shipped): the GEMV issues that many
    # steps' weight loads before their FMAs, more bytes in flight per warp
    for k_start in tl.range(k_first, in_features, BLOCK_K, loop_unroll_factor=UNROLL):
        k = k_start + tl.arange(0, BLOCK_K)
        # The GEMV loads its weight tile first, so that it is in flight while the input chunk comes
        # from L2 and its prologue is computed: loaded after them, it waited for them (and for the
        # residual store between). The tensor-core path is pipelined, and loading first spilled there.
        if not USE_DOT:
            w = _weight_tile(weight_rows, k, col_mask, in_features)
        a, sum_squares = _input_chunk(x_ptr, residual_ptr, norm_weight_ptr, residual_out_ptr, x_rows, res_rows, rows, row_mask,
                                      k, in_features, pid_n, inv_rms, sum_squares, PROLOGUE, HAS_RESIDUAL, USE_DOT)  # fmt: skip
        if USE_DOT:
            w = _weight_tile(weight_rows, k, col_mask, in_features)
        acc = _accumulate(acc, a, w, dtype, USE_DOT, DOT_IN_FP32)
    if not USE_DOT:
        acc = tl.sum(acc, axis=1)[None, :]
        if PROLOGUE == 1:
            acc *= tl.rsqrt(tl.sum(sum_squares, axis=1) / in_features + eps)[:, None]

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows.to(tl.int64)[:, None] * out_features + cols[None, :]
    tl.store(out, acc.to(dtype), mask=row_mask[:, None] & col_mask[None, :])


# Autotune candidates on a GPU, (BLOCK_N, BLOCK_K, warps, stages), keyed on the problem's (K, N),
# the rows' block and the prologue. "gemv": one row on the FMA units; "dot_half": fp16/bf16 rows on
# tensor cores; "dot_fp32": fp32 (ieee dots on the FMA units).
# The GEMV tiles each give every warp a whole [BLOCK_N, 256] slab of the tile (BLOCK_K = 256 x warps:
# 32 lanes x 16 bytes in bf16/fp16, twice over in fp32). Then the input chunk's natural layout is the
# weight tile's: the loop needs no layout conversion and no barrier (the compile report checks
# `loop_barriers`). Narrower BLOCK_K per warp splits a tile's rows over the warps instead, and the
# input chunk went through shared memory at every step, behind 2 to 4 barriers: so it was for 4 of
# the 5 tiles the H200 sweep picked before (bench/results/nvidia-h200/gemv-probe/). More warps split
# K within a program (more bytes in flight for the small-N projections: qkv, o_proj and down_proj
# make only 192 to 256 programs of 8 columns); fewer columns make more programs. The loop has no
# dot, so Triton does not pipeline it (stages 1): a warp's bytes in flight are its slab, and
# occupancy does the rest. The tensor-core tiles lost to cuBLAS at 8 and 32 rows (the model keeps
# cuBLAS there; see model/llm.py). Each tile compiles without spills at every projection under
# Triton 3.6 and 3.9 (the compile report checks); of the tensor-core tiles tried, 16x256 with 3 or
# 4 stages, 32x128, 64x128 with 4 warps and 128x64 spilled somewhere.
_GPU_CONFIGS = {
    "gemv": ((8, 256, 1, 1), (8, 512, 2, 1), (4, 1024, 4, 1), (4, 2048, 8, 1), (2, 2048, 8, 1)),
    "dot_half": ((16, 256, 4, 2), (64, 128, 8, 3)),
    "dot_fp32": ((16, 64, 4, 2),),
}
_LAUNCHERS = autotuned_launchers(
    _fused_linear_kernel, _GPU_CONFIGS,
    lambda c: triton.Config({"BLOCK_N": c[0], "BLOCK_K": c[1]}, num_warps=c[2], num_stages=c[3]),
    key=["in_features", "out_features", "BLOCK_M", "PROLOGUE", "HAS_RESIDUAL"],
)  # fmt: skip


def _launcher_kind(num_rows: int, dtype: torch.dtype) -> str:
    if num_rows == 1:
        return "gemv"
    return "dot_fp32" if dtype == torch.float32 else "dot_half"


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


def linear(x, weight, bias=None, *, backend="triton"):
    """F.linear for decode-sized inputs: x [..., K] @ weight.T + bias -> [..., N].

    x: fp16/bf16/fp32, contiguous last dim, any other strides; weight [N, K] in x's dtype with a
    contiguous last dim (a row slice of a fused weight is fine); bias [N] (any float dtype) or None.
    """
    check_backend(backend)
    in_features = check_row_input("x", x, max_cols=2**31 - 1)
    _check_weights(x, in_features, weight, bias)
    check_same_device({"x": x, "weight": weight, "bias": bias})
    return _dispatch("linear", backend, (x, weight, bias), (x, weight, bias, None, None, 0.0, PROLOGUES.index("none")))


def rms_norm_linear(x, norm_weight, weight, bias=None, eps=1e-6, residual=None, *, backend="triton"):
    """linear(rms_norm(x, norm_weight, eps, residual), weight, bias) in one kernel.

    x [..., K] and residual (x's shape and dtype, or None) as for `rms_norm`; norm_weight [K];
    weight [N, K] and bias [N] as for `linear`. Returns y [..., N], or (y, x + residual) with a
    residual, as `rms_norm` returns the residual stream's next value.
    """
    check_backend(backend)
    in_features = check_row_input("x", x, max_cols=2**31 - 1)
    check_tensor("norm_weight", norm_weight, shape=(in_features,), layout="[K]", unit_stride_last=True)
    if residual is not None:
        check_tensor("residual", residual, shape=tuple(x.shape), layout="(the shape of x)", unit_stride_last=True)
        check_same_dtype("residual", residual, "x", x)
    _check_weights(x, in_features, weight, bias)
    check_same_device({"x": x, "norm_weight": norm_weight, "residual": residual, "weight": weight, "bias": bias})
    check_eps(eps)
    return _dispatch("rms_norm_linear", backend, (x, norm_weight, weight, bias, eps, residual),
                     (x, weight, bias, norm_weight, residual, float(eps), PROLOGUES.index("rms_norm")))  # fmt: skip


def silu_and_mul_linear(x, weight, bias=None, *, backend="triton"):
    """linear(silu_and_mul(x), weight, bias) in one kernel: x [..., 2I] = concat(gate, up),
    weight [N, I], bias [N] or None -> [..., N]."""
    check_backend(backend)
    width = check_row_input("x", x, max_cols=2**31 - 1)
    if width % 2:
        raise ValueError(f"x: expected an even last dim [..., 2I] (gate and up halves), got {width}")
    _check_weights(x, width // 2, weight, bias)
    check_same_device({"x": x, "weight": weight, "bias": bias})
    return _dispatch("silu_and_mul_linear", backend, (x, weight, bias),
                     (x, weight, bias, None, None, 0.0, PROLOGUES.index("silu_and_mul")))  # fmt: skip


def _dispatch(op: str, backend: str, reference_args: tuple, launch_args: tuple):
    """The checked call of a public op: its reference, or the kernel; y, or (y, h) with a residual."""
    record_call(op, backend)
    if backend == "reference":
        return getattr(reference, op)(*reference_args)
    check_triton_device("x", launch_args[0])
    outputs = _fused_linear_launch(*launch_args)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _fake(x, weight, bias, norm_weight, residual, eps, prologue):
    out = x.new_empty((*x.shape[:-1], weight.shape[0]))
    return [out] if residual is None else [out, x.new_empty(x.shape)]


@kernel_op("fused_linear", fake=_fake)
def _fused_linear_launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         norm_weight: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                         eps: float, prologue: int) -> list[torch.Tensor]:  # fmt: skip
    """[y] or, with residual, [y, x + residual]."""
    return launch(x, weight, bias, norm_weight, residual, eps, prologue)


def launch(x, weight, bias, norm_weight, residual, eps: float, prologue: int, config: tuple | None = None,
           unroll: int = 1) -> list:  # fmt: skip
    """The launcher. config (BLOCK_N, BLOCK_K, warps, stages) launches that candidate instead of the
    autotuner's choice (or the interpreter's blocks): the tests run every candidate this way, since a
    GPU test run keeps only each autotuner's first (AURORA_AUTOTUNE=0). unroll: the K loop's unroll
    factor (1 in every shipped config; the tile sweep also tries 2)."""
    out_features, in_features = weight.shape
    out = new_output((*x.shape[:-1], out_features), x.dtype, x.device)
    residual_out = new_output(x.shape, x.dtype, x.device) if residual is not None else None
    x_rows = collapse_rows("x", x)
    res_rows = collapse_rows("residual", residual) if residual is not None else x_rows
    num_rows = x_rows.num_rows
    if num_rows == 0:
        return [out] if residual is None else [out, residual_out]
    use_dot = num_rows > 1
    block_m = min(pow2_at_least(num_rows, 16), MAX_BLOCK_M) if use_dot else 1
    args = (
        x, residual if residual is not None else x, norm_weight if norm_weight is not None else x, weight,
        bias if bias is not None else x, out, residual_out if residual is not None else out,
        num_rows, in_features, out_features, *x_rows[1:], *res_rows[1:], weight.stride(0), eps,
    )  # fmt: skip
    constexprs = {
        "PROLOGUE": prologue,
        "HAS_RESIDUAL": residual is not None,
        "HAS_BIAS": bias is not None,
        "USE_DOT": use_dot,
        "DOT_IN_FP32": dot_in_fp32(x.dtype),
        "STRIDE_MULTIPLE": stride_multiple(x.element_size(), (x_rows.outer_stride, x_rows.inner_stride,
                                                              res_rows.outer_stride, res_rows.inner_stride)),
        "BLOCK_M": block_m,
        "UNROLL": unroll,
        **pdl_options(x.device),
    }  # fmt: skip
    row_blocks = cdiv(num_rows, block_m)
    if config is not None:
        block_n, block_k, warps, stages = config
        _fused_linear_kernel[(cdiv(out_features, block_n), row_blocks)](
            *args, **constexprs, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages
        )
    elif INTERPRETER:
        blocks = _interpreter_blocks(in_features, out_features)
        _fused_linear_kernel[(cdiv(out_features, blocks["BLOCK_N"]), row_blocks)](*args, **constexprs, **blocks)
    else:
        launcher = _LAUNCHERS[_launcher_kind(num_rows, x.dtype)]
        launcher[lambda meta: (cdiv(out_features, meta["BLOCK_N"]), row_blocks)](*args, **constexprs)
    return [out] if residual is None else [out, residual_out]


# The model's four decode projections: (where, prologue, K, N, has_residual, has_bias)
MODEL_PROJECTIONS = (
    ("input_layernorm -> qkv_proj", "rms_norm", 1536, 2048, True, True),
    ("o_proj", "none", 1536, 1536, False, False),
    ("post_attention_layernorm -> gate_up_proj", "rms_norm", 1536, 17920, True, False),
    ("silu_and_mul -> down_proj", "silu_and_mul", 8960, 1536, False, False),
)


@register_compile_configs
def _compile_configs():
    """Every autotune candidate at each of the model's projections: the GEMV (one row) in every
    dtype, the tensor-core path at BLOCK_M 16 and 32 (B=8 and B=32 decode); and with programmatic
    dependent launch (USE_PDL) in bf16, the model's dtype: the GEMV, and the tensor-core path at 16."""
    configs = []
    for where, prologue, in_features, out_features, has_residual, has_bias in MODEL_PROJECTIONS:
        for kind, candidates in _GPU_CONFIGS.items():
            dtypes = {"gemv": FLOAT_DTYPES, "dot_half": (torch.float16, torch.bfloat16), "dot_fp32": (torch.float32,)}[kind]
            for block_m in (1,) if kind == "gemv" else (16, MAX_BLOCK_M):
                for block_n, block_k, warps, stages in candidates:
                    pdl_variants = [(torch.bfloat16, True)] if kind != "dot_fp32" and block_m < MAX_BLOCK_M else []
                    for dtype, use_pdl in [(d, False) for d in dtypes] + pdl_variants:
                        configs += configs_per_dtype(
                            (dtype,),
                            op=PROLOGUE_OPS[prologue],
                            shape=f"{where}, K={in_features} N={out_features}, M<={block_m}",
                            kernel=_fused_linear_kernel,
                            signature={
                                "x_ptr": "*T", "residual_ptr": "*T", "norm_weight_ptr": "*T", "weight_ptr": "*T",
                                "bias_ptr": "*T", "out_ptr": "*T", "residual_out_ptr": "*T",
                                "num_rows": "i32", "in_features": "i32", "out_features": "i32",
                                "x_outer_stride": "i64", "x_inner_size": "i32", "x_inner_stride": "i32",
                                "res_outer_stride": "i64", "res_inner_size": "i32", "res_inner_stride": "i32",
                                "weight_row_stride": "i32", "eps": "fp32",
                            },  # fmt: skip
                            constexprs={"PROLOGUE": PROLOGUES.index(prologue), "HAS_RESIDUAL": has_residual,
                                        "HAS_BIAS": has_bias, "USE_DOT": kind != "gemv",
                                        "DOT_IN_FP32": dtype == torch.float32, "USE_PDL": use_pdl,
                                        "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "UNROLL": 1},  # fmt: skip
                            num_warps=warps,
                            num_stages=stages,
                            aligned=("x_ptr", "residual_ptr", "norm_weight_ptr", "weight_ptr", "bias_ptr", "out_ptr",
                                     "residual_out_ptr", "in_features", "out_features", "x_outer_stride",
                                     "res_outer_stride", "weight_row_stride"),  # fmt: skip
                            # fp32 dots run in ieee precision on the FMA units, by choice (parity bound 1e-5)
                            uses_dot=kind == "dot_half",
                            barrier_free_loops=kind == "gemv",
                        )
    return configs
