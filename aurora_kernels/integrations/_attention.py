"""The "aurora" entry of transformers' attention registry, shared by the model patches: the module's
q, k, v ([B, H, L, D], transformers' layout) through this package's attention, causal as the module
says (Qwen2 yes, SigLIP's vision tower no), GQA by index.

Padded batches run unpadded, as flash-attn's entry does: the entry's mask builder is transformers'
flash_attention_mask, which hands over the 2-D padding mask [B, tokens seen] (None where nothing is
padded). The real queries and keys are gathered into packed sequences, attention_varlen runs over
them (causal aligned bottom-right within each sequence, which is right for left and right padding,
prefill and decode), and the outputs go back to their padded places (0 at padding). A key past the
mask's length (the unwritten slots of a static cache) is padding. Gathering the real rows needs
their count: one read of the mask a call (a host sync), as flash-attn's transformers entry has.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

import aurora_kernels as ak
from aurora_kernels.integrations._undo import record_undo

ATTENTION_NAME = "aurora"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs):
    if sliding_window is not None:
        raise ValueError(f"sliding_window: expected None (full attention), got {sliding_window}")
    if dropout:
        raise ValueError(f"dropout: expected 0 (inference only), got {dropout}")
    backend = getattr(module, "_aurora_backend", "triton")
    causal = getattr(module, "is_causal", True)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # [B, L, H, D] views, no copies
    if attention_mask is None:
        return ak.attention(q, k, v, causal=causal, softmax_scale=scaling, backend=backend), None
    if attention_mask.ndim != 2:
        raise ValueError(
            f"attention_mask: expected the 2-D padding mask [B, tokens] that the aurora entry's mask builder makes, got "
            f"shape {list(attention_mask.shape)} (a model that builds its own 4-D mask is not supported)"
        )
    return _unpadded_attention(q, k, v, attention_mask.bool(), causal, scaling, backend), None


def _unpadded_attention(q, k, v, mask, causal: bool, scaling, backend: str) -> torch.Tensor:
    """q [B, Lq, Hq, D], k and v [B, Lk, Hkv, D], mask [B, S] (S <= Lk: key j < S is real where
    mask[b, j]; the queries are the last Lq of the S) -> [B, Lq, Hq, D], 0 at padded queries."""
    batch, len_q, heads_q, head_dim = q.shape
    len_k, seen = k.shape[1], mask.shape[1]
    key_real = mask if seen == len_k else F.pad(mask, (0, len_k - seen), value=False)
    query_real = mask[:, seen - len_q : seen]
    query_rows = query_real.flatten().nonzero().flatten()
    key_rows = key_real.flatten().nonzero().flatten()
    query_lengths, key_lengths = query_real.sum(1, dtype=torch.int32), key_real.sum(1, dtype=torch.int32)
    cu_q = F.pad(query_lengths.cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = F.pad(key_lengths.cumsum(0, dtype=torch.int32), (1, 0))
    max_q, max_k = (int(n) for n in torch.stack([query_lengths.max(), key_lengths.max()]).tolist())
    out = ak.attention_varlen(
        q.reshape(batch * len_q, heads_q, head_dim)[query_rows],
        k.reshape(batch * len_k, *k.shape[2:])[key_rows],
        v.reshape(batch * len_k, *v.shape[2:])[key_rows],
        cu_q, cu_k, max_q, max_k, causal=causal, softmax_scale=scaling, backend=backend,
    )  # fmt: skip
    padded = out.new_zeros(batch * len_q, heads_q, head_dim).index_copy_(0, query_rows, out)
    return padded.view(batch, len_q, heads_q, head_dim)


def register_attention() -> None:
    """The "aurora" attention implementation in transformers' registries (idempotent): then
    `from_pretrained(..., attn_implementation="aurora")` and `model.set_attn_implementation("aurora")`
    select it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, flash_attention_mask)


def select_attention(model, owner) -> None:
    """`owner` (the patched model, or the part of it whose attention is ours) on the "aurora"
    implementation, undone by unpatch(model)."""
    register_attention()
    previous = owner.config._attn_implementation
    owner.set_attn_implementation(ATTENTION_NAME)
    record_undo(model, lambda: owner.set_attn_implementation(previous))
