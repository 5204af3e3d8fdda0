"""Text and images in, what `generate` takes out, and token ids back to text, on transformers' own
classes: the tokenizer of the LLM's directory (AutoTokenizer, its chat template) and the image
processor of the vision tower's (AutoImageProcessor: SigLIP's resize, rescale and normalise).

Images may be PIL images of any size and mode, paths to image files, or tensors or numpy arrays:
uint8 with values 0..255, or float with values 0..1, as [C, H, W] or [H, W, C] (C 1, 3 or 4) or
[H, W] (a last dim of 1, 3 or 4 is taken for the channels). A float image outside 0..1 (a 0..255
image in floats, or one already normalised), with NaN or inf, or with no pixels is refused: each
would be processed into a wrong image without a word. Every one is made an RGB PIL image first, as
SigLIP's processor converts them (transformers' convert_to_rgb: an alpha channel is composited over
white, grey is repeated), then processed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


class AuroraProcessor:
    def __init__(self, tokenizer, image_processor, eos_token_ids: tuple[int, ...] = ()):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        own = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
        self.eos_token_ids = tuple(dict.fromkeys((*own, *eos_token_ids)))

    @classmethod
    def from_pretrained(cls, llm_dir, vision_dir) -> "AuroraProcessor":
        """The tokenizer (and generation_config.json's EOS ids, when there is one) from the LLM's
        directory, the image processor from the vision tower's; a missing one is an error naming
        the directory."""
        from transformers import AutoImageProcessor, AutoTokenizer

        for name, directory, what in (("llm_dir", llm_dir, "a tokenizer"), ("vision_dir", vision_dir, "an image processor")):
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"{name}: no such directory: {directory}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(llm_dir)
        except (OSError, ValueError) as e:
            raise ValueError(f"{llm_dir}: expected a tokenizer (tokenizer.json or tokenizer_config.json): {e}") from None
        if not os.path.isfile(os.path.join(vision_dir, "preprocessor_config.json")):
            raise FileNotFoundError(f"{vision_dir}: expected an image processor (preprocessor_config.json)")
        image_processor = AutoImageProcessor.from_pretrained(vision_dir)
        return cls(tokenizer, image_processor, _generation_eos_ids(llm_dir))

    def pixel_values(self, images) -> torch.Tensor:
        """images (a list; see the module) -> float32 [B, 3, H, W] at the image processor's size."""
        if not isinstance(images, (list, tuple)) or not images:
            raise TypeError("images: expected a non-empty list of PIL images, paths or tensors")
        rgb = [_to_rgb(image, f"images[{b}]") for b, image in enumerate(images)]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"].to(torch.float32)

    def input_ids(self, prompts) -> list[torch.Tensor]:
        """Each prompt as a user turn of the tokenizer's chat template, ready for the answer (the raw
        text where the tokenizer has no template) -> int64 token ids."""
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts: expected a list of strings")
        if self.tokenizer.chat_template is None:
            return [torch.tensor(self.tokenizer(p)["input_ids"], dtype=torch.int64) for p in prompts]
        return [
            torch.tensor(self.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                                            tokenize=True, return_dict=False), dtype=torch.int64)
            for p in prompts
        ]  # fmt: skip

    def __call__(self, images, prompts) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(pixel_values, input_ids) for generate: one prompt per image."""
        if isinstance(prompts, (list, tuple)) and isinstance(images, (list, tuple)) and len(images) != len(prompts):
            raise ValueError(f"prompts: expected one per image ({len(images)}), got {len(prompts)}")
        return self.pixel_values(images), self.input_ids(prompts)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def _generation_eos_ids(llm_dir) -> tuple[int, ...]:
    path = os.path.join(llm_dir, "generation_config.json")
    if not os.path.isfile(path):
        return ()
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)


def _to_rgb(image, name: str):
    import numpy as np
    from PIL import Image
    from transformers.image_transforms import convert_to_rgb

    if isinstance(image, (str, Path)):
        path = image
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: no such image file: {path}")
        try:
            image = Image.open(path)
            image.load()
        except OSError as e:  # UnidentifiedImageError, a truncated file, no permission
            raise ValueError(f"{name}: not an image file that PIL can read: {path} ({e})") from None
    elif isinstance(image, (torch.Tensor, np.ndarray)):
        tensor = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.ascontiguousarray(image))
        image = Image.fromarray(_to_uint8_hwc(tensor, name))
    elif not isinstance(image, Image.Image):
        raise TypeError(f"{name}: expected a PIL image, a path, a tensor or a numpy array, got {type(image).__name__}")
    return convert_to_rgb(image)


def _to_uint8_hwc(t: torch.Tensor, name: str):
    """A tensor image as the uint8 [H, W] or [H, W, C] array PIL takes."""
    if t.is_meta:
        raise ValueError(f"{name}: expected an image tensor with values, got one on the meta device")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected an image with pixels, got shape {list(t.shape)}")
    if t.dtype == torch.uint8:
        values = t
    elif t.is_floating_point():
        low, high = t.float().aminmax()
        # half a level of 255 either side: what rounding to uint8 absorbs (NaN fails both tests)
        if not (low >= -0.5 / 255 and high <= 1 + 0.5 / 255):
            raise ValueError(f"{name}: expected float values in 0..1 (or a uint8 image for 0..255), got values in "
                             f"{low.item():g}..{high.item():g}")  # fmt: skip
        values = (t.float().clamp(0, 1) * 255).round().to(torch.uint8)
    else:
        raise TypeError(f"{name}: expected a uint8 (0..255) or float (0..1) image tensor, got {t.dtype}")
    if values.ndim == 3 and values.shape[0] in (1, 3, 4) and values.shape[-1] not in (1, 3, 4):
        values = values.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] not in (3, 4)):
        raise ValueError(f"{name}: expected an image tensor [C, H, W], [H, W, C] (C 1, 3 or 4) or [H, W], got {list(t.shape)}")
    return values.contiguous().cpu().numpy()
