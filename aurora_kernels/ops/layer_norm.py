"""layer_norm: y = (x - mean) * rsqrt(var + eps) * weight + bias over the last dim (the ViT's norm,
rows of 1152).

Work per row of N elements: reads N (x) + 2N (weight, bias; cached across rows), writes N; about 8N
FLOPs. Memory bound, so one pass with the row held in registers: the mean and the centred variance
are both computed from the registers (two reductions, one read), in fp32.

Tiling as in rms_norm: [BLOCK_ROWS, BLOCK_COLS] tiles of ~2K elements, N = 1152 -> one row of 2048
lanes per program; strided rows through `_layout.collapse_rows`.
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
    check_eps,
    check_row_input,
    check_same_device,
    check_tensor,
    check_triton_device,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._layout import cdiv, collapse_rows, row_starts, row_tile_config, stride_multiple


@triton.jit
def _layer_norm_kernel(
    x_ptr, weight_ptr, bias_ptr, out_ptr,
    num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride, eps,
    STRIDE_MULTIPLE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    col_mask = cols < num_cols
    mask = (rows < num_rows)[:, None] & col_mask[None, :]
    x_offsets = row_starts(rows, x_outer_stride, x_inner_size, x_inner_stride, STRIDE_MULTIPLE)[:, None] + cols[None, :]
    x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / num_cols
    centred = tl.where(mask, x - mean[:, None], 0.0)
    inv_std = tl.rsqrt(tl.sum(centred * centred, axis=1) / num_cols + eps)
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = centred * inv_std[:, None] * weight[None, :] + bias[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * num_cols + cols[None, :]
    tl.store(out_ptr + out_offsets, y.to(out_ptr.dtype.element_ty), mask=mask)


def layer_norm(x, weight, bias, eps=1e-6, *, backend="triton"):
    """LayerNorm over the last dim, in fp32 (biased variance, as torch).

    x [..., N] (fp16/bf16/fp32, any strides with a contiguous last dim); weight, bias [N] (any float
    dtype). Returns a new contiguous tensor in x's dtype.
    """
    check_backend(backend)
    num_cols = check_row_input("x", x)
    check_tensor("weight", weight, shape=(num_cols,), layout="[N]", unit_stride_last=True)
    check_tensor("bias", bias, shape=(num_cols,), layout="[N]", unit_stride_last=True)
    check_same_device({"x": x, "weight": weight, "bias": bias})
    check_eps(eps)
    record_call("layer_norm", backend)
    if backend == "reference":
        return reference.layer_norm(x, weight, bias, eps)
    check_triton_device("x", x)
    return _layer_norm_launch(x, weight, bias, float(eps))


@kernel_op("layer_norm", fake=lambda x, weight, bias, eps: x.new_empty(x.shape))
def _layer_norm_launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    out = new_output(x.shape, x.dtype, x.device)
    rows = collapse_rows("x", x)
    num_cols = x.shape[-1]
    if rows.num_rows > 0:
        cfg = row_tile_config(num_cols)
        grid = (cdiv(rows.num_rows, cfg["BLOCK_ROWS"]),)
        multiple = stride_multiple(x.element_size(), (rows.outer_stride, rows.inner_stride))
        _layer_norm_kernel[grid](x, weight, bias, out, rows.num_rows, num_cols, *rows[1:], eps, STRIDE_MULTIPLE=multiple, **cfg)
    return out


@register_compile_configs
def _compile_configs():
    cfg = row_tile_config(1152)
    warps = cfg.pop("num_warps")
    return configs_per_dtype(
        FLOAT_DTYPES,
        op="layer_norm",
        shape="N=1152 (ViT hidden)",
        kernel=_layer_norm_kernel,
        signature={
            "x_ptr": "*T",
            "weight_ptr": "*T",
            "bias_ptr": "*T",
            "out_ptr": "*T",
            "num_rows": "i32",
            "num_cols": "i32",
            "x_outer_stride": "i64",
            "x_inner_size": "i32",
            "x_inner_stride": "i32",
            "eps": "fp32",
        },  # fmt: skip
        constexprs=cfg,
        num_warps=warps,
        num_stages=1,
        aligned=("x_ptr", "weight_ptr", "bias_ptr", "out_ptr", "num_cols", "x_outer_stride"),
    )
