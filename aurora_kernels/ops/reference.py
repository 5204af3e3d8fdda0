"""Eager PyTorch references: what "parity" means for every public op.

Each function has the name and the arguments of the public op in `aurora_kernels` (less `backend`)
and is written to be checked by eye, not to be fast. Arithmetic runs in float32 for half-precision
inputs (the kernels accumulate in float32 too) and in the input's own precision for float32 and
float64 inputs; results come back in the input dtype. The parity tests call these on float64 copies
of the kernels' inputs, so there they compute the exact answer up to float64 rounding.

These functions do not validate their arguments; the public ops do, for both backends.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "token_pool",
    "token_mlp_compress",
    "attention",
    "attention_varlen",
    "decode_attention",
    "rms_norm",
    "layer_norm",
    "apply_rotary",
    "silu_and_mul",
    "gelu_tanh",
    "linear",
    "rms_norm_linear",
    "silu_and_mul_linear",
    "rms_norm_linear_silu_and_mul",
]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _up(x: torch.Tensor) -> torch.Tensor:
    return x.to(_compute_dtype(x.dtype))


# ----------------------------------------------------------------------------- token compression


def token_pool(x, grid_size, kernel_size=2, mode="avg"):
    """x [B, H*W, C] (row-major grid) -> [B, (H//k)*(W//k), C], the k x k avg or max of each window."""
    batch, _, channels = x.shape
    height, width = grid_size
    k = kernel_size
    windows = _up(x).reshape(batch, height // k, k, width // k, k, channels)
    if mode == "avg":
        pooled = windows.mean(dim=(2, 4))
    else:
        pooled = windows.amax(dim=(2, 4))  # amax propagates NaN, like torch's max pooling
    return pooled.reshape(batch, (height // k) * (width // k), channels).to(x.dtype)


def _activation(h, activation):
    if activation == "gelu_tanh":
        return gelu_tanh(h)
    if activation == "gelu":
        return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    return h * torch.sigmoid(h)  # "silu"


def token_mlp_compress(x, w1, b1, w2, b2, activation="gelu_tanh"):
    """out[b] = w2 @ act(w1 @ x[b] + b1[:, None]) + b2[:, None]: an MLP over the token axis.

    x [B, N, C], w1 [D, N], b1 [D], w2 [M, D], b2 [M] -> [B, M, C].
    """
    hidden = torch.matmul(_up(w1), _up(x)) + _up(b1)[:, None]  # [B, D, C]
    hidden = _activation(hidden, activation)
    out = torch.matmul(_up(w2), hidden) + _up(b2)[:, None]  # [B, M, C]
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- attention


def attention(q, k, v, causal=False, softmax_scale=None):
    """Softmax attention, q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D] -> [B, Lq, Hq, D].

    GQA: query head h reads KV head h // (Hq // Hkv). Causal masks are aligned bottom-right: query i
    sees key j when j <= i + Lk - Lq. A query row that sees no key gives 0 (as flash-attn does); a
    NaN in what a row sees makes the row NaN (as torch does).
    """
    batch, len_q, heads_q, head_dim = q.shape
    len_k, heads_kv = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
    group = heads_q // heads_kv
    qh = _up(q).transpose(1, 2)  # [B, Hq, Lq, D]
    kh = _up(k).transpose(1, 2).repeat_interleave(group, dim=1)  # [B, Hq, Lk, D]
    vh = _up(v).transpose(1, 2).repeat_interleave(group, dim=1)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale  # [B, Hq, Lq, Lk]
    visible = torch.ones(len_q, len_k, dtype=torch.bool, device=q.device)
    if causal:
        visible = torch.tril(visible, diagonal=len_k - len_q)
    scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    # a row that sees no key (a softmax of all -inf) gives 0; a NaN or inf among the scores a row sees
    # (from q, k or softmax_scale) leaves it NaN, as in torch's softmax and SDPA
    probs = torch.where(visible.any(-1, keepdim=True), probs, 0.0)
    out = torch.matmul(probs, vh)  # [B, Hq, Lq, D]
    return out.transpose(1, 2).to(q.dtype)


def attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False, softmax_scale=None):
    """Packed attention: q [Tq, Hq, D], k/v [Tk, Hkv, D]; sequence b is rows cu_seqlens[b]:cu_seqlens[b+1].

    Each sequence is attended on its own with `attention`; empty sequences have no rows.
    """
    out = torch.empty_like(q)
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[b], starts_q[b + 1], starts_k[b], starts_k[b + 1]
        if q1 == q0:
            continue
        if k1 == k0:
            out[q0:q1] = 0
            continue
        seq_out = attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal, softmax_scale)
        out[q0:q1] = seq_out[0]
    return out


def _cache_positions(b, length, block_table, block_size):
    """Rows of the flattened paged cache that hold tokens 0..length-1 of sequence b."""
    positions = torch.arange(length, device=block_table.device)
    blocks = block_table[b, positions // block_size].long()
    return blocks * block_size + positions % block_size


def decode_attention(
    q,
    k_cache,
    v_cache,
    cache_seqlens,
    k=None,
    v=None,
    block_table=None,
    softmax_scale=None,
    num_kv_splits=None,
    rotary_cos=None,
    rotary_sin=None,
    *,
    out=None,
    key_mask=None,
):
    """One query token per sequence over its KV cache: q [B, 1, Hq, D] -> [B, 1, Hq, D].

    k_cache/v_cache are [B, S_max, Hkv, D] (contiguous per sequence) or, with block_table [B, max_blocks],
    paged [num_blocks, block_size, Hkv, D] where token p of sequence b lives in block
    block_table[b, p // block_size] at row p % block_size. Sequence b attends to its first
    cache_seqlens[b] tokens; if k, v [B, 1, Hkv, D] are given they are first written into the cache at
    position cache_seqlens[b] (in place) and attended to as well. With rotary_cos, rotary_sin
    [max_positions, D] (and k, v), q and k are first rotated by apply_rotary at row cache_seqlens[b].
    num_kv_splits only changes how the kernel divides the work, so the reference ignores it.
    With out (q's shape and dtype), the result is copied into it and out returned. With key_mask
    (bool [B, S_max], a contiguous cache), cached token j of sequence b is attended only where
    key_mask[b, j]; the appended one always.
    """
    if rotary_cos is not None:
        positions = cache_seqlens.long()[:, None]  # [B, 1]: the new token's position
        q, k = apply_rotary(q, k, rotary_cos[positions], rotary_sin[positions])
    batch = q.shape[0]
    block_size = k_cache.shape[1]
    result = torch.zeros_like(q)
    for b in range(batch):
        length = int(cache_seqlens[b])
        # the positions attended, where a key mask keeps some (else the first `length`)
        kept = None if key_mask is None else key_mask[b, :length].nonzero()[:, 0]
        if k is not None:
            if block_table is None:
                k_cache[b, length] = k[b, 0]
                v_cache[b, length] = v[b, 0]
            else:
                row = int(_cache_positions(b, length + 1, block_table, block_size)[-1])
                k_cache[row // block_size, row % block_size] = k[b, 0]
                v_cache[row // block_size, row % block_size] = v[b, 0]
            kept = None if kept is None else torch.cat([kept, kept.new_full((1,), length)])
            length += 1
        if (length if kept is None else kept.numel()) == 0:
            continue
        if kept is not None:
            keys, values = k_cache[b, kept], v_cache[b, kept]
        elif block_table is None:
            keys, values = k_cache[b, :length], v_cache[b, :length]
        else:
            rows = _cache_positions(b, length, block_table, block_size)
            keys = k_cache.flatten(0, 1)[rows]
            values = v_cache.flatten(0, 1)[rows]
        result[b] = attention(q[b : b + 1], keys[None], values[None], False, softmax_scale)[0]
    return result if out is None else out.copy_(result)


# ----------------------------------------------------------------------------- norms and elementwise


def rms_norm(x, weight, eps=1e-6, residual=None):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim.

    With residual: h = x + residual, returns (rms_norm(h), h), h rounded to the input dtype and its
    norm computed from the unrounded sum.
    """
    h = _up(x) if residual is None else _up(x) + _up(residual)
    normed = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps) * _up(weight)
    if residual is None:
        return normed.to(x.dtype)
    return normed.to(x.dtype), h.to(x.dtype)


def layer_norm(x, weight, bias, eps=1e-6, residual=None):
    """(x - mean) * rsqrt(var + eps) * weight + bias over the last dim (biased variance).

    With residual: h = x + residual, returns (layer_norm(h), h), h rounded to the input dtype and its
    norm computed from the unrounded sum.
    """
    h = _up(x) if residual is None else _up(x) + _up(residual)
    mean = h.mean(dim=-1, keepdim=True)
    var = (h - mean).pow(2).mean(dim=-1, keepdim=True)
    normed = ((h - mean) * torch.rsqrt(var + eps) * _up(weight) + _up(bias)).to(x.dtype)
    return normed if residual is None else (normed, h.to(x.dtype))


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q, k, cos, sin, *, positions=None, v=None, k_cache=None, v_cache=None, cache_slots=None):
    """Rotary embedding, rotate-half convention: x * cos + rotate_half(x) * sin.

    q [..., L, Hq, D], k [..., L, Hkv, D]; cos, sin [..., L, D] broadcast over the heads, or with
    positions [..., L] tables [max_positions, D] indexed by them; tables of width D/2 serve both
    halves of a head. Returns (q_rot, k_rot) as new tensors. With v, k_cache, v_cache [rows, Hkv, D]
    and cache_slots [tokens]: the rotated k and v also go into the caches' rows cache_slots (in place),
    except those of the tokens whose slot is -1 (padding).
    """
    if positions is not None:
        cos, sin = cos[positions.long()], sin[positions.long()]
    if 2 * cos.shape[-1] == q.shape[-1]:
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    cos_h, sin_h = _up(cos).unsqueeze(-2), _up(sin).unsqueeze(-2)
    q_rot = (_up(q) * cos_h + _rotate_half(_up(q)) * sin_h).to(q.dtype)
    k_rot = (_up(k) * cos_h + _rotate_half(_up(k)) * sin_h).to(k.dtype)
    if v is not None:
        heads_kv, head_dim = k.shape[-2], k.shape[-1]
        written = cache_slots >= 0
        k_cache.index_copy_(0, cache_slots[written], k_rot.reshape(-1, heads_kv, head_dim)[written])
        v_cache.index_copy_(0, cache_slots[written], v.reshape(-1, heads_kv, head_dim)[written])
    return q_rot, k_rot


def silu_and_mul(x):
    """x [..., 2I] = concat(gate, up) -> silu(gate) * up, [..., I]."""
    gate, up = _up(x).chunk(2, dim=-1)
    return (gate * torch.sigmoid(gate) * up).to(x.dtype)


def gelu_tanh(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the ViT's activation."""
    h = _up(x)
    inner = math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3))
    return (0.5 * h * (1.0 + torch.tanh(inner))).to(x.dtype)


def linear(x, weight, bias=None, residual=None):
    """x [..., K] @ weight.T + bias (F.linear) + residual -> [..., N], rounded once."""
    out = _up(x) @ _up(weight).T
    if bias is not None:
        out = out + _up(bias)
    if residual is not None:
        out = out + _up(residual)
    return out.to(x.dtype)


def rms_norm_linear(x, norm_weight, weight, bias=None, eps=1e-6, residual=None):
    """linear(rms_norm(x, norm_weight, eps, residual), weight, bias); with residual, (y, x + residual)."""
    if residual is None:
        return linear(rms_norm(x, norm_weight, eps), weight, bias)
    normed, h = rms_norm(x, norm_weight, eps, residual)
    return linear(normed, weight, bias), h


def silu_and_mul_linear(x, weight, bias=None, residual=None):
    """linear(silu_and_mul(x), weight, bias, residual): x [..., 2I], weight [N, I] -> [..., N]."""
    return linear(silu_and_mul(x), weight, bias, residual)


def rms_norm_linear_silu_and_mul(x, norm_weight, weight, bias=None, eps=1e-6, residual=None):
    """silu_and_mul(rms_norm_linear(...)): weight [2I, K] -> [..., I]; with residual, (y, x + residual)."""
    if residual is None:
        return silu_and_mul(rms_norm_linear(x, norm_weight, weight, bias, eps))
    y, h = rms_norm_linear(x, norm_weight, weight, bias, eps, residual)
    return silu_and_mul(y), h
