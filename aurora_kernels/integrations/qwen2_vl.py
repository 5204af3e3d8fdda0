"""Qwen2-VL and Qwen2.5-VL (transformers' ...ForConditionalGeneration or ...Model) on this package's
kernels, this instance only; `unpatch(model)` restores it. Inference only.

The LLM is Qwen2's, and is patched as `patch_qwen2` patches Qwen2: RMSNorm, the SwiGLU MLP, rotary
(M-RoPE: transformers merges the three position streams' angles into one cos/sin per token, before
the rotary function in transformers 5 and inside it, by `mrope_section`, in 4.x; the kernel rotates
with the merged tables either way) and attention (the "aurora" entry, padded batches unpadded).
The vision tower, with `vision=True`: each block's attention runs over the images' packed patches
as one `attention_varlen` call (non-causal, over transformers' cu_seqlens: per image, or per window
in Qwen2.5-VL's windowed blocks; each cu_seqlens read on the host once a forward,
`_longest_group`), its 2-D rotary as one `apply_rotary`; its norms (Qwen2-VL: LayerNorm;
Qwen2.5-VL: RMSNorm) and Qwen2.5-VL's SwiGLU MLP on the kernels. Qwen2-VL's vision MLP (QuickGELU)
and the patch merger's GELU stay transformers' (no kernel of ours computes them).
"""

from __future__ import annotations

import sys
import types

import torch

import aurora_kernels as ak
from aurora_kernels._validation import check_backend
from aurora_kernels.integrations._attention import PerTensorCache, select_attention
from aurora_kernels.integrations._undo import record_undo
from aurora_kernels.integrations.qwen2 import (
    _install_rotary_dispatcher,
    _kernel_rotary,
    _mlp_forward,
    _rms_norm_forward,
    _with_rotary_backend,
)
from aurora_kernels.integrations.siglip import _layer_norm_forward

_MODELS = ("Qwen2VLForConditionalGeneration", "Qwen2VLModel", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel")


def _kernel_multimodal_rotary(q, k, cos, sin, mrope_section, unsqueeze_dim: int = 1, *, backend: str):
    """transformers 4.x's apply_multimodal_rotary_pos_emb: cos, sin [3, B, L, D] (temporal, height,
    width angles); the head dim's sections take their angles from streams 0, 1, 2, 0, 1, 2 in turn
    (mrope_section names the first half's sections, repeated for the second half)."""
    sections = list(mrope_section) * 2
    cos, sin = (torch.cat([part[i % 3] for i, part in enumerate(t.split(sections, dim=-1))], dim=-1) for t in (cos, sin))
    return _kernel_rotary(q, k, cos, sin, unsqueeze_dim, backend=backend)


# the longest group of the last two cu_seqlens a thread read: Qwen2.5-VL's blocks take turns with
# two groupings, per window and per image
_LONGEST_GROUPS = PerTensorCache(2)


@torch.compiler.disable
def _longest_group(cu_seqlens: torch.Tensor) -> int:
    """The longest group of cu_seqlens, a read of it on the host (a sync on a GPU): once a forward
    for each cu_seqlens tensor, which transformers makes once and hands to every block, where its
    own blocks read it in each (32 in Qwen2-VL's tower). Under torch.compile it runs outside the
    graph: a break at each call, where transformers' blocks break at theirs; traced, the read also
    broke the graph a second time for each grouping."""
    return _LONGEST_GROUPS.get(cu_seqlens, None, lambda: int((cu_seqlens[1:] - cu_seqlens[:-1]).max()))


def _vision_attention_forward(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None,
                              max_seqlen=None, **kwargs):  # fmt: skip
    """hidden_states [T, C]: the patches of every image, packed; cu_seqlens [N + 1] the bounds of
    each attended group. position_embeddings (cos, sin) [T, D]; transformers 4.x may pass the angles
    instead (rotary_pos_emb [T, D / 2])."""
    tokens = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).view(tokens, 3, self.num_heads, -1).unbind(1)  # [T, H, D] views
    if position_embeddings is None:
        angles = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
        position_embeddings = (angles.cos(), angles.sin())
    q, k = ak.apply_rotary(q, k, *position_embeddings, backend=self._aurora_backend)
    if max_seqlen is None:
        max_seqlen = _longest_group(cu_seqlens)
    cu_seqlens = cu_seqlens.to(torch.int32)
    out = ak.attention_varlen(q, k, v, cu_seqlens, cu_seqlens, int(max_seqlen), int(max_seqlen),
                              causal=False, softmax_scale=self.scaling, backend=self._aurora_backend)  # fmt: skip
    return self.proj(out.reshape(tokens, -1))


def patch_qwen2_vl(model, *, rms_norm=True, rotary=True, mlp=True, attention=True, vision=True, backend="triton"):
    """Patch a transformers Qwen2-VL or Qwen2.5-VL model in place, this instance only; returns it.
    rms_norm, rotary, mlp, attention: the LLM's parts; vision: the vision tower's norms, MLP (Qwen2.5-VL)
    and attention."""
    check_backend(backend)
    if type(model).__name__ not in _MODELS:
        raise TypeError(f"model: expected a transformers {' or '.join(_MODELS)}, got {type(model).__name__}")
    modeling = sys.modules[type(model).__module__]
    inner = getattr(model, "model", model)  # ...ForConditionalGeneration holds the ...Model
    text, visual = inner.language_model, inner.visual
    if mlp and text.config.hidden_act != "silu":  # checked before anything is patched
        raise ValueError(f"model.config.text_config.hidden_act: expected 'silu' (SwiGLU), got {text.config.hidden_act!r}")

    def patch(module, forward):
        module.forward = types.MethodType(forward, module)
        record_undo(model, lambda: module.__dict__.pop("forward", None))

    for module in model.modules():
        module._aurora_backend = backend
    parts = [(text, rms_norm, mlp)] + ([(visual, True, True)] if vision else [])
    for root, norms, mlps in parts:
        for module in root.modules():
            if norms and type(module).__name__.endswith("RMSNorm"):
                patch(module, _rms_norm_forward)
            elif norms and root is visual and isinstance(module, torch.nn.LayerNorm):
                patch(module, _layer_norm_forward)
            elif mlps and all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                if getattr(module, "config", visual.config if root is visual else text.config).hidden_act != "silu":
                    continue  # not SwiGLU: transformers' own
                patch(module, _mlp_forward)
    if vision:
        for module in visual.modules():
            if type(module).__name__.endswith("VisionAttention"):
                patch(module, _vision_attention_forward)
    if rotary:
        if hasattr(modeling, "apply_multimodal_rotary_pos_emb"):  # transformers 4.x
            _install_rotary_dispatcher(modeling, "apply_multimodal_rotary_pos_emb", _kernel_multimodal_rotary)
        else:
            _install_rotary_dispatcher(modeling)
        model.forward = _with_rotary_backend(model.forward, backend)
        record_undo(model, lambda: model.__dict__.pop("forward", None))
    if attention:
        select_attention(model, text)
    return model
