"""vLLM plugin: our RMSNorm, SiLU-and-mul, rotary embedding and decode attention inside vLLM (0.33).

Installed with this package, it is found through its `vllm.general_plugins` entry point
(pyproject.toml), which vLLM calls in every process it starts: `register()` puts

- `RMSNorm`, `SiluAndMul`, `RotaryEmbedding`: out-of-tree replacements of vLLM's layers of those
  names (`CustomOp.register_oot`), so every such layer a model builds runs `rms_norm`,
  `silu_and_mul` and `apply_rotary`, whatever vLLM's custom-op settings (each op is a torch custom
  op, so vLLM's torch.compile keeps it one node);
- the attention backend "AURORA": vLLM's Triton backend (its KV-cache layout, metadata and cache
  writes) whose decode-only batches run `decode_attention` on vLLM's paged cache, with no copy; a
  batch with any prefill rows runs vLLM's own Triton kernel. Chosen with
  `LLM(..., attention_config={"backend": "AURORA"})` (or `--attention-backend AURORA`).

A layer whose configuration our op does not cover (an RMSNorm without weight or with a variance
width override; GPT-J-style or partial rotary; attention with ALiBi, a sliding window, soft-capped
logits, sinks, a quantized KV cache, or not a decoder's) keeps vLLM's implementation, with a warning
that names it. Set VLLM_PLUGINS to leave the plugin out.

The functions below are the adapters between vLLM's calling conventions and our ops. They import
nothing from vLLM, so the tests check them on any machine; `register()` and the classes it defines
(`_vllm_layers.py`) import vLLM.
"""

from __future__ import annotations

import torch

from aurora_kernels.ops.decode_attention import decode_attention
from aurora_kernels.ops.rotary import apply_rotary

ATTENTION_BACKEND_NAME = "AURORA"


def rotary_embedding(positions, query, key, cos_sin_cache, head_size: int):
    """vLLM's RotaryEmbedding call, neox (rotate-half) style with rotary_dim == head_size: positions
    [T] (or any shape of T entries), query [T, Hq * D] or [T, Hq, D], key likewise or None;
    cos_sin_cache [max_positions, D]: each row the D/2 cosines then the D/2 sines. Returns the
    rotated (query, key) as new tensors of the input shapes (vLLM's kernel rotates in place and
    returns the same pair; its callers use what is returned). One launch, as vLLM's own kernel."""
    positions = positions.reshape(-1)
    tokens = positions.shape[0]
    cos, sin = cos_sin_cache.chunk(2, dim=-1)  # half-width tables, views: the kernel reads each token's row
    q = query.view(tokens, -1, head_size)
    k = key.view(tokens, -1, head_size) if key is not None else q.new_empty((tokens, 0, head_size))
    q_rot, k_rot = apply_rotary(q, k, cos, sin, positions=positions)
    return q_rot.view(query.shape), (k_rot.view(key.shape) if key is not None else None)


def paged_kv_cache_views(kv_cache: torch.Tensor, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """vLLM's paged KV cache of one layer, [num_blocks, Hkv, block_size, 2 * D] (each token's key
    then its value, as its Triton and flash-attn backends lay it out) -> the key and value caches as
    decode_attention reads them, [num_blocks, block_size, Hkv, D] views of the same memory."""
    if kv_cache.ndim != 4 or kv_cache.shape[-1] != 2 * head_size:
        raise ValueError(f"kv_cache: expected [num_blocks, Hkv, block_size, 2 * {head_size}], got {tuple(kv_cache.shape)}")
    key_cache, value_cache = kv_cache.transpose(1, 2).split(head_size, dim=-1)
    return key_cache, value_cache


def paged_decode_attention(query, kv_cache, block_table, seq_lens, softmax_scale: float, out=None):
    """One query token per sequence over vLLM's paged cache, the new token's K/V already written
    (vLLM writes them before attention): query [B, Hq, D]; kv_cache as paged_kv_cache_views takes it;
    block_table int32 [B, max_blocks]; seq_lens int32 [B], the new token included. Returns [B, Hq, D]
    (into `out` [B, Hq, D] when given: written by the kernels where it is contiguous, as vLLM's is)."""
    key_cache, value_cache = paged_kv_cache_views(kv_cache, query.shape[-1])
    # vLLM's out (rows that prefix its contiguous buffer) is written by the kernels; a strided one by a copy
    into = out[:, None] if out is not None and out.is_contiguous() else None
    attended = decode_attention(query[:, None], key_cache, value_cache, seq_lens, block_table=block_table,
                                softmax_scale=softmax_scale, out=into)[:, 0]  # fmt: skip
    if out is not None and into is None:
        out.copy_(attended)
    return attended if out is None else out


def register() -> None:
    """The `vllm.general_plugins` entry point: registers the layers and the attention backend (once
    a process; vLLM may call it more than once)."""
    from aurora_kernels.integrations import _vllm_layers

    _vllm_layers.register()
