"""SigLIP-style ViT: conv patch embedding, learned positions, pre-LN blocks with non-causal
attention and a GELU-tanh MLP, final LayerNorm. Output as transformers' SiglipVisionModel
`last_hidden_state`. Each residual add is folded into the LayerNorm that follows it (`layer_norm`
with residual), as the LLM's into its RMSNorms."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

import aurora_kernels as ak
from aurora_kernels.model.config import VisionConfig
from aurora_kernels.model.layers import LayerNorm


class VisionBlock(nn.Module):
    def __init__(self, cfg: VisionConfig, backend: str):
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, backend)
        self.qkv_proj = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # q, k, v fused
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, backend)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.backend = backend

    def forward(self, x, residual=None):
        """x [B, N, C]: the previous block's MLP output (or the embeddings, with residual None);
        residual: the stream before it. Returns (mlp output, residual): their sum is the block's
        output, carried apart so each LayerNorm adds it in the pass that normalises it."""
        if residual is None:
            normed, residual = self.layer_norm1(x), x
        else:
            normed, residual = self.layer_norm1(x, residual)
        qkv = self.qkv_proj(normed).unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(-3)  # strided views [B, N, H, D] of the one projection
        attended = self.out_proj(ak.attention(q, k, v, backend=self.backend).flatten(-2))
        normed, residual = self.layer_norm2(attended, residual)
        return self.fc2(ak.gelu_tanh(self.fc1(normed), backend=self.backend)), residual


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, backend: str):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(cfg.num_patches, cfg.hidden_size))
        self.layers = nn.ModuleList(VisionBlock(cfg, backend) for _ in range(cfg.num_layers))
        self.post_layernorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, backend)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, image_size, image_size] -> [B, num_patches, hidden_size]."""
        cfg = self.cfg
        expected = (cfg.num_channels, cfg.image_size, cfg.image_size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values: expected shape [B, {', '.join(map(str, expected))}], got {list(pixel_values.shape)}")
        weight = self.patch_embedding.weight
        patches = F.conv2d(pixel_values.to(weight.dtype), weight, self.patch_embedding.bias, stride=cfg.patch_size)
        # conv gives [B, C, g, g]: one copy to token-major rows [B, N, C], the layout every op here reads
        x = patches.flatten(2).transpose(1, 2).contiguous() + self.position_embedding
        residual = None
        for layer in self.layers:
            x, residual = layer(x, residual)
        return self.post_layernorm(x) if residual is None else self.post_layernorm(x, residual)[0]
