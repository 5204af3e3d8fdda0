"""Drop-in patches for third-party models (transformers as the optional extra `hf`): an instance
(`patch_qwen2`, `patch_qwen2_vl`, `patch_siglip`; `unpatch`, or the `patched` context manager) or the transformers
classes themselves (`apply_aurora_kernels_to_qwen2`, `revert_aurora_kernels_to_qwen2`)."""

from aurora_kernels.integrations._undo import patched, unpatch
from aurora_kernels.integrations.qwen2 import apply_aurora_kernels_to_qwen2, patch_qwen2, revert_aurora_kernels_to_qwen2
from aurora_kernels.integrations.qwen2_vl import patch_qwen2_vl
from aurora_kernels.integrations.siglip import patch_siglip

__all__ = ["apply_aurora_kernels_to_qwen2", "patch_qwen2", "patch_qwen2_vl", "patch_siglip", "patched", "revert_aurora_kernels_to_qwen2",
           "unpatch"]  # fmt: skip
