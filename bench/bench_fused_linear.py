"""The LLM's decode projections, each with the op that feeds it, at B = 1, 4, 8, 32 rows:
rms_norm_linear (qkv, gate_up, the LM head), linear (o_proj), silu_and_mul_linear (down_proj); and
the MLP's pair under RunOptions.activation_in_gate_up, rms_norm_linear_silu_and_mul (gate_up with
SwiGLU in its epilogue) and linear (down_proj, plain): that pair against gate_up's and down_proj's
rows above decides the option (the model's "triton-fused-activation-in-gate-up" rows too).

What decides whether the model should use them (RunOptions.fuse_decode_projections) is the row
"ours unfused: ... + cuBLAS": the model's default path, our norm or activation kernel then torch's
matmul, two launches. The peers are the same chain in plain torch ops, eager and torch.compile'd,
and the op on the tiles it does not take at that batch: at B = 4 (the GEMV's rows) "ours, wgmma
tiles" (the swapped ones, 16 rows); at B = 8 and 32 (the swapped wgmma tiles on an H100: the rows in
the MMA's N) "ours, 64-row wgmma tiles" and "ours, mma tiles", the tiles it takes before sm_90.
RunOptions.fuse_batched_projections is decided by the rows at B > 1.
"""

import torch
import torch.nn.functional as F

import aurora_kernels as ak
from aurora_kernels.ops import fused_linear, reference
from aurora_kernels.ops.fused_linear import GEMV_MAX_ROWS, MODEL_PROJECTIONS, OP_NAMES
from aurora_kernels.testing import randn
from bench.harness import Case, Peer, register_case, register_op

BATCHES = (1, 4, 8, 32)


def _small_linear(dtype, device, gen):
    return (randn((3, 1, 100), dtype, device, gen), randn((40, 100), dtype, device, gen), randn((40,), dtype, device, gen)), {}


def _small_rms_norm_linear(dtype, device, gen):
    x, residual = (randn((3, 1, 100), dtype, device, gen) for _ in range(2))
    return (x, randn((100,), dtype, device, gen, shift=1.0), randn((40, 100), dtype, device, gen)), {"residual": residual}


def _small_silu_and_mul_linear(dtype, device, gen):
    return (randn((3, 1, 200), dtype, device, gen), randn((40, 100), dtype, device, gen)), {}


register_op("linear", ak.linear, reference.linear, _small_linear)
register_op("rms_norm_linear", ak.rms_norm_linear, reference.rms_norm_linear, _small_rms_norm_linear)
register_op("silu_and_mul_linear", ak.silu_and_mul_linear, reference.silu_and_mul_linear, _small_silu_and_mul_linear)
register_op("rms_norm_linear_silu_and_mul", ak.rms_norm_linear_silu_and_mul, reference.rms_norm_linear_silu_and_mul,
            _small_rms_norm_linear)  # fmt: skip


# The unfused chains: ours (the model's default decode path: our norm or activation kernel, then
# cuBLAS; for the epilogue, then our activation kernel) and plain torch ops, eager and compiled.
# o_proj and the plain down_proj have no prologue: their peer is F.linear.
def _ours_unfused(prologue, epilogue="none"):
    def rms_norm_then_linear(x, norm_weight, weight, bias=None, eps=1e-6, residual=None):
        normed, h = ak.rms_norm(x, norm_weight, eps, residual)
        return F.linear(normed, weight, bias), h

    def silu_and_mul_then_linear(x, weight, bias=None):
        return F.linear(ak.silu_and_mul(x), weight, bias)

    def rms_norm_then_linear_then_silu_and_mul(*args, **kwargs):
        y, h = rms_norm_then_linear(*args, **kwargs)
        return ak.silu_and_mul(y), h

    if epilogue == "silu_and_mul":
        return rms_norm_then_linear_then_silu_and_mul
    return {"rms_norm": rms_norm_then_linear, "silu_and_mul": silu_and_mul_then_linear}[prologue]


def _ours_two_kernels(x, norm_weight, weight, bias=None, eps=1e-6, residual=None):
    """rms_norm_linear_silu_and_mul as two of our kernels: the fused projection, then the activation."""
    y, h = ak.rms_norm_linear(x, norm_weight, weight, bias, eps, residual)
    return ak.silu_and_mul(y), h


