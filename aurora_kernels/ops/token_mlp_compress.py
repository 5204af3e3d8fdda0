"""token_mlp_compress: the paper's token compressor, an MLP over the token axis:
out[b] = w2 @ act(w1 @ x[b] + b1[:, None]) + b2[:, None] (256 -> 64 visual tokens).

Replaces transpose + Linear + activation + Linear + transpose; the fused kernel keeps the
[D, C] hidden tile on chip.
"""

from __future__ import annotations

from aurora_kernels._dispatch import no_kernel_yet, record_call
from aurora_kernels._validation import (
    check_backend,
    check_choice,
    check_same_device,
    check_same_dtype,
    check_tensor,
)
from aurora_kernels.ops import reference

ACTIVATIONS = ("gelu_tanh", "gelu", "silu")


def _check_args(x, w1, b1, w2, b2, activation):
    check_tensor("x", x, ndim=3, layout="[B, N, C]", unit_stride_last=True)
    num_tokens = x.shape[1]
    check_tensor("w1", w1, ndim=2, layout="[D, N]")
    hidden = w1.shape[0]
    check_tensor("w1", w1, shape=(hidden, num_tokens), layout="[D, N]", unit_stride_last=True)
    check_tensor("b1", b1, shape=(hidden,), layout="[D]")
    check_tensor("w2", w2, ndim=2, layout="[M, D]")
    check_tensor("w2", w2, shape=(w2.shape[0], hidden), layout="[M, D]", unit_stride_last=True)
    check_tensor("b2", b2, shape=(w2.shape[0],), layout="[M]")
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        check_same_dtype(name, t, "x", x)
    check_same_device({"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2})
    check_choice("activation", activation, ACTIVATIONS)


def token_mlp_compress(x, w1, b1, w2, b2, activation="gelu_tanh", *, backend="triton"):
    """MLP over the token axis: x [B, N, C], w1 [D, N], b1 [D], w2 [M, D], b2 [M] -> [B, M, C].

    All in one dtype (fp16/bf16/fp32); activation "gelu_tanh", "gelu" (erf) or "silu".
    """
    check_backend(backend)
    _check_args(x, w1, b1, w2, b2, activation)
    record_call("token_mlp_compress", backend)
    if backend == "reference":
        return reference.token_mlp_compress(x, w1, b1, w2, b2, activation)
    no_kernel_yet("token_mlp_compress", 5)
