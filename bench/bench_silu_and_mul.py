"""silu_and_mul at the LLM MLP's shape: [rows, 2 * 8960] -> [rows, 8960]."""

import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, register_case, register_op
from bench.peers import compiled, optional

INTERMEDIATE = 8960


def _small(dtype, device, gen):
    return (randn((3, 5, 2 * 300), dtype, device, gen),), {}


register_op("silu_and_mul", ak.silu_and_mul, reference.silu_and_mul, _small)

for rows, phase in ((1, "decode"), (256, "decode"), (8192, "prefill"), (32768, "prefill")):
    register_case(
        Case(
            op="silu_and_mul",
            name=f"{phase} rows={rows} I={INTERMEDIATE}",
            dtype=torch.bfloat16,
            build=lambda device, gen, rows=rows: ((randn((rows, 2 * INTERMEDIATE), torch.bfloat16, device, gen),), {}),
            bytes=3 * rows * INTERMEDIATE * 2,
            flops=5 * rows * INTERMEDIATE,
            peers={
                "torch.compile": compiled(reference.silu_and_mul),
                # liger's SwiGLU on the fused [..., 2I] gate-up tensor: no chunk copies, our contract
                "liger": optional("liger_kernel.ops.swiglu", "LigerFusedGateUpSiLUMulFunction", lambda f: f.apply),
            },
        )
    )
