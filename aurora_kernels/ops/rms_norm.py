"""rms_norm: y = x * rsqrt(mean(x^2) + eps) * weight over the last dim, optionally fused with the
residual add of a pre-norm block (h = x + residual; returns (rms_norm(h), h)).

Work per row of N elements (N = 1536 for the LLM's hidden state, 128 for a per-head norm):
reads N (x) [+ N residual] + N (weight, cached), writes N [+ N for h]; about 4N FLOPs. Memory
bound: the floor is the bytes over the copy bandwidth, so the kernel is one pass with the whole
row in registers (no second read for the normalisation), fp32 arithmetic, 16-byte vector loads.

Tiling: a program takes a [BLOCK_ROWS, BLOCK_COLS] tile: BLOCK_COLS is N rounded up to a power of
two, BLOCK_ROWS packs short rows (N = 128 -> 16 rows) so each program still moves ~4 KB, and the
grid is one program per row block. Rows may be strided (see `_layout.collapse_rows`).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import nn

from aurora_kernels._compile import register_compile_configs
from aurora_kernels._dispatch import kernel_op, new_output, record_call
from aurora_kernels._validation import (
    check_backend,
    check_eps,
    check_int,
    check_row_input,
    check_same_device,
    check_same_dtype,
    check_tensor,
    check_triton_device,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._layout import (
    cdiv,
    collapse_rows,
    residual_norm_compile_configs,
    residual_stream_rows,
    row_tile_config,
    stride_multiple,
)


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
    num_rows, num_cols,
    x_outer_stride, x_inner_size, x_inner_stride,
    res_outer_stride, res_inner_size, res_inner_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    h, mask, out_offsets = residual_stream_rows(
        x_ptr, residual_ptr, residual_out_ptr, num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride,
        res_outer_stride, res_inner_size, res_inner_stride, HAS_RESIDUAL, STRIDE_MULTIPLE, BLOCK_ROWS, BLOCK_COLS,
    )  # fmt: skip
    cols = tl.arange(0, BLOCK_COLS)
    inv_rms = tl.rsqrt(tl.sum(h * h, axis=1) / num_cols + eps)
    weight = tl.load(weight_ptr + cols, mask=cols < num_cols, other=0.0).to(tl.float32)
    y = h * inv_rms[:, None] * weight[None, :]
    tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def _check_args(x, weight, eps, residual):
    num_cols = check_row_input("x", x)
    check_tensor("weight", weight, shape=(num_cols,), layout="[N]", unit_stride_last=True)
    if residual is not None:
        check_tensor("residual", residual, shape=tuple(x.shape), layout="(the shape of x)", unit_stride_last=True)
        check_same_dtype("residual", residual, "x", x)
    check_same_device({"x": x, "weight": weight, "residual": residual})
    check_eps(eps)


def rms_norm(x, weight, eps=1e-6, residual=None, *, backend="triton"):
    """RMSNorm over the last dim, in fp32: x * rsqrt(mean(x^2) + eps) * weight.

    x [..., N] (fp16/bf16/fp32, any strides with a contiguous last dim); weight [N] (any float dtype).
    With residual (same shape and dtype as x): h = x + residual, returns (rms_norm(h), h); the fused
    form of a pre-norm block's residual add. Outputs are new contiguous tensors in x's dtype.
    """
    check_backend(backend)
    _check_args(x, weight, eps, residual)
    record_call("rms_norm", backend)
    if backend == "reference":
        return reference.rms_norm(x, weight, eps, residual)
    check_triton_device("x", x)
    outputs = _rms_norm_launch(x, weight, float(eps), residual)
    return outputs[0] if residual is None else tuple(outputs)


@kernel_op("rms_norm", fake=lambda x, weight, eps, residual: [x.new_empty(x.shape) for _ in range(1 if residual is None else 2)])
def _rms_norm_launch(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """[normed] or, with residual, [normed, x + residual]."""
    out = new_output(x.shape, x.dtype, x.device)
    residual_out = new_output(x.shape, x.dtype, x.device) if residual is not None else None
    x, x_rows = collapse_rows(x)
    residual, res_rows = collapse_rows(residual) if residual is not None else (None, x_rows)
    if x_rows.num_rows > 0:
        cfg = row_tile_config(x.shape[-1])
        grid = (cdiv(x_rows.num_rows, cfg["BLOCK_ROWS"]),)
        _rms_norm_kernel[grid](
            x, residual if residual is not None else x, weight, out,
            residual_out if residual is not None else out,
            x_rows.num_rows, x.shape[-1], *x_rows[1:], *res_rows[1:], eps,
            HAS_RESIDUAL=residual is not None,
            STRIDE_MULTIPLE=stride_multiple(x.element_size(), (x_rows.outer_stride, x_rows.inner_stride,
                                                               res_rows.outer_stride, res_rows.inner_stride)),
            **cfg,
        )  # fmt: skip
    return [out] if residual is None else [out, residual_out]


class RMSNorm(nn.Module):
    """Drop-in RMSNorm module on the kernel; forward(x, residual=None) as `rms_norm`."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, backend: str = "triton", device=None, dtype=None):
        super().__init__()
        check_backend(backend)
        check_int("hidden_size", hidden_size, minimum=1)
        check_eps(eps)
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.eps = eps
        self.backend = backend

    def forward(self, x, residual=None):
        return rms_norm(x, self.weight, self.eps, residual, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, backend={self.backend!r}"


@register_compile_configs
def _compile_configs():
    return [
        config
        for num_cols, where in ((1536, "LLM hidden"), (128, "per-head"))
        for config in residual_norm_compile_configs(
            "rms_norm", _rms_norm_kernel, num_cols, f"N={num_cols} ({where})", has_bias=False
        )  # fmt: skip
    ]
