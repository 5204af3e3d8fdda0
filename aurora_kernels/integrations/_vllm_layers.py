"""The vLLM classes of the plugin (integrations/vllm_plugin.py): imports vLLM, so only
`vllm_plugin.register()` imports this module, in a process where vLLM runs.

Each layer subclasses vLLM's own, keeping its constructor and weights, and replaces every
forward_* method vLLM may dispatch to (by platform, and forward_native when vLLM's custom-op settings
switch a layer off under its torch.compile), so the choice does not depend on those settings.
"""

from __future__ import annotations

import logging

import torch
from vllm.model_executor.custom_op import CustomOp, op_registry_oot
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend
from vllm.v1.attention.backends.triton_attn import TritonAttentionBackend, TritonAttentionImpl

from aurora_kernels.integrations.vllm_plugin import ATTENTION_BACKEND_NAME, paged_decode_attention, rotary_embedding
from aurora_kernels.ops.rms_norm import rms_norm
from aurora_kernels.ops.silu_and_mul import silu_and_mul

logger = logging.getLogger(__name__)
_FORWARDS = ("forward_native", "forward_cuda", "forward_hip", "forward_oot", "forward_cpu", "forward_xpu")


def _unsupported(layer: str, reasons: dict[str, bool]) -> bool:
    """Whether any reason holds; if so, a warning that the layer keeps vLLM's implementation."""
    found = [name for name, holds in reasons.items() if holds]
    if found:
        logger.warning("aurora_kernels: %s with %s keeps vLLM's implementation", layer, ", ".join(found))
    return bool(found)


def _own_forwards(cls, forward):
    """cls with `forward` as each of vLLM's per-platform forward methods."""
    for name in _FORWARDS:
        setattr(cls, name, forward)
    return cls


class AuroraRMSNorm(RMSNorm):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ours = not _unsupported("RMSNorm", {"no weight": not self.has_weight,
                                                  "var_hidden_size": self.variance_size_override is not None})  # fmt: skip

    def _forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if not self._ours:
            return RMSNorm.forward_native(self, x, residual)
        return rms_norm(x, self.weight, self.variance_epsilon, residual=residual)


class AuroraSiluAndMul(SiluAndMul):
    @staticmethod
    def _forward(x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x)


class AuroraRotaryEmbedding(RotaryEmbedding):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ours = not _unsupported("RotaryEmbedding", {"GPT-J style": not self.is_neox_style,
                                                          "partial rotary": self.rotary_dim != self.head_size})  # fmt: skip

    def _forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor | None = None):
        if not self._ours:
            return RotaryEmbedding.forward_native(self, positions, query, key)
        return rotary_embedding(positions, query, key, self._match_cos_sin_cache_dtype(query), self.head_size)


for _cls in (AuroraRMSNorm, AuroraRotaryEmbedding):
    _own_forwards(_cls, _cls._forward)
_own_forwards(AuroraSiluAndMul, staticmethod(AuroraSiluAndMul._forward))


class AuroraAttentionImpl(TritonAttentionImpl):
    """vLLM's Triton attention, but a decode-only batch (one query token per request) runs
    decode_attention on the same paged cache."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ours = not _unsupported("attention", {
            "ALiBi": self.alibi_slopes is not None, "a sliding window": self.sliding_window != (-1, -1),
            "soft-capped logits": bool(self.logits_soft_cap), "sinks": self.sinks is not None,
            f"KV cache dtype {self.kv_cache_dtype}": self.kv_cache_dtype != "auto",
            f"type {self.attn_type}": self.attn_type != AttentionType.DECODER,
        })  # fmt: skip

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None,
                output_block_scale=None):  # fmt: skip
        # max_query_len is a host int of the metadata: no device read. A decode-only batch has one
        # query row per request, so its rows are the requests' and seq_lens holds one length each.
        decode_only = attn_metadata is not None and attn_metadata.max_query_len == 1
        if not (self._ours and decode_only and output_scale is None and output_block_scale is None):
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output, output_scale,
                                   output_block_scale)  # fmt: skip
        requests = attn_metadata.seq_lens.shape[0]
        paged_decode_attention(query[:requests], kv_cache, attn_metadata.block_table[:requests],
                               attn_metadata.seq_lens, self.scale, out=output[:requests])  # fmt: skip
        return output


class AuroraAttentionBackend(TritonAttentionBackend):
    @staticmethod
    def get_name() -> str:
        return ATTENTION_BACKEND_NAME

    @staticmethod
    def get_impl_cls() -> type[AuroraAttentionImpl]:
        return AuroraAttentionImpl


def register() -> None:
    """vLLM builds AuroraRMSNorm where a model asks for RMSNorm (and so on), and resolves the
    attention backend "AURORA" to AuroraAttentionBackend. Idempotent; a layer another plugin has
    replaced already stays as that plugin made it, with a warning."""
    for name, cls in (("RMSNorm", AuroraRMSNorm), ("SiluAndMul", AuroraSiluAndMul), ("RotaryEmbedding", AuroraRotaryEmbedding)):
        if op_registry_oot.get(name) is cls:
            continue
        if name in op_registry_oot:
            logger.warning("aurora_kernels: %s is replaced by another plugin (%s); ours is not registered", name,
                           op_registry_oot[name].__qualname__)  # fmt: skip
            continue
        CustomOp.register_oot(cls, name=name)
    path = f"{AuroraAttentionBackend.__module__}.{AuroraAttentionBackend.__qualname__}"
    if ATTENTION_BACKEND_NAME in AttentionBackendEnum.__members__:
        register_backend(AttentionBackendEnum[ATTENTION_BACKEND_NAME], path)
    else:
        register_backend(ATTENTION_BACKEND_NAME, path)
