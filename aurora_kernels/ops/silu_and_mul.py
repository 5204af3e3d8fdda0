"""silu_and_mul: x [..., 2I] = concat(gate, up) -> silu(gate) * up, [..., I] (the SwiGLU MLP's
activation, I = 8960 in the LLM: not a power of two).

Work per row: reads 2I, writes I, ~5I FLOPs: memory bound. One pass, fp32 math, 2-D grid of
[BLOCK_ROWS, BLOCK_COLS] tiles (1024 columns a tile: 9 column blocks cover I = 8960 with one
partial block), gate and up read from the same row at column c and c + I.
"""

from __future__ import annotations

import triton
import triton.language as tl

from aurora_kernels._compile import configs_per_dtype, register_compile_configs
from aurora_kernels._dispatch import new_output, record_call
from aurora_kernels._validation import FLOAT_DTYPES, check_backend, check_row_input, check_triton_device
from aurora_kernels.ops import reference
from aurora_kernels.ops._layout import collapse_rows, elementwise_tile_config, row_starts


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows < num_rows)[:, None] & (cols < num_cols)[None, :]
    gate_ptrs = x_ptr + row_starts(rows, x_outer_stride, x_inner_size, x_inner_stride)[:, None] + cols[None, :]
    gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptrs + num_cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * num_cols + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x, *, backend="triton"):
    """x [..., 2I] (fp16/bf16/fp32, contiguous last dim, any other strides) -> silu(x[..., :I]) * x[..., I:]."""
    check_backend(backend)
    width = check_row_input("x", x, max_cols=2**31 - 1)
    if width % 2:
        raise ValueError(f"x: expected an even last dim [..., 2I] (gate and up halves), got {width}")
    record_call("silu_and_mul", backend)
    if backend == "reference":
        return reference.silu_and_mul(x)
    check_triton_device("x", x)
    num_cols = width // 2
    out = new_output((*x.shape[:-1], num_cols), x.dtype, x.device)
    rows = collapse_rows("x", x)
    if rows.num_rows > 0:
        cfg = elementwise_tile_config(num_cols)
        grid = (triton.cdiv(rows.num_rows, cfg["BLOCK_ROWS"]), triton.cdiv(num_cols, cfg["BLOCK_COLS"]))
        _silu_and_mul_kernel[grid](x, out, rows.num_rows, num_cols, *rows[1:], **cfg)
    return out


@register_compile_configs
def _compile_configs():
    cfg = elementwise_tile_config(8960)
    warps = cfg.pop("num_warps")
    return configs_per_dtype(
        FLOAT_DTYPES,
        op="silu_and_mul",
        shape="I=8960 (LLM MLP)",
        kernel=_silu_and_mul_kernel,
        signature={"x_ptr": "*T", "out_ptr": "*T", "num_rows": "i32", "num_cols": "i32",
                   "x_outer_stride": "i64", "x_inner_size": "i32", "x_inner_stride": "i32"},  # fmt: skip
        constexprs=cfg,
        num_warps=warps,
        num_stages=1,
        aligned=("x_ptr", "out_ptr", "num_cols", "x_outer_stride"),
    )
