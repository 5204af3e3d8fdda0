"""patch_qwen2: a transformers Qwen2ForCausalLM on this package's kernels, as Liger-Kernel patches
models: RMSNorm, rotary embedding, the MLP's SiLU-and-multiply, and attention.

Inference only. What changes, per part:
- RMSNorm: each Qwen2RMSNorm instance's forward becomes `rms_norm`.
- MLP: gate_proj and up_proj weights are moved into one [2I, H] tensor (the two parameters become
  views of it, so state_dict names and memory are unchanged); forward is one matmul, `silu_and_mul`,
  down_proj.
- Rotary: transformers' module-level `apply_rotary_pos_emb` in modeling_qwen2 is replaced (as
  Liger does), so every Qwen2 model in the process uses it once one model is patched.
- Attention: an "aurora" entry in transformers' attention registry (`attention`, causal, GQA by
  index), selected on this model. It has no padding masks: a batch of prompts of different lengths
  padded into one tensor raises a ValueError (aurora_kernels.model packs such batches instead).
"""

from __future__ import annotations

import types

import torch
from torch.nn import functional as F

import aurora_kernels as ak
from aurora_kernels._validation import check_backend
from aurora_kernels.integrations._attention import ATTENTION_NAME, register_attention


def _rms_norm_forward(self, hidden_states):
    return ak.rms_norm(hidden_states, self.weight, self.variance_epsilon, backend=self._aurora_backend)


def _mlp_forward(self, x):
    gate_up = F.linear(x, self._aurora_gate_up)
    return self.down_proj(ak.silu_and_mul(gate_up, backend=self._aurora_backend))


def _fuse_gate_up(mlp) -> None:
    gate, up = mlp.gate_proj.weight, mlp.up_proj.weight
    fused = torch.cat([gate.detach(), up.detach()])
    rows = gate.shape[0]
    mlp.gate_proj.weight = torch.nn.Parameter(fused[:rows], requires_grad=False)
    mlp.up_proj.weight = torch.nn.Parameter(fused[rows:], requires_grad=False)
    mlp._aurora_gate_up = fused


def _rotary(backend: str):
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        """q [B, H, L, D], k [B, Hkv, L, D], cos/sin [B, L, D] (transformers' layout): the kernel reads
        the [B, L, H, D] views, no copies."""
        if unsqueeze_dim != 1:
            raise ValueError(f"unsqueeze_dim: expected 1 (q, k as [B, H, L, D]), got {unsqueeze_dim}")
        q_rot, k_rot = ak.apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin, backend=backend)
        return q_rot.transpose(1, 2), k_rot.transpose(1, 2)

    return apply_rotary_pos_emb


def patch_qwen2(model, *, rms_norm=True, rotary=True, mlp=True, attention=True, backend="triton"):
    """Patch a transformers Qwen2ForCausalLM (or Qwen2Model) in place; returns it."""
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    check_backend(backend)
    if not isinstance(model, (qwen2.Qwen2ForCausalLM, qwen2.Qwen2Model)):
        raise TypeError(f"model: expected a transformers Qwen2ForCausalLM or Qwen2Model, got {type(model).__name__}")
    if mlp and model.config.hidden_act != "silu":  # checked before anything is patched
        raise ValueError(f"model.config.hidden_act: expected 'silu' (SwiGLU), got {model.config.hidden_act!r}")
    for module in model.modules():
        module._aurora_backend = backend
        if rms_norm and isinstance(module, qwen2.Qwen2RMSNorm):
            module.forward = types.MethodType(_rms_norm_forward, module)
        if mlp and isinstance(module, qwen2.Qwen2MLP):
            _fuse_gate_up(module)
            module.forward = types.MethodType(_mlp_forward, module)
    if rotary:
        qwen2.apply_rotary_pos_emb = _rotary(backend)
    if attention:
        register_attention()
        model.set_attn_implementation(ATTENTION_NAME)
    return model
