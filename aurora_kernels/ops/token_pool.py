"""token_pool: k x k average or max pooling of a row-major grid of visual tokens, in the tokens'
own [B, H*W, C] layout (256 -> 64 tokens for the model: a 16 x 16 grid, k = 2).

Replaces view/permute + avg_pool2d/max_pool2d + permute (two transposes the kernel does not need).

Work for the model (B images, 16 x 16 -> 8 x 8, C = 1536, bf16): reads B*256*C*2 bytes, writes a
quarter of that, one add (or max) per input element: purely memory bound, so the kernel reads each
input once in its own layout and writes each output once. A program owns a [BLOCK_T output tokens,
BLOCK_C channels] tile of one image and accumulates its k*k window taps (a compile-time loop) in
fp32; channels are the contiguous axis, so every tap is a run of 16-byte vector loads. The grid is
(output-token blocks, channel blocks, batch).
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
    check_divisible,
    check_int,
    check_tensor,
    check_triton_device,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops._layout import cdiv, pow2_at_least, warps_for

POOL_MODES = ("avg", "max")


@triton.jit
def _token_pool_kernel(
    x_ptr, out_ptr, out_width, num_out_tokens, channels, x_batch_stride, x_token_stride, grid_width,
    KERNEL_SIZE: tl.constexpr, IS_MAX: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    out_tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    batch = tl.program_id(2).to(tl.int64)
    mask = (out_tokens < num_out_tokens)[:, None] & (cols < channels)[None, :]
    # top-left input token of each output token's window
    corner = (out_tokens // out_width) * KERNEL_SIZE * grid_width + (out_tokens % out_width) * KERNEL_SIZE
    x_image = x_ptr + batch * x_batch_stride
    if IS_MAX:
        acc = tl.full((BLOCK_T, BLOCK_C), float("-inf"), tl.float32)
    else:
        acc = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
    for i in tl.static_range(KERNEL_SIZE):
        for j in tl.static_range(KERNEL_SIZE):
            tokens = (corner + i * grid_width + j).to(tl.int64)
            tap = tl.load(x_image + tokens[:, None] * x_token_stride + cols[None, :], mask=mask, other=0.0)
            if IS_MAX:
                acc = tl.maximum(acc, tap.to(tl.float32), propagate_nan=tl.PropagateNan.ALL)
            else:
                acc += tap.to(tl.float32)
    if not IS_MAX:
        acc = acc / (KERNEL_SIZE * KERNEL_SIZE)
    out_offsets = (batch * num_out_tokens + out_tokens)[:, None] * channels + cols[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _launch_config(num_out_tokens: int, channels: int) -> dict:
    block_c = min(pow2_at_least(channels, 16), 512)
    block_t = max(1, min(pow2_at_least(num_out_tokens), 2048 // block_c))
    return {"BLOCK_T": block_t, "BLOCK_C": block_c, "num_warps": warps_for(block_t * block_c)}


def _check_args(x, grid_size, kernel_size, mode):
    check_tensor("x", x, ndim=3, layout="[B, H*W, C]", unit_stride_last=True)
    if not isinstance(grid_size, (tuple, list)) or len(grid_size) != 2:
        raise TypeError(f"grid_size: expected a pair (H, W), got {grid_size!r}")
    height, width = grid_size
    check_int("grid_size[0]", height, minimum=1)
    check_int("grid_size[1]", width, minimum=1)
    if height * width != x.shape[1]:
        raise ValueError(f"grid_size: expected (H, W) with H*W = {x.shape[1]}, the tokens of x (dim 1), got "
                         f"({height}, {width}): {height * width} tokens")  # fmt: skip
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
    check_triton_device("x", x)
    return _token_pool_launch(x, list(grid_size), kernel_size, mode)


def _pooled_shape(x, grid_size, kernel_size):
    return (x.shape[0], (grid_size[0] // kernel_size) * (grid_size[1] // kernel_size), x.shape[2])


@kernel_op("token_pool", fake=lambda x, grid_size, kernel_size, mode: x.new_empty(_pooled_shape(x, grid_size, kernel_size)))
def _token_pool_launch(x: torch.Tensor, grid_size: list[int], kernel_size: int, mode: str) -> torch.Tensor:
    batch, _, channels = x.shape
    height, width = grid_size
    out_width = width // kernel_size
    num_out_tokens = (height // kernel_size) * out_width
    out = new_output((batch, num_out_tokens, channels), x.dtype, x.device)
    if out.numel() > 0:
        cfg = _launch_config(num_out_tokens, channels)
        grid = (cdiv(num_out_tokens, cfg["BLOCK_T"]), cdiv(channels, cfg["BLOCK_C"]), batch)
        _token_pool_kernel[grid](
            x, out, out_width, num_out_tokens, channels, x.stride(0), x.stride(1), width,
            KERNEL_SIZE=kernel_size, IS_MAX=mode == "max", **cfg,
        )  # fmt: skip
    return out


@register_compile_configs
def _compile_configs():
    cfg = _launch_config(64, 1536)
    warps = cfg.pop("num_warps")
    return [
        config
        for mode in POOL_MODES
        for config in configs_per_dtype(
            FLOAT_DTYPES,
            op="token_pool",
            shape=f"16x16 -> 8x8 C=1536 {mode}",
            kernel=_token_pool_kernel,
            signature={
                "x_ptr": "*T",
                "out_ptr": "*T",
                "out_width": "i32",
                "num_out_tokens": "i32",
                "channels": "i32",
                "x_batch_stride": "i64",
                "x_token_stride": "i64",
                "grid_width": "i32",
            },  # fmt: skip
            constexprs={"KERNEL_SIZE": 2, "IS_MAX": mode == "max", **cfg},
            num_warps=warps,
            num_stages=1,
            aligned=("x_ptr", "out_ptr", "channels", "x_batch_stride", "x_token_stride", "grid_width"),
        )
    ]
