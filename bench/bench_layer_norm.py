"""layer_norm at the ViT's shapes: 256 tokens an image, hidden 1152; plain (the first block's first
norm) and with the residual add folded in (every other norm of the tower)."""

import torch
import torch.nn.functional as F

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, register_case, register_op
from bench.peers import compiled, direct, liger_layer_norm, optional

HIDDEN = 1152


def _small(dtype, device, gen):
    return (randn((4, 7, 300), dtype, device, gen, shift=1.0), randn((300,), dtype, device, gen),
            randn((300,), dtype, device, gen)), {}  # fmt: skip


register_op("layer_norm", ak.layer_norm, reference.layer_norm, _small)

for images in (1, 32):
    rows = images * 256

    def build(device, gen, rows=rows):
        x = randn((rows, HIDDEN), torch.bfloat16, device, gen)
        return (x, randn((HIDDEN,), torch.bfloat16, device, gen), randn((HIDDEN,), torch.bfloat16, device, gen)), {}

    register_case(
        Case(
            op="layer_norm",
            name=f"ViT {images} image(s) rows={rows} N={HIDDEN}",
            dtype=torch.bfloat16,
            build=build,
            bytes=2 * rows * HIDDEN * 2 + 2 * HIDDEN * 2,
            flops=8 * rows * HIDDEN,
            peers={
                "torch.compile": compiled(reference.layer_norm),
                "F.layer_norm": direct(lambda x, w, b, eps=1e-6: F.layer_norm(x, (x.shape[-1],), w, b, eps)),
                "liger": optional(
                    "liger_kernel.ops.layer_norm", "LigerLayerNormFunction", lambda f: liger_layer_norm(f.apply)
                ),  # fmt: skip
            },
        )
    )


def _add_then_layer_norm(x, weight, bias, eps=1e-6, residual=None):
    """The unfused pair a model runs without the residual form: the add, then F.layer_norm."""
    h = x + residual
    return F.layer_norm(h, (h.shape[-1],), weight, bias, eps), h


for images in (1, 32):
    rows = images * 256

    def build_with_residual(device, gen, rows=rows):
        x, residual = (randn((rows, HIDDEN), torch.bfloat16, device, gen) for _ in range(2))
        return (x, randn((HIDDEN,), torch.bfloat16, device, gen), randn((HIDDEN,), torch.bfloat16, device, gen)), {
            "residual": residual
        }

    register_case(
        Case(
            op="layer_norm",
            name=f"ViT {images} image(s) rows={rows} N={HIDDEN} +residual",
            dtype=torch.bfloat16,
            build=build_with_residual,
            bytes=4 * rows * HIDDEN * 2 + 2 * HIDDEN * 2,  # x, residual in; normed, h out; weight, bias
            flops=9 * rows * HIDDEN,
            peers={"torch.compile": compiled(reference.layer_norm), "add + F.layer_norm": direct(_add_then_layer_norm)},
        )
    )
