"""attention / attention_varlen: softmax attention forward for the ViT (256 tokens, D 72), the fusion
cross-attention (ragged text queries over 256 visual keys, D 128) and LLM prefill (causal, GQA 6,
D 128, ragged prompts). Layout as flash-attn: dense [B, L, H, D], packed [T, H, D] + cu_seqlens.
"""

from __future__ import annotations

import torch

from aurora_kernels._dispatch import no_kernel_yet, record_call
from aurora_kernels._validation import (
    check_backend,
    check_cu_seqlens,
    check_same_device,
    check_same_dtype,
    check_softmax_scale,
    check_tensor,
)
from aurora_kernels.ops import reference

MAX_HEAD_DIM = 256


def check_qkv(q, k, v, packed: bool) -> None:
    """q [.., Lq, Hq, D], k and v [.., Lk, Hkv, D] with Hq % Hkv == 0, one dtype and device."""
    prefix, ndim = ("", 3) if packed else ("B, ", 4)
    tokens_q, tokens_k = ("Tq", "Tk") if packed else ("Lq", "Lk")
    check_tensor("q", q, ndim=ndim, layout=f"[{prefix}{tokens_q}, Hq, D]", unit_stride_last=True)
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected a head dim D in [1, {MAX_HEAD_DIM}], got {head_dim}")
    batch = () if packed else (q.shape[0],)
    check_tensor("k", k, shape=(*batch, None, None, head_dim), layout=f"[{prefix}{tokens_k}, Hkv, D]", unit_stride_last=True)
    check_tensor("v", v, shape=tuple(k.shape), layout=f"[{prefix}{tokens_k}, Hkv, D] (the shape of k)", unit_stride_last=True)
    check_same_dtype("k", k, "q", q)
    check_same_dtype("v", v, "q", q)
    heads_q, heads_kv = q.shape[-2], k.shape[-2]
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(f"k: expected a number of KV heads that divides the {heads_q} query heads (GQA), got {heads_kv}")
    check_same_device({"q": q, "k": k, "v": v})


def attention(q, k, v, causal=False, softmax_scale=None, *, backend="triton"):
    """softmax(q k^T * scale) v over dense batches.

    q [B, Lq, Hq, D], k and v [B, Lk, Hkv, D] (fp16/bf16/fp32, contiguous last dim, any other strides;
    Hq % Hkv == 0 for GQA/MQA). softmax_scale defaults to 1/sqrt(D). causal with Lq != Lk is aligned
    bottom-right (query i sees keys j <= i + Lk - Lq); a query that sees no key gives 0.
    Returns [B, Lq, Hq, D].
    """
    check_backend(backend)
    check_qkv(q, k, v, packed=False)
    check_softmax_scale(softmax_scale)
    record_call("attention", backend)
    if backend == "reference":
        return reference.attention(q, k, v, bool(causal), softmax_scale)
    no_kernel_yet("attention", 6)


def attention_varlen(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, softmax_scale=None,
    *, backend="triton",
):  # fmt: skip
    """Attention over packed ragged sequences.

    q [Tq, Hq, D], k and v [Tk, Hkv, D]; cu_seqlens_q, cu_seqlens_k int32 [B + 1] offsets (sequence b is
    rows cu_seqlens[b]:cu_seqlens[b+1]; empty sequences allowed); max_seqlen_q/k at least the longest
    sequence. Each sequence attends only to its own keys; causal aligned bottom-right per sequence.
    Returns [Tq, Hq, D]; a query row that sees no key is 0.
    """
    check_backend(backend)
    check_qkv(q, k, v, packed=True)
    check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.device, q.shape[0], max_seqlen_q, "max_seqlen_q")
    check_tensor("cu_seqlens_k", cu_seqlens_k, shape=tuple(cu_seqlens_q.shape), layout="(the shape of cu_seqlens_q)",
                 dtypes=(torch.int32,))  # fmt: skip
    check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q.device, k.shape[0], max_seqlen_k, "max_seqlen_k")
    check_softmax_scale(softmax_scale)
    record_call("attention_varlen", backend)
    if backend == "reference":
        return reference.attention_varlen(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, bool(causal), softmax_scale
        )
    no_kernel_yet("attention_varlen", 6)
