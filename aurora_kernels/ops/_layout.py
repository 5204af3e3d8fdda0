"""Strided row layouts shared by the row-wise kernels (norms, activations, rotary).

A kernel that walks "rows" (every index of the leading dims) must find each row's start without a
copy of a strided input. `collapse_rows` merges adjacent leading dims whose strides chain
(stride[i] == stride[i+1] * size[i+1]) and describes the rows as at most two strided groups:
row r starts at (r // inner_size) * outer_stride + (r % inner_size) * inner_stride. That covers
contiguous tensors, row-padded buffers and per-head slices of a fused projection such as
q = qkv[..., :Hq*D].view(B, L, Hq, D) (groups (B*L, stride of L) and (Hq, D)).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl


class RowLayout(NamedTuple):
    num_rows: int
    outer_stride: int
    inner_size: int
    inner_stride: int


def collapse_rows(name: str, t: torch.Tensor, trailing: int = 1) -> RowLayout:
    """Describe the rows of t (all dims but the last `trailing`) as at most two strided groups."""
    sizes, strides = list(t.shape[: t.ndim - trailing]), list(t.stride()[: t.ndim - trailing])
    groups: list[list[int]] = []  # [size, stride] of merged dims, outermost first
    for size, stride in zip(sizes, strides):
        if size == 1:
            continue  # a dim of size 1 never moves the pointer
        if groups and groups[-1][1] == stride * size:
            groups[-1] = [groups[-1][0] * size, stride]
        else:
            groups.append([size, stride])
    num_rows = 1
    for size in sizes:
        num_rows *= size
    if not groups:
        return RowLayout(num_rows, 0, 1, 0)
    if len(groups) == 1:
        return RowLayout(num_rows, groups[0][1], 1, 0)
    if len(groups) == 2:
        return RowLayout(num_rows, groups[0][1], groups[1][0], groups[1][1])
    raise ValueError(
        f"{name}: expected leading dims that collapse into at most two strided groups (as a contiguous "
        f"tensor or a slice of one does), got shape {list(t.shape)} with strides {list(t.stride())}"
    )


def pow2_at_least(n: int, minimum: int = 1) -> int:
    return max(triton.next_power_of_2(max(n, 1)), minimum)


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


@triton.jit
def row_starts(rows, outer_stride, inner_size, inner_stride):
    """Element offsets (int64) of the starts of `rows` in a RowLayout."""
    rows = rows.to(tl.int64)
    return (rows // inner_size) * outer_stride + (rows % inner_size) * inner_stride
