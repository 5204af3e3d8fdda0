"""What each instance patch changed, so that `unpatch(model)` can put it back."""

from __future__ import annotations

import contextlib
import weakref
from typing import Callable

_UNDO: "weakref.WeakKeyDictionary[object, list[Callable[[], None]]]" = weakref.WeakKeyDictionary()


def record_undo(model, undo: Callable[[], None]) -> None:
    _UNDO.setdefault(model, []).append(undo)


def unpatch(model):
    """Undo every patch_* on this instance (its forwards, its attention implementation), latest
    first; returns it. The fused MLP weights stay fused: the same values, the same state dict."""
    for undo in reversed(_UNDO.pop(model, [])):
        undo()
    return model


@contextlib.contextmanager
def patched(model, **options):
    """The model on the kernels inside the block (patch_qwen2, patch_qwen2_vl or patch_siglip, by its
    type, with `options`), as it was after."""
    from aurora_kernels.integrations.qwen2 import patch_qwen2
    from aurora_kernels.integrations.qwen2_vl import patch_qwen2_vl
    from aurora_kernels.integrations.siglip import patch_siglip

    name = type(model).__name__
    patch = patch_siglip if name.startswith("Siglip") else patch_qwen2_vl if "VL" in name else patch_qwen2
    patch(model, **options)
    try:
        yield model
    finally:
        unpatch(model)
