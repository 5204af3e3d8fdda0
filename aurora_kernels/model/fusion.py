"""The fusion module: text tokens gather fine visual detail from the 256 uncompressed visual tokens
of their own image (cross-attention with a residual), then pass one Qwen2 decoder layer.

T' = T + o_proj(attention(q_proj(norm(T)), k_proj(V), v_proj(V))), non-causal, packed (varlen): the
requests' prompts have different lengths, each attends only to its image's tokens.
"""

from __future__ import annotations

import torch
from torch import nn

import aurora_kernels as ak
from aurora_kernels.model.config import LLMConfig
from aurora_kernels.model.layers import DecoderLayer, RotaryTables, rotate_then


class Fusion(nn.Module):
    def __init__(self, cfg: LLMConfig, backend: str):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        width = cfg.num_heads * cfg.head_dim
        self.norm = ak.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend=backend)
        self.q_proj = nn.Linear(cfg.hidden_size, width, bias=True)
        self.kv_proj = nn.Linear(cfg.hidden_size, 2 * width, bias=True)  # k and v of the visual tokens, fused
        self.o_proj = nn.Linear(width, cfg.hidden_size, bias=False)
        self.layer = DecoderLayer(cfg, 0, backend)
        self.backend = backend

    def forward(self, text, visual, cu_seqlens_text, max_text, rotary: RotaryTables, positions):
        """text [T, C] packed prompts (cu_seqlens_text, at least B of them), visual [B, N, C] -> [T, C];
        the decoder layer's RoPE from the rotary tables at positions [T] (within each prompt)."""
        batch, num_visual = visual.shape[:2]
        q = self.q_proj(self.norm(text)).unflatten(-1, (self.num_heads, self.head_dim))
        k, v = self.kv_proj(visual.flatten(0, 1)).unflatten(-1, (2, self.num_heads, self.head_dim)).unbind(-3)
        # prompt b sees image b's tokens; prompts past the images (a padded batch's padding) see none
        sequences = cu_seqlens_text.shape[0] - 1
        cu_seqlens_visual = (torch.arange(sequences + 1, dtype=torch.int32, device=text.device) * num_visual).clamp_(
            max=batch * num_visual
        )
        attn = ak.attention_varlen(q, k, v, cu_seqlens_text, cu_seqlens_visual, max_text, num_visual, backend=self.backend)
        x = text + self.o_proj(attn.flatten(-2))

        def attend(_, q, k, v):
            return ak.attention_varlen(q, k, v, cu_seqlens_text, cu_seqlens_text, max_text, max_text, causal=True,
                                       backend=self.backend)  # fmt: skip

        out, residual = self.layer(x, None, rotate_then(attend, rotary, positions, self.backend))
        return out + residual
