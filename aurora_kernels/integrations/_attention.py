"""The "aurora" entry of transformers' attention registry, shared by the model patches: the module's
q, k, v ([B, H, L, D], transformers' layout) through `attention` ([B, L, H, D] views, no copies),
causal as the module says (Qwen2 yes, SigLIP's vision tower no), GQA by index."""

from __future__ import annotations

import aurora_kernels as ak

ATTENTION_NAME = "aurora"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None, **kwargs):
    if attention_mask is not None:
        raise ValueError(
            "attention_mask: the aurora attention runs without a padding mask, got a mask (prompts of different "
            "lengths padded into one batch): run them one by one, or use aurora_kernels.model, which packs them"
        )
    if sliding_window is not None:
        raise ValueError(f"sliding_window: expected None (full attention), got {sliding_window}")
    if dropout:
        raise ValueError(f"dropout: expected 0 (inference only), got {dropout}")
    backend = getattr(module, "_aurora_backend", "triton")
    out = ak.attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                       causal=getattr(module, "is_causal", True), softmax_scale=scaling, backend=backend)  # fmt: skip
    return out, None


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, _attention)
    # sdpa's mask builder returns None when the batch has no padding: the only case _attention runs
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
