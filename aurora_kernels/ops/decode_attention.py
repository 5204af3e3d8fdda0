"""decode_attention: one new query token per sequence over its KV cache (contiguous or paged),
optionally appending the new token's K/V in the same call. The op every decode step runs 28 times.

What is checked: shapes, dtypes, devices and strides always; on CPU tensors (or under
`value_checks("always")`) also that 0 <= cache_seqlens[b] (+1 with an append) fits the cache and that
the block_table entries a sequence uses are valid block indices. On CUDA by default those value
checks would cost a host sync per call, so they are the caller's contract, as in flash-attn.
"""

from __future__ import annotations

import torch

from aurora_kernels._dispatch import no_kernel_yet, record_call
from aurora_kernels._validation import (
    check_backend,
    check_block_table,
    check_cache_seqlens,
    check_int,
    check_same_device,
    check_same_dtype,
    check_softmax_scale,
    check_tensor,
)
from aurora_kernels.ops import reference
from aurora_kernels.ops.attention import MAX_HEAD_DIM

PAGED_BLOCK_SIZES = (16, 32, 64, 128, 256)


def _check_args(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits):
    check_tensor("q", q, ndim=4, layout="[B, 1, Hq, D]", unit_stride_last=True)
    batch, _, heads_q, head_dim = q.shape
    check_tensor("q", q, shape=(batch, 1, heads_q, head_dim), layout="[B, 1, Hq, D]")
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected a head dim D in [1, {MAX_HEAD_DIM}], got {head_dim}")
    paged = block_table is not None
    layout = "[num_blocks, block_size, Hkv, D]" if paged else "[B, S_max, Hkv, D]"
    check_tensor("k_cache", k_cache, shape=(None if paged else batch, None, None, head_dim), layout=layout, unit_stride_last=True)
    check_tensor("v_cache", v_cache, shape=tuple(k_cache.shape), layout=f"{layout} (the shape of k_cache)", unit_stride_last=True)
    check_same_dtype("k_cache", k_cache, "q", q)
    check_same_dtype("v_cache", v_cache, "q", q)
    heads_kv = k_cache.shape[2]
    if heads_kv < 1 or heads_q % heads_kv != 0:
        raise ValueError(f"k_cache: expected a number of KV heads that divides the {heads_q} query heads (GQA), got {heads_kv}")
    if (k is None) != (v is None):
        raise ValueError("k, v: expected both (to append one token per sequence) or neither")
    if k is not None:
        check_tensor("k", k, shape=(batch, 1, heads_kv, head_dim), layout="[B, 1, Hkv, D]", unit_stride_last=True)
        check_tensor("v", v, shape=(batch, 1, heads_kv, head_dim), layout="[B, 1, Hkv, D]", unit_stride_last=True)
        check_same_dtype("k", k, "q", q)
        check_same_dtype("v", v, "q", q)
    check_same_device({"q": q, "k_cache": k_cache, "v_cache": v_cache, "cache_seqlens": cache_seqlens,
                       "k": k, "v": v, "block_table": block_table})  # fmt: skip
    appended = 0 if k is None else 1
    if paged:
        block_size = k_cache.shape[1]
        if block_size not in PAGED_BLOCK_SIZES:
            raise ValueError(f"k_cache: expected a paged block size in {PAGED_BLOCK_SIZES} (dim 1), got {block_size}")
        check_tensor("cache_seqlens", cache_seqlens, shape=(batch,), layout="[B]", dtypes=(torch.int32,), device=q.device)
        check_block_table("block_table", block_table, batch, q.device, k_cache.shape[0], block_size, cache_seqlens, appended)
        capacity = block_table.shape[1] * block_size
    else:
        capacity = k_cache.shape[1]
    check_cache_seqlens("cache_seqlens", cache_seqlens, batch, q.device, capacity, appended)
    check_softmax_scale(softmax_scale)
    if num_kv_splits is not None:
        check_int("num_kv_splits", num_kv_splits, minimum=1)


def decode_attention(
    q, k_cache, v_cache, cache_seqlens, k=None, v=None, block_table=None, softmax_scale=None, num_kv_splits=None,
    *, backend="triton",
):  # fmt: skip
    """Attention of one query token per sequence over its KV cache.

    q [B, 1, Hq, D]; k_cache, v_cache [B, S_max, Hkv, D], or paged [num_blocks, block_size, Hkv, D]
    with block_table int32 [B, max_blocks]; cache_seqlens int32 [B]: tokens already cached. With
    k, v [B, 1, Hkv, D], those are written into the cache at position cache_seqlens[b] (in place) and
    attended to. Returns [B, 1, Hq, D]; a sequence with nothing to attend to gives 0.
    num_kv_splits: how many programs split one sequence's cache (None: chosen from the shapes).
    """
    check_backend(backend)
    _check_args(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale, num_kv_splits)
    record_call("decode_attention", backend)
    if backend == "reference":
        return reference.decode_attention(q, k_cache, v_cache, cache_seqlens, k, v, block_table, softmax_scale)
    no_kernel_yet("decode_attention", 7)
