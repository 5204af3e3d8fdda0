"""Peer implementations for the benchmarks, each loaded lazily; a missing one says why."""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from bench.harness import Peer


def optional(module: str, attr: str, adapt=None):
    """Peer factory: `module.attr` wrapped by adapt(fn) where installed, else missing with the reason."""

    def load() -> Peer:
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            return Peer(None, f"{module} not importable: {type(exc).__name__}")
        return Peer(adapt(fn) if adapt else fn)

    return load


def sdpa_dense(q, k, v, causal=False, softmax_scale=None):
    """SDPA in the [B, L, H, D] layout with GQA (the transposes are part of what a user pays). SDPA's
    is_causal is aligned top-left; when Lq != Lk a bottom-right mask gives this package's semantics."""
    len_q, len_k = q.shape[1], k.shape[1]
    mask = None
    if causal and len_q != len_k:
        mask = torch.ones(len_q, len_k, dtype=torch.bool, device=q.device).tril(len_k - len_q)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        is_causal=causal and mask is None, scale=softmax_scale, enable_gqa=True,
    )  # fmt: skip
    return out.transpose(1, 2)


def liger_fused_add_rms_norm(fn):
    """liger's residual-add + RMSNorm in one kernel, returning (normed, h) as ours does: the strongest
    liger peer for the LLM's norms, which all take a residual."""
    return lambda x, weight, eps=1e-6, residual=None: fn(x, residual, weight, eps)


def liger_layer_norm(fn):
    return lambda x, weight, bias, eps=1e-6: fn(x, weight, bias, eps)


def liger_rotary(fn):
    """liger's rope takes and returns [B, H, L, D] q/k (and [B, L, D] tables): transposed views in and
    out, so it answers in our [B, L, H, D] layout at no copy."""

    def run(q, k, cos, sin):
        q_rot, k_rot = fn(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q_rot.transpose(1, 2), k_rot.transpose(1, 2)

    return run


def compiled(reference_fn):
    def load() -> Peer:
        return Peer(torch.compile(reference_fn, dynamic=False))

    return load


def direct(fn):
    return lambda: Peer(fn)


def sdpa_forced(backend: str, fn=sdpa_dense, prepare=None):
    """Peer factory: an SDPA call (`fn`, sdpa_dense by default) with one SDPA backend forced
    ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"), each a row of its own: SDPA's own
    pick is not always the fastest (on Hopper cuDNN's is the one to beat, and flash pads head dim 72
    to 96). A backend that cannot run a case (flash takes no mask) raises, and the row says why."""

    def load() -> Peer:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        chosen = getattr(SDPBackend, backend)

        def run(*args, **kwargs):
            with sdpa_kernel(chosen):
                return fn(*args, **kwargs)

        return Peer(run, prepare=prepare)

    return load


SDPA_BACKENDS = {"SDPA cuDNN": "CUDNN_ATTENTION", "SDPA flash": "FLASH_ATTENTION", "SDPA efficient": "EFFICIENT_ATTENTION"}


def token_mlp_cublas_chain(x, w1, b1, w2, b2, activation="gelu_tanh"):
    """The compressor as a user writes it in bf16: transpose, GEMM, activation, GEMM, transpose back
    (the GEMMs cuBLAS's, reading the transposed operands in place; the result a [B, M, C] view)."""
    if activation != "gelu_tanh":
        raise ValueError(f"activation: the chain peer has gelu_tanh only, got {activation!r}")
    hidden = F.gelu(F.linear(x.transpose(1, 2), w1, b1), approximate="tanh")  # [B, C, D]
    return F.linear(hidden, w2, b2).transpose(1, 2)
