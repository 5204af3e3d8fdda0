"""Qwen2 on this package's kernels, as Liger-Kernel patches models: RMSNorm, rotary embedding, the
MLP's SiLU-and-multiply, and attention. Inference only.

Two ways, each undone by its counterpart:
- `patch_qwen2(model)`: this instance only (another Qwen2 in the process makes no kernel call);
  `unpatch(model)` restores it.
- `apply_aurora_kernels_to_qwen2(rope=, rms_norm=, swiglu=, attention=)`: the transformers classes,
  so every Qwen2 made or used afterwards runs on the kernels (Liger's way);
  `revert_aurora_kernels_to_qwen2()` restores them.

What changes, per part:
- RMSNorm: Qwen2RMSNorm's forward becomes `rms_norm`.
- MLP: gate_proj and up_proj weights are moved into one [2I, H] tensor on the module's first call
  (the two parameters become views of it: state_dict names, values and memory are unchanged), and
  again on the first call after they stopped being its views (the model moved or converted with
  `.to()`, or loaded with `assign=True`); forward is one matmul, `silu_and_mul`, down_proj.
- Rotary: transformers' module-level `apply_rotary_pos_emb` in modeling_qwen2, which the attention
  calls, is replaced by a dispatcher: `apply_rotary` inside a patched instance's forward (a
  thread-local says which), transformers' own elsewhere; the class-level patch makes it `apply_rotary`
  everywhere.
- Attention: the "aurora" entry of transformers' attention registry (integrations/_attention.py:
  padded batches run unpadded through `attention_varlen`), selected on the patched instance, in a
  copy of its config that it takes (the config may be another model's too) (class level:
  registered, for `attn_implementation="aurora"`).
"""

from __future__ import annotations

import functools
import threading
import types

import torch
from torch.nn import functional as F

import aurora_kernels as ak
from aurora_kernels._validation import check_backend
from aurora_kernels.integrations._attention import register_attention, select_attention
from aurora_kernels.integrations._undo import record_undo

# `rotary_backend`: the backend of the patched instance whose forward this thread is running (absent
# or None: none). A threading.local rather than a ContextVar: torch.compile traces its reads and
# writes, where a ContextVar's get and set break the graph (in every layer); a forward is synchronous,
# so no other task of the thread runs inside it.
_running = threading.local()
_ORIGINALS: dict[str, object] = {}  # what the class-level patch replaced: name -> original


def _rms_norm_forward(self, hidden_states):
    return ak.rms_norm(hidden_states, self.weight, self.variance_epsilon, backend=getattr(self, "_aurora_backend", "triton"))


def _mlp_forward(self, x):
    if getattr(self, "_aurora_gate_up", None) is None or not (torch.compiler.is_compiling() or _still_fused(self)):
        _fuse_gate_up(self)
    gate_up = F.linear(x, self._aurora_gate_up, self._aurora_gate_up_bias)
    return self.down_proj(ak.silu_and_mul(gate_up, backend=getattr(self, "_aurora_backend", "triton")))


def _parameter_addresses(mlp) -> tuple:
    gate, up = mlp.gate_proj, mlp.up_proj
    return (gate.weight.data_ptr(), up.weight.data_ptr(),
            None if gate.bias is None else gate.bias.data_ptr(), None if up.bias is None else up.bias.data_ptr())  # fmt: skip


def _still_fused(mlp) -> bool:
    """Whether gate_proj's and up_proj's weights (and biases) are still the two halves of the fused
    tensors, as _fuse_gate_up left them. They stop being so when the module is converted (`.to()`,
    `.half()`, `.cuda()` give each parameter memory of its own, while the fused tensors keep theirs)
    or given new parameters (`load_state_dict(..., assign=True)`): the fused tensors then hold the old
    dtype, device or values, and are made again. Data pointers, so eager calls only: a compiled
    graph guards on the tensors' dtype and device."""
    return _parameter_addresses(mlp) == mlp._aurora_fused_addresses


def _fuse_gate_up(mlp) -> None:
    """gate_proj's and up_proj's weights (and biases, where they have them: Qwen2.5-VL's vision MLP)
    become views of one [2I, H] tensor ([2I]), so one matmul computes both halves."""
    for part in ("weight", "bias"):
        gate, up = getattr(mlp.gate_proj, part), getattr(mlp.up_proj, part)
        if gate is None:
            mlp._aurora_gate_up_bias = None
            continue
        fused = torch.cat([gate.detach(), up.detach()])
        rows = gate.shape[0]
        setattr(mlp.gate_proj, part, torch.nn.Parameter(fused[:rows], requires_grad=False))
        setattr(mlp.up_proj, part, torch.nn.Parameter(fused[rows:], requires_grad=False))
        setattr(mlp, "_aurora_gate_up" if part == "weight" else "_aurora_gate_up_bias", fused)
    mlp._aurora_fused_addresses = _parameter_addresses(mlp)


def _kernel_rotary(q, k, cos, sin, unsqueeze_dim: int = 1, *, backend: str):
    """q [B, H, L, D], k [B, Hkv, L, D], cos/sin [B, L, D] (transformers' layout): the kernel reads
    the [B, L, H, D] views, no copies."""
    if unsqueeze_dim != 1:
        raise ValueError(f"unsqueeze_dim: expected 1 (q, k as [B, H, L, D]), got {unsqueeze_dim}")
    q_rot, k_rot = ak.apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin, backend=backend)
    return q_rot.transpose(1, 2), k_rot.transpose(1, 2)


