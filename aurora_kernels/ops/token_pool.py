"""token_pool: k x k average or max pooling of a row-major grid of visual tokens, in the tokens'
own [B, H*W, C] layout (256 -> 64 tokens for the model: a 16 x 16 grid, k = 2).

Replaces view/permute + avg_pool2d/max_pool2d + permute (two transposes the kernel does not need).
"""

from __future__ import annotations

from aurora_kernels._dispatch import no_kernel_yet, record_call
from aurora_kernels._validation import check_backend, check_choice, check_divisible, check_int, check_tensor
from aurora_kernels.ops import reference

POOL_MODES = ("avg", "max")


def _check_args(x, grid_size, kernel_size, mode):
    check_tensor("x", x, ndim=3, layout="[B, H*W, C]", unit_stride_last=True)
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise TypeError(f"grid_size: expected a pair (H, W), got {grid_size!r}")
    height, width = grid_size
    check_int("grid_size[0]", height, minimum=1)
    check_int("grid_size[1]", width, minimum=1)
    if height * width != x.shape[1]:
        raise ValueError(f"x: expected H*W = {height}*{width} = {height * width} tokens (dim 1), got {x.shape[1]}")
    check_int("kernel_size", kernel_size, minimum=1)
    check_divisible("grid_size[0]", height, kernel_size, "kernel_size")
    check_divisible("grid_size[1]", width, kernel_size, "kernel_size")
    check_choice("mode", mode, POOL_MODES)


def token_pool(x, grid_size, kernel_size=2, mode="avg", *, backend="triton"):
    """k x k pooling of a row-major token grid.

    x [B, H*W, C] (fp16/bf16/fp32, contiguous last dim, any token/batch strides), grid_size (H, W)
    with H and W divisible by kernel_size; mode "avg" or "max" (max propagates NaN, as torch).
    Returns [B, (H//k)*(W//k), C], the pooled windows in row-major order.
    """
    check_backend(backend)
    _check_args(x, grid_size, kernel_size, mode)
    record_call("token_pool", backend)
    if backend == "reference":
        return reference.token_pool(x, tuple(grid_size), kernel_size, mode)
    no_kernel_yet("token_pool", 5)
