"""gelu_tanh at the ViT MLP's shape: [tokens, 4304]."""

import torch
import torch.nn.functional as F

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, register_case, register_op
from bench.peers import compiled, direct

WIDTH = 4304


def _small(dtype, device, gen):
    return (randn((3, 5, 300), dtype, device, gen, scale=3.0),), {}


register_op("gelu_tanh", ak.gelu_tanh, reference.gelu_tanh, _small)

for images in (1, 32):
    rows = images * 256
    register_case(
        Case(
            op="gelu_tanh",
            name=f"ViT {images} image(s) rows={rows} N={WIDTH}",
            dtype=torch.bfloat16,
            build=lambda device, gen, rows=rows: ((randn((rows, WIDTH), torch.bfloat16, device, gen),), {}),
            bytes=2 * rows * WIDTH * 2,
            flops=10 * rows * WIDTH,
            peers={
                "torch.compile": compiled(reference.gelu_tanh),
                "F.gelu(tanh)": direct(lambda x: F.gelu(x, approximate="tanh")),
            },
        )
    )
