"""patch_siglip: a transformers SiglipVisionModel (the ViT of AuroraEdge-V), or a whole SiglipModel
(its vision and text towers), on this package's kernels: LayerNorm, the MLP's tanh GELU, and
attention. This instance only; `unpatch(model)` restores it.

Inference only. What changes, per part:
- LayerNorm: each nn.LayerNorm of the model (both of every layer, the final one and the pooling
  head's) runs `layer_norm`.
- MLP: the activation between fc1 and fc2 (every layer's MLP and the pooling head's) becomes
  `gelu_tanh` (SigLIP's "gelu_pytorch_tanh").
- Attention: the "aurora" entry of transformers' attention registry (`attention`, not causal: at
  SigLIP's head dim 72 the kernel runs it as 64 + 16; a padded text batch runs unpadded), selected
  on this model. The pooling heads' torch.nn.MultiheadAttention is left as it is.
The state dict is unchanged.
"""

from __future__ import annotations

import types

import torch

import aurora_kernels as ak
from aurora_kernels._validation import check_backend
from aurora_kernels.integrations._attention import select_attention
from aurora_kernels.integrations._undo import record_undo


def _layer_norm_forward(self, x):
    # the first layer's input is the patch embedding plus the position embedding, which keeps the
    # convolution's channels-first strides ([B, C, N] transposed); the kernel reads rows of C
    if x.stride(-1) != 1:
        x = x.contiguous()
    return ak.layer_norm(x, self.weight, self.bias, self.eps, backend=self._aurora_backend)


def _gelu_tanh_forward(self, x):
    return ak.gelu_tanh(x, backend=self._aurora_backend)


def patch_siglip(model, *, layer_norm=True, mlp=True, attention=True, backend="triton"):
    """Patch a transformers SiglipVisionModel or SiglipModel in place, this instance only; returns it."""
    from transformers.models.siglip import modeling_siglip as siglip

    check_backend(backend)
    if not isinstance(model, (siglip.SiglipVisionModel, siglip.SiglipModel)):
        raise TypeError(f"model: expected a transformers SiglipVisionModel or SiglipModel, got {type(model).__name__}")
    configs = (
        [model.config] if isinstance(model, siglip.SiglipVisionModel) else [model.config.vision_config, model.config.text_config]
    )
    for config in configs:  # checked before anything is patched
        if mlp and config.hidden_act != "gelu_pytorch_tanh":
            raise ValueError(f"model.config.hidden_act: expected 'gelu_pytorch_tanh', got {config.hidden_act!r}")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)] if layer_norm else []
    for norm in norms:
        if norm.weight is None or norm.bias is None or len(norm.normalized_shape) != 1:
            raise ValueError(f"model: expected LayerNorms over the last dim with weight and bias, got {norm}")
    for module in model.modules():
        module._aurora_backend = backend
    activations = [m.activation_fn for m in model.modules() if isinstance(m, siglip.SiglipMLP)] if mlp else []
    for module, forward in [*((norm, _layer_norm_forward) for norm in norms), *((a, _gelu_tanh_forward) for a in activations)]:
        module.forward = types.MethodType(forward, module)
        record_undo(model, lambda module=module: module.__dict__.pop("forward", None))
    if attention:
        select_attention(model, model)
    return model
