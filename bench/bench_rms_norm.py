"""rms_norm at the LLM's decode (rows = batch) and prefill (rows = tokens) shapes, hidden 1536."""

import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, register_case, register_op
from bench.peers import compiled, liger_fused_add_rms_norm, optional

HIDDEN = 1536


def _small(dtype, device, gen):
    return (randn((5, 3, 100), dtype, device, gen), randn((100,), dtype, device, gen)), {
        "residual": randn((5, 3, 100), dtype, device, gen)
    }


register_op("rms_norm", ak.rms_norm, reference.rms_norm, _small)

for rows, phase in ((1, "decode"), (32, "decode"), (256, "decode"), (8192, "prefill"), (65536, "prefill")):

    def build(device, gen, rows=rows):
        x, residual = (randn((rows, HIDDEN), torch.bfloat16, device, gen) for _ in range(2))
        return (x, randn((HIDDEN,), torch.bfloat16, device, gen)), {"residual": residual}

    register_case(
        Case(
            op="rms_norm",
            name=f"{phase} rows={rows} N={HIDDEN} +residual",
            dtype=torch.bfloat16,
            build=build,
            bytes=4 * rows * HIDDEN * 2 + HIDDEN * 2,  # x, residual in; normed, h out; weight
            flops=5 * rows * HIDDEN,
            peers={
                "torch.compile": compiled(reference.rms_norm),
                "liger": optional(
                    "liger_kernel.ops.fused_add_rms_norm",
                    "LigerFusedAddRMSNormFunction",
                    lambda f: liger_fused_add_rms_norm(f.apply),
                ),  # fmt: skip
            },
        )
    )
