"""silu_and_mul: x [..., 2I] = concat(gate, up) -> silu(gate) * up, [..., I] (the SwiGLU MLP's
activation, I = 8960 in the LLM: not a power of two).

Work per row: reads 2I, writes I, ~5I FLOPs: memory bound. One pass, fp32 math, 2-D grid of
[BLOCK_ROWS, BLOCK_COLS] tiles (1024 columns a tile: 9 column blocks cover I = 8960 with one
partial block), gate and up read from the same row at column c and c + I.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from aurora_kernels._compile import register_compile_configs
from aurora_kernels._dispatch import kernel_op, new_output, record_call
from aurora_kernels._validation import check_backend, check_row_input, check_triton_device
from aurora_kernels.ops import reference
from aurora_kernels.ops._layout import elementwise_compile_configs, elementwise_tile, launch_elementwise_rows


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride,
    STRIDE_MULTIPLE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    gate_offsets, out_offsets, mask = elementwise_tile(
        num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride, STRIDE_MULTIPLE, BLOCK_ROWS, BLOCK_COLS
    )
    gate = tl.load(x_ptr + gate_offsets, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + gate_offsets + num_cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x, *, backend="triton"):
    """x [..., 2I] (fp16/bf16/fp32, contiguous last dim, any other strides) -> silu(x[..., :I]) * x[..., I:]."""
    check_backend(backend)
    width = check_row_input("x", x, max_cols=2**31 - 1, dim="2I")
    if width % 2:
        raise ValueError(f"x: expected an even last dim [..., 2I] (gate and up halves), got {width}")
    record_call("silu_and_mul", backend)
    if backend == "reference":
        return reference.silu_and_mul(x)
    check_triton_device("x", x)
    return _silu_and_mul_launch(x)


@kernel_op("silu_and_mul", fake=lambda x: x.new_empty((*x.shape[:-1], x.shape[-1] // 2)))
def _silu_and_mul_launch(x: torch.Tensor) -> torch.Tensor:
    num_cols = x.shape[-1] // 2
    out = new_output((*x.shape[:-1], num_cols), x.dtype, x.device)
    launch_elementwise_rows(_silu_and_mul_kernel, x, out, num_cols)
    return out


@register_compile_configs
def _compile_configs():
    return elementwise_compile_configs("silu_and_mul", _silu_and_mul_kernel, 8960, "I=8960 (LLM MLP)")
