"""Model configs and the two presets (SPEC, "The model").

`preset("aurora-edge-v-2b")` has the SPEC's shapes exactly; `preset("tiny")` has the same structure
with small widths and two layers per stack: what the CPU tests and the interpreter run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

COMPRESSORS = ("mlp", "pool", "none")


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP-style ViT on a fixed image size (no dynamic resolution)."""

    image_size: int = 256
    patch_size: int = 16
    hidden_size: int = 1152
    num_layers: int = 27
    num_heads: int = 16
    intermediate_size: int = 4304
    layer_norm_eps: float = 1e-6
    num_channels: int = 3

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class LLMConfig:
    """Qwen2 decoder (Qwen2.5-1.5B shape)."""

    vocab_size: int = 151936
    hidden_size: int = 1536
    num_layers: int = 28
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int = 128
    intermediate_size: int = 8960
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True


@dataclass(frozen=True)
class CompressorConfig:
    """256 -> 64 visual tokens: an MLP over the token axis ("mlp"), k x k pooling over the patch grid
    ("pool"), or nothing ("none": every visual token enters the LLM, the paper's baseline)."""

    kind: str = "mlp"
    out_tokens: int = 64
    hidden: int = 1024  # the MLP's hidden width H (w1 [H, N], w2 [M, H])
    activation: str = "gelu_tanh"
    pool_kernel: int = 2
    pool_mode: str = "avg"


@dataclass(frozen=True)
class AuroraConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    compressor: CompressorConfig = field(default_factory=CompressorConfig)

    def __post_init__(self):
        for part in ("vision", "llm", "compressor"):
            for f in dataclasses.fields(getattr(self, part)):
                value = getattr(getattr(self, part), f.name)
                if f.type == "int" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                    raise ValueError(f"{part}.{f.name}: expected a positive int, got {value!r}")
        if self.compressor.kind not in COMPRESSORS:
            raise ValueError(f"compressor: expected one of {COMPRESSORS}, got {self.compressor.kind!r}")
        if self.compressor.kind == "pool":
            if self.vision.grid_size % self.compressor.pool_kernel:
                raise ValueError(
                    f"compressor.pool_kernel: expected a divisor of the {self.vision.grid_size}x{self.vision.grid_size} "
                    f"patch grid, got {self.compressor.pool_kernel}"
                )
        if self.llm.num_heads % self.llm.num_kv_heads:
            raise ValueError(
                f"llm.num_kv_heads: expected a divisor of {self.llm.num_heads} query heads, got {self.llm.num_kv_heads}"
            )

    @property
    def visual_tokens(self) -> int:
        """Visual tokens that enter the LLM."""
        kind = self.compressor.kind
        if kind == "none":
            return self.vision.num_patches
        if kind == "pool":
            return (self.vision.grid_size // self.compressor.pool_kernel) ** 2
        return self.compressor.out_tokens


_PRESETS = {
    "aurora-edge-v-2b": AuroraConfig(),
    "tiny": AuroraConfig(
        vision=VisionConfig(image_size=64, patch_size=8, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256),
        llm=LLMConfig(vocab_size=1000, hidden_size=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                      intermediate_size=512, max_position_embeddings=1024),
        compressor=CompressorConfig(out_tokens=16, hidden=64),
    ),
}  # fmt: skip
PRESETS = tuple(_PRESETS)


def preset(name: str, compressor: str = "mlp", **overrides) -> AuroraConfig:
    """A preset config with the compressor kind set; overrides replace fields of the nested configs as
    dicts, e.g. preset("tiny", llm={"num_layers": 3}, compressor_settings={"pool_mode": "max"})."""
    if name not in _PRESETS:
        raise ValueError(f"preset: expected one of {PRESETS}, got {name!r}")
    base = _PRESETS[name]
    parts = {"vision": base.vision, "llm": base.llm, "compressor": dataclasses.replace(base.compressor, kind=compressor)}
    for key, changes in overrides.items():
        target = "compressor" if key == "compressor_settings" else key
        if target not in parts or not isinstance(changes, dict):
            raise ValueError(f"{key}: expected a dict of fields for one of vision, llm, compressor_settings")
        parts[target] = dataclasses.replace(parts[target], **changes)
    return AuroraConfig(**parts)
