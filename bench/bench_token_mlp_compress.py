"""token_mlp_compress at the model's shapes: 256 tokens -> 64, hidden D 256 or 1024, width 1536."""

import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn
from bench.harness import Case, Peer, register_case, register_op
from bench.peers import compiled, direct, token_mlp_cublas_chain

TOKENS, OUT_TOKENS, CHANNELS = 256, 64, 1536


def _inputs(batch, tokens, hidden, out_tokens, channels, dtype, device, gen):
    x = randn((batch, tokens, channels), dtype, device, gen)
    w1 = randn((hidden, tokens), dtype, device, gen, scale=tokens**-0.5)
    w2 = randn((out_tokens, hidden), dtype, device, gen, scale=hidden**-0.5)
    return (x, w1, randn((hidden,), dtype, device, gen), w2, randn((out_tokens,), dtype, device, gen)), {}


register_op("token_mlp_compress", ak.token_mlp_compress, reference.token_mlp_compress,
            lambda dtype, device, gen: _inputs(2, 64, 48, 16, 40, dtype, device, gen))  # fmt: skip

for batch in (1, 16, 64):
    for hidden in (256, 1024):
        register_case(
            Case(
                op="token_mlp_compress",
                name=f"B={batch} N={TOKENS} D={hidden} M={OUT_TOKENS} C={CHANNELS}",
                dtype=torch.bfloat16,
                build=lambda device, gen, batch=batch, hidden=hidden: _inputs(
                    batch, TOKENS, hidden, OUT_TOKENS, CHANNELS, torch.bfloat16, device, gen
                ),
                bytes=batch * (TOKENS + OUT_TOKENS) * CHANNELS * 2 + (hidden * TOKENS + OUT_TOKENS * hidden) * 2,
                flops=batch * (2 * TOKENS * hidden * CHANNELS + 2 * hidden * OUT_TOKENS * CHANNELS),
                # torch.compile of the reference compiles its fp32 math; of the chain, bf16 GEMMs
                peers={
                    "torch.compile": compiled(reference.token_mlp_compress),
                    "cuBLAS chain (bf16)": direct(token_mlp_cublas_chain),
                    "torch.compile (bf16 chain)": lambda: Peer(torch.compile(token_mlp_cublas_chain, dynamic=False)),
                },  # fmt: skip
            )
        )
