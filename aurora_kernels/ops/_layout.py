"""Strided row layouts shared by the row-wise kernels (norms, activations, rotary).

A kernel that walks "rows" (every index of the leading dims) must find each row's start without a
copy of a strided input. `collapse_rows` merges adjacent leading dims whose strides chain
(stride[i] == stride[i+1] * size[i+1]) and describes the rows as at most two strided groups:
row r starts at (r // inner_size) * outer_stride + (r % inner_size) * inner_stride. That covers
contiguous tensors, row-padded buffers and per-head slices of a fused projection such as
q = qkv[..., :Hq*D].view(B, L, Hq, D) (groups (B*L, stride of L) and (Hq, D)). Any other layout
(two leading dims transposed over a third) is copied once, contiguous, before the launch.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl


class RowLayout(NamedTuple):
    num_rows: int
    outer_stride: int
    inner_size: int
    inner_stride: int


def row_layout_signature(name: str) -> dict:
    """The compile signature of a RowLayout passed as `<name>_outer_stride, <name>_inner_size,
    <name>_inner_stride` (the outer stride int64: rows far apart overflow int32)."""
    return {f"{name}_outer_stride": "i64", f"{name}_inner_size": "i32", f"{name}_inner_stride": "i32"}


def collapse_rows(t: torch.Tensor, trailing: int = 1) -> tuple[torch.Tensor, RowLayout]:
    """The rows of t (all dims but the last `trailing`) as at most two strided groups: (t, its
    layout). Where they need more (two leading dims transposed over a third, say), (a contiguous
    copy of t, the copy's layout): every stride is taken, as torch's ops take it, at the cost of one
    copy in that case alone (flash-attn's maybe_contiguous does the same)."""
    if t.is_contiguous() and t.numel() > 0:  # the common case, in a fraction of the host time
        row_elements = math.prod(t.shape[t.ndim - trailing :])
        num_rows = t.numel() // row_elements
        return t, RowLayout(num_rows, row_elements if num_rows > 1 else 0, 1, 0)
    layout = collapse_strided_rows(t, trailing)
    if layout is None:
        t = t.contiguous()
        layout = collapse_strided_rows(t, trailing)
    return t, layout


def collapse_strided_rows(t: torch.Tensor, trailing: int = 1) -> RowLayout | None:
    """`collapse_rows`'s layout for any strides (None where the rows need more than two groups):
    merge the leading dims whose strides chain."""
    sizes, strides = list(t.shape[: t.ndim - trailing]), list(t.stride()[: t.ndim - trailing])
    num_rows = math.prod(sizes)
    if t.numel() == 0:
        return RowLayout(num_rows, 0, 1, 0)  # no element to find: any layout describes it
    groups: list[list[int]] = []  # [size, stride] of merged dims, outermost first
    for size, stride in zip(sizes, strides):
        if size == 1:
            continue  # a dim of size 1 never moves the pointer
        if groups and groups[-1][1] == stride * size:
            groups[-1] = [groups[-1][0] * size, stride]
        else:
            groups.append([size, stride])
    if not groups:
        return RowLayout(num_rows, 0, 1, 0)
    if len(groups) == 1:
        return RowLayout(num_rows, groups[0][1], 1, 0)
    if len(groups) == 2:
        return RowLayout(num_rows, groups[0][1], groups[1][0], groups[1][1])
    return None


H100_SMS = 132  # what grid rules assume for CPU tensors (interpreter), so tests see a GPU's choices


def sm_count(device: torch.device) -> int:
    """The device's streaming multiprocessors (H100_SMS for a CPU tensor), for launchers that size their
    grid to fill the GPU."""
    if device.type != "cuda":
        return H100_SMS
    return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


# Host-side arithmetic of the launchers in plain Python: triton.cdiv and triton.next_power_of_2 are
# constexpr functions that cost microseconds a call on the host, and a decode step makes hundreds.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2_at_least(n: int, minimum: int = 1) -> int:
    return max(1 << (max(n, 1) - 1).bit_length(), minimum)


def row_tile_config(num_cols: int) -> dict:
    """[BLOCK_ROWS, BLOCK_COLS] tile for a kernel that holds whole rows in registers: BLOCK_COLS is the
    row rounded up to a power of two, BLOCK_ROWS packs short rows so a program moves ~2K elements."""
    block_cols = pow2_at_least(num_cols, 16)
    block_rows = max(1, min(16, 2048 // block_cols))
    return {"BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols, "num_warps": warps_for(block_rows * block_cols)}


def elementwise_tile_config(num_cols: int) -> dict:
    """[BLOCK_ROWS, BLOCK_COLS] tile for an elementwise kernel over rows: up to 1024 columns a tile
    (a 2-D grid covers longer rows), short rows packed, ~2K elements a program."""
    block_cols = min(pow2_at_least(num_cols, 16), 1024)
    block_rows = max(1, min(64, 2048 // block_cols))
    return {"BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols, "num_warps": warps_for(block_rows * block_cols)}


def warps_for(elements: int) -> int:
    """Warps for a tile of `elements` values: about 8-16 values per thread, 1..16 warps."""
    return min(16, max(1, elements // 256))


def stride_multiple(element_size: int, strides) -> int:
    """The elements in 16 bytes when every stride is a multiple of that, else 1: the STRIDE_MULTIPLE
    constexpr, with which a kernel tells the compiler its row offsets are 16-byte multiples. Triton
    alone learns only whether each int argument divides by 16; a row stride of 72 (a ViT head) or a
    RowLayout's // and % would leave every load 2 bytes wide."""
    vector = 16 // element_size
    return vector if all(s % vector == 0 for s in strides) else 1


@triton.jit
def row_starts(rows, outer_stride, inner_size, inner_stride, STRIDE_MULTIPLE: tl.constexpr):
    """Element offsets (int64) of the starts of `rows` in a RowLayout whose strides are multiples of
    STRIDE_MULTIPLE."""
    rows = rows.to(tl.int64)
    return tl.multiple_of((rows // inner_size) * outer_stride + (rows % inner_size) * inner_stride, STRIDE_MULTIPLE)


@triton.jit
def residual_stream_rows(x_ptr, residual_ptr, residual_out_ptr, num_rows, num_cols,
                         x_outer_stride, x_inner_size, x_inner_stride, res_outer_stride, res_inner_size, res_inner_stride,
                         HAS_RESIDUAL: tl.constexpr, STRIDE_MULTIPLE: tl.constexpr,
                         BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):  # fmt: skip
    """A row norm's input for this program's BLOCK_ROWS rows: h = x (+ residual) in fp32, and with a
    residual h written to residual_out (contiguous, the residual stream's next value). Returns (h,
    the tile's mask, the contiguous output offsets)."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    mask = (rows < num_rows)[:, None] & (cols < num_cols)[None, :]
    x_offsets = row_starts(rows, x_outer_stride, x_inner_size, x_inner_stride, STRIDE_MULTIPLE)[:, None] + cols[None, :]
    h = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
    out_offsets = rows.to(tl.int64)[:, None] * num_cols + cols[None, :]
    if HAS_RESIDUAL:
        res_offsets = (
            row_starts(rows, res_outer_stride, res_inner_size, res_inner_stride, STRIDE_MULTIPLE)[:, None] + cols[None, :]
        )
        h += tl.load(residual_ptr + res_offsets, mask=mask, other=0.0).to(tl.float32)
        tl.store(residual_out_ptr + out_offsets, h.to(residual_out_ptr.dtype.element_ty), mask=mask)
    return h, mask, out_offsets


# Elementwise kernels over rows share one signature:
#   kernel(x_ptr, out_ptr, num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride,
#          STRIDE_MULTIPLE: constexpr, BLOCK_ROWS: constexpr, BLOCK_COLS: constexpr)
# where num_cols is the output row's width; the two helpers below launch one and list its configs.
ELEMENTWISE_SIGNATURE = {"x_ptr": "*T", "out_ptr": "*T", "num_rows": "i32", "num_cols": "i32", **row_layout_signature("x")}


@triton.jit
def elementwise_tile(num_rows, num_cols, x_outer_stride, x_inner_size, x_inner_stride,
                     STRIDE_MULTIPLE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):  # fmt: skip
    """This program's tile of an elementwise kernel: (x offsets, contiguous output offsets, mask)."""
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows < num_rows)[:, None] & (cols < num_cols)[None, :]
    x_offsets = row_starts(rows, x_outer_stride, x_inner_size, x_inner_stride, STRIDE_MULTIPLE)[:, None] + cols[None, :]
    out_offsets = rows.to(tl.int64)[:, None] * num_cols + cols[None, :]
    return x_offsets, out_offsets, mask


# A contiguous input of an op whose output element i reads input element i alone is walked as rows
# of FLAT_COLS elements where its size allows: every tile full but the last. Over its own rows, a
# ViT MLP row of 4304 fills 5 tiles of 1024 at 84%, and masked lanes move no bytes.
FLAT_COLS = 1024


def launch_elementwise_rows(kernel, x, out, num_cols: int, same_positions: bool = False) -> None:
    """kernel over x's rows, out contiguous with num_cols columns a row. same_positions: out has x's
    shape and element i of out depends on element i of x alone (the FLAT_COLS walk is then allowed)."""
    if same_positions and x.is_contiguous() and x.numel() % FLAT_COLS == 0:
        x, num_cols = x.view(-1, FLAT_COLS), FLAT_COLS
    x, rows = collapse_rows(x)
    if rows.num_rows == 0:
        return
    cfg = elementwise_tile_config(num_cols)
    grid = (cdiv(rows.num_rows, cfg["BLOCK_ROWS"]), cdiv(num_cols, cfg["BLOCK_COLS"]))
    multiple = stride_multiple(x.element_size(), (rows.outer_stride, rows.inner_stride))
    kernel[grid](x, out, rows.num_rows, num_cols, *rows[1:], STRIDE_MULTIPLE=multiple, **cfg)


def elementwise_compile_configs(op: str, kernel, num_cols: int, shape: str) -> list:
    from aurora_kernels._compile import configs_per_dtype
    from aurora_kernels._validation import FLOAT_DTYPES

    cfg = elementwise_tile_config(num_cols)
    warps = cfg.pop("num_warps")
    return configs_per_dtype(
        FLOAT_DTYPES, op=op, shape=shape, kernel=kernel, signature=ELEMENTWISE_SIGNATURE, constexprs=cfg,
        num_warps=warps, num_stages=1, aligned=("x_ptr", "out_ptr", "num_cols", "x_outer_stride"),
    )  # fmt: skip


def residual_norm_compile_configs(op: str, kernel, num_cols: int, shape: str, has_bias: bool) -> list:
    """The configs of a row norm with an optional residual add (rms_norm, layer_norm: the kernel
    takes x, residual, weight[, bias], out, residual_out, the rows' two layouts and eps), with
    and without the residual, every dtype, at rows of num_cols."""
    from aurora_kernels._compile import configs_per_dtype
    from aurora_kernels._validation import FLOAT_DTYPES

    cfg = row_tile_config(num_cols)
    warps = cfg.pop("num_warps")
    pointers = ("x_ptr", "residual_ptr", "weight_ptr", *(("bias_ptr",) if has_bias else ()), "out_ptr", "residual_out_ptr")
    signature = {**{name: "*T" for name in pointers}, "num_rows": "i32", "num_cols": "i32", **row_layout_signature("x"),
                 **row_layout_signature("res"), "eps": "fp32"}  # fmt: skip
    return [
        config
        for has_residual in (False, True)
        for config in configs_per_dtype(
            FLOAT_DTYPES,
            op=op,
            shape=f"{shape} residual={has_residual}",
            kernel=kernel,
            signature=signature,
            constexprs={"HAS_RESIDUAL": has_residual, **cfg},
            num_warps=warps,
            num_stages=1,
            aligned=(*pointers, "num_cols", "x_outer_stride", "res_outer_stride"),
        )  # fmt: skip
    ]
