"""Drop-in patches for third-party models (transformers as the optional extra `hf`)."""

from aurora_kernels.integrations.qwen2 import patch_qwen2
from aurora_kernels.integrations.siglip import patch_siglip

__all__ = ["patch_qwen2", "patch_siglip"]
