"""token_pool at the model's shape: 16 x 16 grid of 1536-wide tokens -> 8 x 8, k = 2."""

import torch
import torch.nn.functional as F

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, register_case, register_op
from bench.peers import compiled, direct

GRID, CHANNELS = (16, 16), 1536


def avg_pool2d_on_permuted(x, grid_size, kernel_size=2, mode="avg"):
    """What a user writes without the kernel: to an image layout, pool, and back."""
    batch, _, channels = x.shape
    image = x.view(batch, *grid_size, channels).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(image, kernel_size) if mode == "avg" else F.max_pool2d(image, kernel_size)
    return pooled.flatten(2).transpose(1, 2).contiguous()


register_op("token_pool", ak.token_pool, reference.token_pool,
            lambda dtype, device, gen: ((randn((2, 36, 40), dtype, device, gen), (6, 6), 3), {"mode": "max"}))  # fmt: skip

for batch in (1, 16, 64):
    tokens = GRID[0] * GRID[1]
    register_case(
        Case(
            op="token_pool",
            name=f"B={batch} grid=16x16 C={CHANNELS} k=2 avg",
            dtype=torch.bfloat16,
            build=lambda device, gen, batch=batch: ((randn((batch, tokens, CHANNELS), torch.bfloat16, device, gen), GRID), {}),
            bytes=batch * (tokens + tokens // 4) * CHANNELS * 2,
            flops=batch * tokens * CHANNELS,
            peers={"torch.compile": compiled(reference.token_pool), "permute+avg_pool2d": direct(avg_pool2d_on_permuted)},
        )
    )
