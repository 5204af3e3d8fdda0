"""The projector (ViT width -> LLM width) and the token compressor (256 -> 64 visual tokens)."""

from __future__ import annotations

import torch
from torch import nn

import aurora_kernels as ak
from aurora_kernels.model.config import AuroraConfig


class Projector(nn.Module):
    """2-layer MLP with GELU(tanh): [B, N, vision hidden] -> [B, N, LLM hidden]."""

    def __init__(self, vision_hidden: int, llm_hidden: int, backend: str):
        super().__init__()
        self.fc1 = nn.Linear(vision_hidden, llm_hidden)
        self.fc2 = nn.Linear(llm_hidden, llm_hidden)
        self.backend = backend

    def forward(self, x):
        return self.fc2(ak.gelu_tanh(self.fc1(x), backend=self.backend))


class TokenCompressor(nn.Module):
    """ "mlp": out[b] = w2 @ act(w1 @ x[b] + b1) + b2 over the token axis; "pool": k x k pooling over
    the patch grid; "none": the tokens unchanged."""

    def __init__(self, cfg: AuroraConfig, backend: str):
        super().__init__()
        self.settings = cfg.compressor
        self.grid_size = cfg.vision.grid_size
        self.backend = backend
        if self.settings.kind == "mlp":
            num_patches, hidden, out_tokens = cfg.vision.num_patches, self.settings.hidden, self.settings.out_tokens
            self.w1 = nn.Parameter(torch.zeros(hidden, num_patches))
            self.b1 = nn.Parameter(torch.zeros(hidden))
            self.w2 = nn.Parameter(torch.zeros(out_tokens, hidden))
            self.b2 = nn.Parameter(torch.zeros(out_tokens))

    def forward(self, x):  # [B, N, C]
        kind = self.settings.kind
        if kind == "mlp":
            return ak.token_mlp_compress(x, self.w1, self.b1, self.w2, self.b2, self.settings.activation, backend=self.backend)
        if kind == "pool":
            return ak.token_pool(x, (self.grid_size, self.grid_size), self.settings.pool_kernel, self.settings.pool_mode,
                                 backend=self.backend)  # fmt: skip
        return x
