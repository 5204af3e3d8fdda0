"""token_mlp_compress: the paper's token compressor, an MLP over the token axis:
out[b] = w2 @ act(w1 @ x[b] + b1[:, None]) + b2[:, None] (256 -> 64 visual tokens).

Replaces transpose + Linear + activation + Linear + transpose; the fused kernel keeps the hidden
activations on chip.

The arithmetic, per image: 2*N*D*C FLOPs for the first GEMM (w1 [D, N] @ x[b] [N, C]) and 2*D*M*C
for the second (w2 [M, D] @ h [D, C]) over only (N + M)*C*2 bytes of activations (the weights are
shared by the batch and stay in L2). At the model's shapes (N 256, D 1024, M 64, C 1536) that is
1.0 GFLOP over 0.98 MB: ~1000 FLOP/byte, far past the H100's ridge (~270 FLOP/byte at 800 TFLOP/s
over 3 TB/s), so the kernel is compute-bound and must keep both GEMMs on the tensor cores.

Tiling: a program owns one image b and a BLOCK_C slice of channels and produces the whole
[M, BLOCK_C] output tile. It walks the hidden dim in BLOCK_D chunks: h = act(w1[chunk] @ x[b][:, cols]
+ b1[chunk]) is computed in fp32 registers (an inner loop over N in BLOCK_N steps), rounded to the
input dtype, and immediately consumed by acc += w2[:, chunk] @ h, so the [D, C] intermediate never
exists in memory. The grid is (C / BLOCK_C, B): B = 64 and BLOCK_C = 128 give 768 programs for the
132 SMs. x's [N, BLOCK_C] tile is re-read (from L2) once per hidden chunk: a larger BLOCK_D trades
registers for fewer re-reads, which is what the autotuner weighs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aurora_kernels._compile import configs_per_dtype, register_compile_configs
from aurora_kernels._dispatch import kernel_op, new_output, record_call
from aurora_kernels._validation import (
    FLOAT_DTYPES,
    check_backend,
    check_choice,
    check_same_device,
    check_same_dtype,
    check_tensor,
    check_triton_device,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._autotune import INTERPRETER, autotuned_launchers, power_of_4_class
from aurora_kernels.ops._dot import dot_acc, dot_in_fp32
from aurora_kernels.ops._layout import cdiv, pow2_at_least

ACTIVATIONS = ("gelu_tanh", "gelu", "silu")
MAX_OUT_TOKENS = 256  # the whole [M, BLOCK_C] accumulator lives in registers


@triton.jit
def _activation(h, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:  # gelu_tanh: 0.5 (1 + tanh(u)) = sigmoid(2u)
        return h * tl.sigmoid(2.0 * 0.7978845608028654 * (h + 0.044715 * h * h * h))
    elif ACTIVATION == 1:  # gelu (erf)
        return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    else:  # silu
        return h * tl.sigmoid(h)


@triton.jit(do_not_specialize=["batch_class"])
def _token_mlp_compress_kernel(
    x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
    num_tokens, hidden, out_tokens, channels,
    x_batch_stride, x_token_stride, w1_row_stride, w2_row_stride,
    batch_class,  # unused here: part of the autotuner's key (BATCH_CLASSES)
    ACTIVATION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    batch = tl.program_id(1).to(tl.int64)
    col_mask = cols < channels
    out_rows = tl.arange(0, BLOCK_M)
    out_mask = out_rows < out_tokens
    x_image = x_ptr + batch * x_batch_stride
    acc = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    for d_start in range(0, hidden, BLOCK_D):
        d = d_start + tl.arange(0, BLOCK_D)
        d_mask = d < hidden
        h = tl.zeros((BLOCK_D, BLOCK_C), tl.float32)
        for n_start in range(0, num_tokens, BLOCK_N):
            n = n_start + tl.arange(0, BLOCK_N)
            n_mask = n < num_tokens
            w1 = tl.load(w1_ptr + d[:, None] * w1_row_stride + n[None, :], mask=d_mask[:, None] & n_mask[None, :], other=0.0)
            x = tl.load(x_image + n.to(tl.int64)[:, None] * x_token_stride + cols[None, :],
                        mask=n_mask[:, None] & col_mask[None, :], other=0.0)  # fmt: skip
            h = dot_acc(w1, x, h, DOT_IN_FP32)
        b1 = tl.load(b1_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
        # padded hidden rows are act(0) = 0 and meet zero w2 columns: they add nothing
        h = _activation(h + b1[:, None], ACTIVATION).to(x_ptr.dtype.element_ty)
        w2 = tl.load(w2_ptr + out_rows[:, None] * w2_row_stride + d[None, :], mask=out_mask[:, None] & d_mask[None, :], other=0.0)
        acc = dot_acc(w2, h, acc, DOT_IN_FP32)
    acc += tl.load(b2_ptr + out_rows, mask=out_mask, other=0.0).to(tl.float32)[:, None]
    out_offsets = (batch * out_tokens + out_rows)[:, None] * channels + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=out_mask[:, None] & col_mask[None, :])


# Autotune candidates on a GPU (BLOCK_C, BLOCK_D, BLOCK_N, warps, stages), keyed on the problem's
# (D, C, N, M) and the batch's size class. fp16/bf16 tiles feed wgmma; fp32 (ieee dots on the FMA
# units) needs smaller tiles to stay clear of spills (the compile report checks every one).
_GPU_CONFIGS = {
    "half": ((128, 64, 64, 8, 3), (64, 128, 64, 8, 3), (128, 128, 32, 8, 2), (64, 64, 64, 4, 4)),
    "fp32": ((64, 32, 32, 4, 2), (32, 64, 32, 4, 2)),
}
_LAUNCHERS = autotuned_launchers(
    _token_mlp_compress_kernel, _GPU_CONFIGS,
    lambda kind, c: triton.Config({"BLOCK_C": c[0], "BLOCK_D": c[1], "BLOCK_N": c[2]}, num_warps=c[3], num_stages=c[4]),
    key=["hidden", "channels", "num_tokens", "out_tokens", "batch_class"],
)  # fmt: skip
# Size classes of the batch for the autotuner's key (1, 4, 16, 64+): the grid is (C / BLOCK_C, B), so
# one image is 12 programs of BLOCK_C 128 on 132 SMs and 64 images 768: their best tiles differ.
BATCH_CLASSES = (1, 64)


def _interpreter_blocks(num_tokens, hidden, channels) -> dict:
    """Large blocks: the interpreter's cost grows with programs and loop steps, not with tile size."""
    return {
        "BLOCK_C": min(pow2_at_least(channels, 16), 128),
        "BLOCK_D": min(pow2_at_least(hidden, 16), 128),
        "BLOCK_N": min(pow2_at_least(num_tokens, 16), 128),
    }