def _torch_chain(prologue, epilogue="none"):
    def rms_norm_then_linear(x, norm_weight, weight, bias=None, eps=1e-6, residual=None):
        h = x + residual
        return F.linear(F.rms_norm(h, (h.shape[-1],), norm_weight, eps), weight, bias), h

    def silu_and_mul_then_linear(x, weight, bias=None):
        gate, up = x.chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, weight, bias)

    def rms_norm_then_linear_then_silu_and_mul(*args, **kwargs):
        y, h = rms_norm_then_linear(*args, **kwargs)
        gate, up = y.chunk(2, dim=-1)
        return F.silu(gate) * up, h

    if epilogue == "silu_and_mul":
        return rms_norm_then_linear_then_silu_and_mul
    return {"rms_norm": rms_norm_then_linear, "silu_and_mul": silu_and_mul_then_linear, "none": F.linear}[prologue]


def _ours_on(prologue, kind):
    """The op on the path `kind` (a key of fused_linear._GPU_CONFIGS) where the launcher would pick
    another: "wgmma_swap_ab" (the sm_90 tiles) where it takes the GEMV's rows, "wgmma" (64 rows in
    the MMA's M) and "dot_half" (sm_80's mma.sync, the weight by pointers) where it takes the
    swapped wgmma tiles."""
    index = fused_linear.PROLOGUES.index(prologue)

    def on_kind(x, *args, residual=None):
        if prologue == "rms_norm":
            norm_weight, weight, bias = args
            return tuple(fused_linear.launch(x, weight, bias, norm_weight, residual, 1e-6, index, kind=kind))
        weight, bias = args
        return fused_linear.launch(x, weight, bias, None, None, 0.0, index, kind=kind)[0]

    return on_kind


def _peers(prologue, epilogue, batch) -> dict:
    chain = _torch_chain(prologue, epilogue)
    peers = {"torch.compile": lambda: Peer(torch.compile(chain, dynamic=False))}
    if epilogue != "none":  # its rivals: the two kernels it replaces (its own tiles: the sweep)
        peers["ours, two kernels: rms_norm_linear + silu_and_mul"] = lambda: Peer(_ours_two_kernels)
    elif 1 < batch <= GEMV_MAX_ROWS:
        peers["ours, wgmma tiles"] = lambda: Peer(_ours_on(prologue, "wgmma_swap_ab"))
    elif batch > GEMV_MAX_ROWS:
        peers["ours, 64-row wgmma tiles"] = lambda: Peer(_ours_on(prologue, "wgmma"))
        peers["ours, mma tiles"] = lambda: Peer(_ours_on(prologue, "dot_half"))
    if prologue == "none":
        return {"F.linear (cuBLAS)": lambda: Peer(F.linear), **peers}
    unfused = f"ours unfused: {prologue} + cuBLAS" + (f" + {epilogue}" if epilogue != "none" else "")
    return {
        unfused: lambda: Peer(_ours_unfused(prologue, epilogue)),
        "torch ops": lambda: Peer(chain),
        **peers,
    }


def _inputs(prologue, batch, in_features, out_features, has_bias):
    def build(device, gen):
        dtype = torch.bfloat16
        width = 2 * in_features if prologue == "silu_and_mul" else in_features
        x = randn((batch, 1, width), dtype, device, gen)
        weight = randn((out_features, in_features), dtype, device, gen, scale=in_features**-0.5)
        bias = randn((out_features,), dtype, device, gen) if has_bias else None
        if prologue == "rms_norm":
            norm_weight = randn((in_features,), dtype, device, gen, scale=0.1, shift=1.0)
            return (x, norm_weight, weight, bias), {"residual": randn((batch, 1, in_features), dtype, device, gen)}
        return (x, weight, bias), {}

    return build


def _bytes(prologue, epilogue, batch, in_features, out_features, has_bias):
    """Weight + bias, the input rows (gate and up; x and residual in, h out) and the output rows (half
    the weight's under the silu_and_mul epilogue)."""
    activation_rows = {"none": 1, "rms_norm": 3, "silu_and_mul": 2}[prologue]
    out_columns = out_features // 2 if epilogue == "silu_and_mul" else out_features
    return 2 * (out_features * in_features + out_features * has_bias + batch * (activation_rows * in_features + out_columns))


# B=1 first: the batch of issue #9's target, timed first when a run's op budget is short
for batch in BATCHES:
    for where, prologue, epilogue, in_features, out_features, _, has_bias in MODEL_PROJECTIONS:
        register_case(
            Case(
                op=OP_NAMES[prologue, epilogue],
                name=f"decode B={batch} {where} K={in_features} N={out_features}",
                dtype=torch.bfloat16,
                build=_inputs(prologue, batch, in_features, out_features, has_bias),
                bytes=_bytes(prologue, epilogue, batch, in_features, out_features, has_bias),
                flops=2 * batch * in_features * out_features,
                peers=_peers(prologue, epilogue, batch),
            )
        )
