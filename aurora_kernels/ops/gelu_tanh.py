"""gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the ViT's MLP activation (rows of
4304 in the so400m tower).

Reads N, writes N, ~10 FLOPs an element: memory bound, one pass. The tanh form is evaluated as
x * sigmoid(2u) (the same function: 0.5 (1 + tanh(u)) = sigmoid(2u)), which needs one exp and
saturates cleanly at both ends in fp32. 2-D grid of [BLOCK_ROWS, BLOCK_COLS] tiles over strided rows;
a contiguous input whose size allows is walked as rows of 1024 (`FLAT_COLS`), every tile full.
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
def _gelu_tanh_kernel(
    x_ptr, out_ptr, num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride,
    STRIDE_MULTIPLE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    x_offsets, out_offsets, mask = elementwise_tile(
        num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride, STRIDE_MULTIPLE, BLOCK_ROWS, BLOCK_COLS
    )
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
    inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2/pi) (x + 0.044715 x^3)
    y = x * tl.sigmoid(2.0 * inner)
    tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def gelu_tanh(x, *, backend="triton"):
    """GELU, tanh approximation, elementwise. x [..., N] (fp16/bf16/fp32, contiguous last dim, any other
    strides) -> new contiguous tensor in x's dtype."""
    check_backend(backend)
    check_row_input("x", x, max_cols=2**31 - 1)
    record_call("gelu_tanh", backend)
    if backend == "reference":
        return reference.gelu_tanh(x)
    check_triton_device("x", x)
    return _gelu_tanh_launch(x)


@kernel_op("gelu_tanh", fake=lambda x: x.new_empty(x.shape))
def _gelu_tanh_launch(x: torch.Tensor) -> torch.Tensor:
    out = new_output(x.shape, x.dtype, x.device)
    launch_elementwise_rows(_gelu_tanh_kernel, x, out, x.shape[-1], same_positions=True)
    return out


@register_compile_configs
def _compile_configs():
    return elementwise_compile_configs("gelu_tanh", _gelu_tanh_kernel, 4304, "N=4304 (ViT MLP)")