def _check_args(x, w1, b1, w2, b2, activation):
    check_tensor("x", x, ndim=3, layout="[B, N, C]", unit_stride_last=True)
    num_tokens = x.shape[1]
    check_tensor("w1", w1, ndim=2, layout="[D, N]")
    hidden = w1.shape[0]
    check_tensor("w1", w1, shape=(hidden, num_tokens), layout="[D, N]", unit_stride_last=True)
    check_tensor("b1", b1, shape=(hidden,), layout="[D]")
    check_tensor("w2", w2, ndim=2, layout="[M, D]")
    check_tensor("w2", w2, shape=(w2.shape[0], hidden), layout="[M, D]", unit_stride_last=True)
    check_tensor("b2", b2, shape=(w2.shape[0],), layout="[M]")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        check_same_dtype(name, t, "x", x)
    check_same_device({"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2})
    check_choice("activation", activation, ACTIVATIONS)
    if w2.shape[0] > MAX_OUT_TOKENS:
        raise ValueError(f"w2: expected at most {MAX_OUT_TOKENS} output tokens M (dim 0), got {w2.shape[0]}")


def token_mlp_compress(x, w1, b1, w2, b2, activation="gelu_tanh", *, backend="triton"):
    """MLP over the token axis: x [B, N, C], w1 [D, N], b1 [D], w2 [M, D], b2 [M] -> [B, M, C].

    All in one dtype (fp16/bf16/fp32); activation "gelu_tanh", "gelu" (erf) or "silu".
    """
    check_backend(backend)
    _check_args(x, w1, b1, w2, b2, activation)
    record_call("token_mlp_compress", backend)
    if backend == "reference":
        return reference.token_mlp_compress(x, w1, b1, w2, b2, activation)
    check_triton_device("x", x)
    return _token_mlp_compress_launch(x, w1, b1, w2, b2, activation)


@kernel_op("token_mlp_compress", fake=lambda x, w1, b1, w2, b2, activation: x.new_empty((x.shape[0], w2.shape[0], x.shape[2])))
def _token_mlp_compress_launch(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                               activation: str) -> torch.Tensor:  # fmt: skip
    batch, num_tokens, channels = x.shape
    hidden, out_tokens = w1.shape[0], w2.shape[0]
    out = new_output((batch, out_tokens, channels), x.dtype, x.device)
    if out.numel() == 0:
        return out
    b1, b2 = b1.contiguous(), b2.contiguous()  # [D] and [M]: a few KB, read once per program
    args = (x, w1, b1, w2, b2, out, num_tokens, hidden, out_tokens, channels,
            x.stride(0), x.stride(1), w1.stride(0), w2.stride(0), power_of_4_class(batch, *BATCH_CLASSES))  # fmt: skip
    constexprs = {
        "ACTIVATION": ACTIVATIONS.index(activation),
        "DOT_IN_FP32": dot_in_fp32(x.dtype),
        "BLOCK_M": pow2_at_least(out_tokens, 16),
    }
    if INTERPRETER:
        blocks = _interpreter_blocks(num_tokens, hidden, channels)
        grid = (cdiv(channels, blocks["BLOCK_C"]), batch)
        _token_mlp_compress_kernel[grid](*args, **constexprs, **blocks)
    else:
        launcher = _LAUNCHERS["fp32" if x.dtype == torch.float32 else "half"]
        launcher[lambda meta: (cdiv(channels, meta["BLOCK_C"]), batch)](*args, **constexprs)
    return out


@register_compile_configs
def _compile_configs():
    """Every autotune candidate at the model's shapes (N 256, M 64, C 1536), each dtype."""
    configs = []
    for dtype in FLOAT_DTYPES:
        for block_c, block_d, block_n, warps, stages in _GPU_CONFIGS["fp32" if dtype == torch.float32 else "half"]:
            configs += configs_per_dtype(
                (dtype,),
                op="token_mlp_compress",
                shape="N=256 M=64 C=1536 D=256..1024 gelu_tanh",
                kernel=_token_mlp_compress_kernel,
                signature={
                    "x_ptr": "*T",
                    "w1_ptr": "*T",
                    "b1_ptr": "*T",
                    "w2_ptr": "*T",
                    "b2_ptr": "*T",
                    "out_ptr": "*T",
                    "num_tokens": "i32",
                    "hidden": "i32",
                    "out_tokens": "i32",
                    "channels": "i32",
                    "x_batch_stride": "i64",
                    "x_token_stride": "i64",
                    "w1_row_stride": "i32",
                    "w2_row_stride": "i32",
                    "batch_class": "i32",
                },  # fmt: skip
                constexprs={
                    "ACTIVATION": 0,
                    "DOT_IN_FP32": dtype == torch.float32,
                    "BLOCK_M": 64,
                    "BLOCK_D": block_d,
                    "BLOCK_N": block_n,
                    "BLOCK_C": block_c,
                },  # fmt: skip
                num_warps=warps,
                num_stages=stages,
                aligned=(
                    "x_ptr",
                    "w1_ptr",
                    "b1_ptr",
                    "w2_ptr",
                    "b2_ptr",
                    "out_ptr",
                    "num_tokens",
                    "hidden",
                    "out_tokens",
                    "channels",
                    "x_batch_stride",
                    "x_token_stride",
                    "w1_row_stride",
                    "w2_row_stride",
                ),
                # fp32 dots run in ieee precision on the FMA units, by choice (parity bound 1e-5)
                uses_dot=dtype != torch.float32,
            )
    return configs
