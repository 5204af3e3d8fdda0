"""Layers for the HF kernels Hub's `kernelize`: each class replaces the forward of the layer that
`use_kernel_forward_from_hub(<class name>)` marks (transformers' Qwen2RMSNorm is "RMSNorm", its
GELUTanh is "GeluTanh"), running our kernel on that layer's own weights.

`kernels` requires these classes to be stateless (no __init__, no members beyond forward and the two
flags below) and their forward to take the arguments of the forward it replaces. Inference only: our
ops have no backward (a backward raises an error that names the op), so has_backward is False and
`kernelize(mode=Mode.TRAINING)` keeps transformers' forward. Each op is a torch custom op, so a
kernelized model compiles with torch.compile(fullgraph=True).

The kernels package itself is never imported here: these are plain torch modules, and a Hub build of
this package (hub_build.py) exposes this module as its `layers`.
"""

from __future__ import annotations

import torch
from torch import nn

from aurora_kernels.ops.gelu_tanh import gelu_tanh
from aurora_kernels.ops.rms_norm import rms_norm
from aurora_kernels.ops.silu_and_mul import silu_and_mul


class RMSNorm(nn.Module):
    """transformers' Qwen2RMSNorm / LlamaRMSNorm: `weight` [C], `variance_epsilon`; x [..., C]."""

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)


class GeluTanh(nn.Module):
    """transformers' GELUTanh (gelu_pytorch_tanh, SigLIP's MLP): elementwise, any shape."""

    can_torch_compile = True
    has_backward = False

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(input)


class SiluAndMul(nn.Module):
    """x [..., 2d] -> silu(x[..., :d]) * x[..., d:] (the kernels-community activation layer's name)."""

    can_torch_compile = True
    has_backward = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return silu_and_mul(x)
