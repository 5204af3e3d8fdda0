"""layer_norm: y = (x - mean) * rsqrt(var + eps) * weight + bias over the last dim (the ViT's norm,
rows of 1152), optionally fused with the residual add of a pre-norm block (h = x + residual;
returns (layer_norm(h), h)), as rms_norm does for the LLM.

Work per row of N elements: reads N (x) [+ N residual] + 2N (weight, bias; cached across rows),
writes N [+ N for h]; about 8N FLOPs. Memory bound, so one pass with the row held in registers: the
mean and the centred variance are both computed from the registers (two reductions, one read), in
fp32. The fused form saves the separate add's read of both operands and write of the sum.

Tiling as in rms_norm: [BLOCK_ROWS, BLOCK_COLS] tiles of ~2K elements, N = 1152 -> one row of 2048
lanes per program; strided rows through `_layout.collapse_rows`.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from aurora_kernels._compile import register_compile_configs
from aurora_kernels._dispatch import kernel_op, new_output, record_call
from aurora_kernels._validation import (
    check_backend,
    check_eps,
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
def _layer_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, bias_ptr, out_ptr, residual_out_ptr,
    num_rows, num_cols,
    x_outer_stride, x_inner_size, x_inner_stride,
    res_outer_stride, res_inner_size, res_inner_stride,
    eps,
    HAS_RESIDUAL: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    x, mask, out_offsets = residual_stream_rows(
        x_ptr, residual_ptr, residual_out_ptr, num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride,
        res_outer_stride, res_inner_size, res_inner_stride, HAS_RESIDUAL, STRIDE_MULTIPLE, BLOCK_ROWS, BLOCK_COLS,
    )  # fmt: skip
    cols = tl.arange(0, BLOCK_COLS)
    col_mask = cols < num_cols
    mean = tl.sum(x, axis=1) / num_cols
    centred = tl.where(mask, x - mean[:, None], 0.0)
    inv_std = tl.rsqrt(tl.sum(centred * centred, axis=1) / num_cols + eps)
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = centred * inv_std[:, None] * weight[None, :] + bias[None, :]
    tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def layer_norm(x, weight, bias, eps=1e-6, residual=None, *, backend="triton"):
    """LayerNorm over the last dim, in fp32 (biased variance, as torch).

    x [..., N] (fp16/bf16/fp32, any strides with a contiguous last dim); weight, bias [N] (any float
    dtype). With residual (same shape and dtype as x): h = x + residual, returns (layer_norm(h), h),
    the norm computed from the unrounded sum; the fused form of a pre-norm block's residual add.
    Outputs are new contiguous tensors in x's dtype.
    """
    check_backend(backend)
    num_cols = check_row_input("x", x)
    check_tensor("weight", weight, shape=(num_cols,), layout="[N]", unit_stride_last=True)
    check_tensor("bias", bias, shape=(num_cols,), layout="[N]", unit_stride_last=True)
    if residual is not None:
        check_tensor("residual", residual, shape=tuple(x.shape), layout="(the shape of x)", unit_stride_last=True)
        check_same_dtype("residual", residual, "x", x)
    check_same_device({"x": x, "weight": weight, "bias": bias, "residual": residual})
    check_eps(eps)
    record_call("layer_norm", backend)
    if backend == "reference":
        return reference.layer_norm(x, weight, bias, eps, residual)
    check_triton_device("x", x)
    outputs = _layer_norm_launch(x, weight, bias, float(eps), residual)
    return outputs[0] if residual is None else tuple(outputs)


@kernel_op(
    "layer_norm", fake=lambda x, weight, bias, eps, residual: [x.new_empty(x.shape) for _ in range(1 if residual is None else 2)]
)
def _layer_norm_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                       residual: Optional[torch.Tensor]) -> list[torch.Tensor]:  # fmt: skip
    """[normed] or, with residual, [normed, x + residual]."""
    out = new_output(x.shape, x.dtype, x.device)
    residual_out = new_output(x.shape, x.dtype, x.device) if residual is not None else None
    x, x_rows = collapse_rows(x)
    residual, res_rows = collapse_rows(residual) if residual is not None else (None, x_rows)
    num_cols = x.shape[-1]
    if x_rows.num_rows > 0:
        cfg = row_tile_config(num_cols)
        grid = (cdiv(x_rows.num_rows, cfg["BLOCK_ROWS"]),)
        multiple = stride_multiple(x.element_size(), (x_rows.outer_stride, x_rows.inner_stride, res_rows.outer_stride,
                                                      res_rows.inner_stride))  # fmt: skip
        _layer_norm_kernel[grid](
            x, residual if residual is not None else x, weight, bias, out, residual_out if residual is not None else out,
            x_rows.num_rows, num_cols, *x_rows[1:], *res_rows[1:], eps,
            HAS_RESIDUAL=residual is not None, STRIDE_MULTIPLE=multiple, **cfg,
        )  # fmt: skip
    return [out] if residual is None else [out, residual_out]


@register_compile_configs
def _compile_configs():
    return residual_norm_compile_configs("layer_norm", _layer_norm_kernel, 1152, "N=1152 (ViT hidden)", has_bias=True)
