"""The Qwen2 decoder LLM (Qwen2.5-1.5B shape): token embeddings, decoder layers, final RMSNorm,
tied (or separate) LM head. Three ways through the same layers: dense causal over [B, L] (as
transformers' Qwen2ForCausalLM, no cache), packed prefill over ragged requests that fills a KV
cache, and one cached decode step."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import aurora_kernels as ak
from aurora_kernels.model.config import LLMConfig
from aurora_kernels.model.kv_cache import KVCache
from aurora_kernels.model.layers import Attend, DecoderLayer, RotaryTables, rotate_then


class Qwen2LM(nn.Module):
    def __init__(self, cfg: LLMConfig, backend: str):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, backend) for i in range(cfg.num_layers))
        self.norm = ak.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend=backend)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary = RotaryTables(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings)
        self.backend = backend

    def run_layers(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        """x [..., C] through every layer (attention and RoPE by `attend`) and the final norm."""
        return self.norm(*self._layers(x, attend, False))[0]

    def _layers(self, x: torch.Tensor, attend: Attend, fused_projections: bool, activation_in_gate_up: bool = False,
                residual_in_epilogue: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(x, residual) after every layer, before the final norm's residual add (None: x is the
        residual stream, under residual_in_epilogue)."""
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual, attend, fused_projections, activation_in_gate_up, residual_in_epilogue)
        return x, residual

    def rotated(self, attend: Attend, positions: torch.Tensor) -> Attend:
        """`attend` after apply_rotary at `positions`."""
        return rotate_then(attend, self.rotary, positions, self.backend)

    def head_weight(self) -> torch.Tensor:
        """The LM head's weight [vocab, C]: the embeddings' when tied."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.head_weight())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] -> logits [B, L, vocab] (causal, no cache)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids: expected shape [B, L], got {list(input_ids.shape)}")
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device).expand(batch, length)

        def attend(_, q, k, v):
            return ak.attention(q, k, v, causal=True, backend=self.backend)

        return self.logits(self.run_layers(self.embed_tokens(input_ids), self.rotated(attend, positions)))

    def prefill(self, x, positions, cu_seqlens, max_seqlen: int, cache: KVCache | None = None, slots=None):
        """Packed requests x [T, C] (cu_seqlens, positions [T]) -> final hidden states [T, C]; with a
        cache, every layer's rotated K and its V are written at `slots` (int64 [T], KVCache.host_slots'
        rows) by the launch that rotates them."""
        cos, sin = self.rotary.cos, self.rotary.sin

        def attend(index, q, k, v):
            if cache is None:
                q, k = ak.apply_rotary(q, k, cos, sin, positions=positions, backend=self.backend)
            else:
                k_rows, v_rows = cache.layer_rows(index)
                q, k = ak.apply_rotary(q, k, cos, sin, positions=positions, v=v, k_cache=k_rows, v_cache=v_rows,
                                       cache_slots=slots, backend=self.backend)  # fmt: skip
            return ak.attention_varlen(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True,
                                       backend=self.backend)  # fmt: skip

        return self.run_layers(x, attend)

    def decode_logits(self, x: torch.Tensor, cache: KVCache, fused: bool = False, activation_in_gate_up: bool = False,
                      residual_in_epilogue: bool = False) -> torch.Tensor:  # fmt: skip
        """One new token per sequence, x [B, C] at position cache.seqlens -> logits [B, vocab]. Each
        layer's decode_attention rotates q and k at cache.seqlens with the full rotary tables and
        appends the K/V there; the caller then advances it. fused: each projection runs with the op
        that feeds it as one kernel (a GEMV for one sequence, tensor-core tiles for more), the final
        norm with the LM head too (RunOptions.fuses_decode_projections decides); with
        activation_in_gate_up, SwiGLU's activation in gate_up's epilogue instead of down_proj's
        prologue (RunOptions.puts_activation_in_gate_up); with residual_in_epilogue, the residual
        stream's adds in o_proj's and down_proj's epilogues (RunOptions.adds_residual_in_epilogue)."""

        def attend(index, q, k, v):
            return ak.decode_attention(q, cache.k[index], cache.v[index], cache.seqlens, k, v, block_table=cache.block_table,
                                       rotary_cos=self.rotary.cos, rotary_sin=self.rotary.sin, backend=self.backend)  # fmt: skip

        x, residual = self._layers(x[:, None], attend, fused, activation_in_gate_up, residual_in_epilogue)
        if fused:
            head = ak.rms_norm_linear(x, self.norm.weight, self.head_weight(), None, self.norm.eps, residual,
                                      backend=self.backend)  # fmt: skip
            return (head if residual is None else head[0])[:, 0]
        return self.logits(self.norm(x, residual)[0][:, 0])
