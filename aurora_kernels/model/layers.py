"""Building blocks shared by the model's parts: LayerNorm on the kernel, rotary tables, and the
Qwen2 decoder layer (used by the LLM and by the fusion module).

Every op runs through the public `aurora_kernels` functions with the module's `backend`; the
matmuls are torch's (cuBLAS on a GPU).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

import aurora_kernels as ak
from aurora_kernels.model.config import LLMConfig


class LayerNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, backend: str):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.bias = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps
        self.backend = backend

    def forward(self, x, residual=None):
        return ak.layer_norm(x, self.weight, self.bias, self.eps, residual, backend=self.backend)


class RotaryTables(nn.Module):
    """cos/sin tables [max_positions, head_dim] (rotate-half layout, as transformers builds them),
    computed in float64 and stored in fp32; `model.to(dtype)` casts them with the weights, as
    transformers casts its tables to the activations' dtype. Prefill hands the whole tables and the
    positions to apply_rotary, the decode step to decode_attention (row cache_seqlens[b]): each
    kernel reads the rows it needs, and no rows are gathered before it."""

    def __init__(self, head_dim: int, theta: float, max_positions: int):
        super().__init__()
        self.head_dim, self.theta, self.max_positions = head_dim, theta, max_positions
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, positions: torch.Tensor):
        """positions (any shape, int64) -> cos, sin [*positions.shape, head_dim]."""
        return self.cos[positions], self.sin[positions]


# attend(layer_index, q, k, v) -> attention output shaped like q, from q and k before RoPE: the
# caller's choice of dense, packed or cached attention, of where K/V go in a cache, and of how the
# rotary embedding is applied (a separate apply_rotary, or inside decode_attention).
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rotate_then(attend: Attend, tables: RotaryTables, positions: torch.Tensor, backend: str) -> Attend:
    """`attend` on q, k rotated by apply_rotary at positions [..., L] (the kernel reads the tables' rows)."""

    def rotate_and_attend(index, q, k, v):
        q, k = ak.apply_rotary(q, k, tables.cos, tables.sin, positions=positions, backend=backend)
        return attend(index, q, k, v)

    return rotate_and_attend


class DecoderLayer(nn.Module):
    """Qwen2 layer: RMSNorm, fused q/k/v projection with bias, RoPE + GQA attention (`attend`), o_proj,
    RMSNorm, SwiGLU (fused gate/up projection). Works on any leading shape: [T, C] packed or [B, L, C].

    The residual stream is carried unnormalised beside the layer output (`rms_norm` with residual
    adds and normalises in one pass), as in vLLM: forward returns (x, residual) and x + residual is
    the layer's real output.
    """

    def __init__(self, cfg: LLMConfig, index: int, backend: str):
        super().__init__()
        self.index = index
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_width, kv_width = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.input_layernorm = ak.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend=backend)
        self.qkv_proj = nn.Linear(cfg.hidden_size, q_width + 2 * kv_width, bias=True)
        self.o_proj = nn.Linear(q_width, cfg.hidden_size, bias=False)
        self.post_attention_layernorm = ak.RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, backend=backend)
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.backend = backend

    def split_qkv(self, qkv: torch.Tensor):
        """Views (no copies) of the fused projection: q [..., Hq, D], k and v [..., Hkv, D]."""
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q = qkv[..., :q_width].unflatten(-1, (self.num_heads, self.head_dim))
        k = qkv[..., q_width : q_width + kv_width].unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = qkv[..., q_width + kv_width :].unflatten(-1, (self.num_kv_heads, self.head_dim))
        return q, k, v

    def forward(self, x, residual, attend: Attend, fused_projections: bool = False, activation_in_gate_up: bool = False,
                residual_in_epilogue: bool = False):  # fmt: skip
        """(x, residual) -> the next layer's (x, residual): the residual stream is x + residual, or x
        where residual is None. fused_projections: each projection with the op that feeds it in one
        kernel (ops/fused_linear.py), for decode-sized inputs; with it, activation_in_gate_up:
        SwiGLU's activation with gate_up, in its epilogue, not with down_proj; residual_in_epilogue:
        the stream's adds in o_proj's and down_proj's epilogues (the layer returns residual None)."""
        if fused_projections:
            return self._forward_fused(x, residual, attend, activation_in_gate_up, residual_in_epilogue)
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm(x, residual)
        attn = attend(self.index, *self.split_qkv(self.qkv_proj(h)))
        h, residual = self.post_attention_layernorm(self.o_proj(attn.flatten(-2)), residual)
        return self.down_proj(ak.silu_and_mul(self.gate_up_proj(h), backend=self.backend)), residual

    def _forward_fused(self, x, residual, attend: Attend, activation_in_gate_up: bool, residual_in_epilogue: bool):
        norm, backend = self.input_layernorm, self.backend
        normed_qkv = ak.rms_norm_linear(x, norm.weight, self.qkv_proj.weight, self.qkv_proj.bias, norm.eps, residual,
                                        backend=backend)  # fmt: skip
        qkv, residual = (normed_qkv, x) if residual is None else normed_qkv
        attn = attend(self.index, *self.split_qkv(qkv))
        norm = self.post_attention_layernorm
        if residual_in_epilogue:  # h = h + o in o_proj, and h + mlp in down_proj: the norm reads h alone
            h = ak.linear(attn.flatten(-2), self.o_proj.weight, None, residual, backend=backend)
            if activation_in_gate_up:
                activated = ak.rms_norm_linear_silu_and_mul(h, norm.weight, self.gate_up_proj.weight, None, norm.eps,
                                                            backend=backend)  # fmt: skip
                return ak.linear(activated, self.down_proj.weight, None, h, backend=backend), None
            gate_up = ak.rms_norm_linear(h, norm.weight, self.gate_up_proj.weight, None, norm.eps, backend=backend)
            return ak.silu_and_mul_linear(gate_up, self.down_proj.weight, None, h, backend=backend), None
        o = ak.linear(attn.flatten(-2), self.o_proj.weight, backend=backend)
        if activation_in_gate_up:
            activated, residual = ak.rms_norm_linear_silu_and_mul(
                o, norm.weight, self.gate_up_proj.weight, None, norm.eps, residual, backend=backend
            )
            return ak.linear(activated, self.down_proj.weight, backend=backend), residual
        gate_up, residual = ak.rms_norm_linear(
            o, norm.weight, self.gate_up_proj.weight, None, norm.eps, residual, backend=backend
        )
        return ak.silu_and_mul_linear(gate_up, self.down_proj.weight, backend=backend), residual