def _install_rotary_dispatcher(module, name: str = "apply_rotary_pos_emb", kernel=_kernel_rotary) -> None:
    """module.<name> (transformers' rotary function that the attention calls) -> a dispatcher (once):
    kernel(q, k, cos, sin, *rest, backend=...) inside a patched instance's forward, transformers'
    function elsewhere."""
    if getattr(getattr(module, name), "_aurora_dispatcher", False):
        return
    original = getattr(module, name)

    def dispatcher(q, k, cos, sin, *args, **kwargs):
        backend = getattr(_running, "rotary_backend", None)
        if backend is None:
            return original(q, k, cos, sin, *args, **kwargs)
        return kernel(q, k, cos, sin, *args, backend=backend, **kwargs)

    dispatcher._aurora_dispatcher = True
    setattr(module, name, dispatcher)


def _with_rotary_backend(forward, backend: str):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        previous = getattr(_running, "rotary_backend", None)
        _running.rotary_backend = backend
        try:
            return forward(*args, **kwargs)
        finally:
            _running.rotary_backend = previous

    return run


def patch_qwen2(model, *, rms_norm=True, rotary=True, mlp=True, attention=True, backend="triton"):
    """Patch a transformers Qwen2ForCausalLM (or Qwen2Model) in place, this instance only; returns
    it. `unpatch(model)` restores it."""
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    check_backend(backend)
    if not isinstance(model, (qwen2.Qwen2ForCausalLM, qwen2.Qwen2Model)):
        raise TypeError(f"model: expected a transformers Qwen2ForCausalLM or Qwen2Model, got {type(model).__name__}")
    if mlp and model.config.hidden_act != "silu":  # checked before anything is patched
        raise ValueError(f"model.config.hidden_act: expected 'silu' (SwiGLU), got {model.config.hidden_act!r}")
    for module in model.modules():
        if rms_norm and isinstance(module, qwen2.Qwen2RMSNorm):
            _patch_forward(model, module, _rms_norm_forward, backend)
        if mlp and isinstance(module, qwen2.Qwen2MLP):
            _patch_forward(model, module, _mlp_forward, backend)
    if rotary:
        _install_rotary_dispatcher(qwen2)
        model.forward = _with_rotary_backend(model.forward, backend)
        record_undo(model, lambda: model.__dict__.pop("forward", None))
    if attention:
        select_attention(model, model)
        for module in model.modules():
            module._aurora_backend = backend
    return model


def _patch_forward(model, module, forward, backend: str) -> None:
    module._aurora_backend = backend
    module.forward = types.MethodType(forward, module)
    record_undo(model, lambda: module.__dict__.pop("forward", None))


def apply_aurora_kernels_to_qwen2(*, rope=True, rms_norm=True, swiglu=True, attention=True, backend="triton") -> None:
    """Every Qwen2 of the process on the kernels, through transformers' classes (Liger's way):
    Qwen2RMSNorm and Qwen2MLP's forwards, modeling_qwen2's rotary function; attention=True
    registers the "aurora" implementation, for `attn_implementation="aurora"`. Undone by
    `revert_aurora_kernels_to_qwen2()`."""
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    check_backend(backend)

    def replace(name, owner, attribute, value):
        _ORIGINALS.setdefault(name, getattr(owner, attribute))
        setattr(owner, attribute, value)

    if rms_norm:
        replace("Qwen2RMSNorm.forward", qwen2.Qwen2RMSNorm, "forward", lambda self, x: ak.rms_norm(
            x, self.weight, self.variance_epsilon, backend=backend))  # fmt: skip
    if swiglu:
        replace("Qwen2MLP.forward", qwen2.Qwen2MLP, "forward", _with_backend(_mlp_forward, backend))
    if rope:
        # *args, **kwargs: transformers 4.54's position_ids, which its function ignores too
        replace("apply_rotary_pos_emb", qwen2, "apply_rotary_pos_emb", lambda q, k, cos, sin, *args, unsqueeze_dim=1, **kwargs:
                _kernel_rotary(q, k, cos, sin, unsqueeze_dim, backend=backend))  # fmt: skip
    if attention:
        register_attention()


def _with_backend(forward, backend: str):
    def run(self, *args):
        self._aurora_backend = backend
        return forward(self, *args)

    return run


def revert_aurora_kernels_to_qwen2() -> None:
    """Undo apply_aurora_kernels_to_qwen2: transformers' classes and rotary function as they were."""
    from transformers.models.qwen2 import modeling_qwen2 as qwen2

    owners = {"Qwen2RMSNorm.forward": (qwen2.Qwen2RMSNorm, "forward"), "Qwen2MLP.forward": (qwen2.Qwen2MLP, "forward"),
              "apply_rotary_pos_emb": (qwen2, "apply_rotary_pos_emb")}  # fmt: skip
    for name, original in list(_ORIGINALS.items()):
        owner, attribute = owners[name]
        setattr(owner, attribute, original)
        del _ORIGINALS[name]
