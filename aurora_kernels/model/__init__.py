"""The AuroraEdgeV reference model, on the package's ops (SPEC, "The model").

from aurora_kernels.model import AuroraEdgeV, preset
model = AuroraEdgeV(preset("tiny", compressor="mlp"), backend="triton")
tokens = model.generate(pixel_values, [prompt_ids_0, prompt_ids_1], max_new_tokens=16)
"""

from aurora_kernels.model.aurora import AuroraEdgeV
from aurora_kernels.model.config import PRESETS, AuroraConfig, CompressorConfig, LLMConfig, VisionConfig, preset
from aurora_kernels.model.kv_cache import KVCache
from aurora_kernels.model.options import RunOptions

__all__ = [
    "AuroraEdgeV",
    "AuroraConfig",
    "CompressorConfig",
    "KVCache",
    "LLMConfig",
    "PRESETS",
    "RunOptions",
    "VisionConfig",
    "preset",
]
