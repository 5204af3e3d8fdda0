"""Text and images in, text out, on transformers' own tokenizer and image processor: everything built
here (a small BPE tokenizer trained with `tokenizers`, saved with a chat template and a
generation_config.json; a saved SigLIP image processor; PNG images written with Pillow). Nothing is
downloaded."""

import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")

from aurora_kernels import generate  # noqa: E402
from aurora_kernels.model import AuroraEdgeV  # noqa: E402
from aurora_kernels.model.processor import AuroraProcessor  # noqa: E402
from tests.model.test_loading import TINY  # noqa: E402

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEXT = ["what is in this picture?", "a cat sits on a mat.", "describe the colours of the image in one line.",
        "the quick brown fox jumps over the lazy dog"]  # fmt: skip


@pytest.fixture(scope="module")
def directories(tmp_path_factory):
    """A tiny model's LLM directory (with a tokenizer and a generation config) and vision directory
    (with a SigLIP image processor), and our weights file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("tiny-vlm")
    torch.manual_seed(0)
    model = AuroraEdgeV(TINY, backend="reference")
    llm_dir, vision_dir, weights = root / "qwen2", root / "siglip", root / "aurora.safetensors"
    model.save_pretrained(llm_dir, vision_dir, weights)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(TEXT * 20, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>")  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(llm_dir)
    (llm_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [fast.convert_tokens_to_ids("<|endoftext|>")]}))
    size = TINY.vision.image_size
    transformers.SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(vision_dir)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, mode, shape in (("rgb.png", "RGB", (50, 70, 3)), ("rgba.png", "RGBA", (90, 40, 4)), ("grey.png", "L", (33, 33))):
        Image.fromarray((rng.random(shape) * 255).astype("uint8"), mode).save(images / name)
    return llm_dir, vision_dir, weights, images


def test_text_round_trips_and_the_chat_template_is_applied(directories):
    llm_dir, vision_dir, _, _ = directories
    processor = AuroraProcessor.from_pretrained(llm_dir, vision_dir)
    for text in TEXT:
        assert processor.decode(processor.tokenizer(text)["input_ids"]) == text
    [ids] = processor.input_ids(["what is in this picture?"])
    assert ids.dtype == torch.int64
    shown = processor.tokenizer.decode(ids.tolist())
    assert shown == "<|im_start|>user\nwhat is in this picture?<|im_end|>\n<|im_start|>assistant\n"
    tokenizer = processor.tokenizer
    # the tokenizer's EOS, then generation_config.json's
    assert processor.eos_token_ids == (
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )


def test_images_are_preprocessed_as_transformers_does(directories):
    """Paths, PIL images of any mode and size, uint8 and float tensors: the pixel values SigLIP's
    processor gives for the image converted to RGB."""
    llm_dir, vision_dir, _, images = directories
    processor = AuroraProcessor.from_pretrained(llm_dir, vision_dir)
    hf = transformers.AutoImageProcessor.from_pretrained(vision_dir)
    from transformers.image_transforms import convert_to_rgb

    for name in ("rgb.png", "rgba.png", "grey.png"):
        image = Image.open(images / name)
        expected = hf(images=[convert_to_rgb(image)], return_tensors="pt")["pixel_values"]
        assert expected.shape == (1, 3, TINY.vision.image_size, TINY.vision.image_size)
        torch.testing.assert_close(processor.pixel_values([images / name]), expected)
        torch.testing.assert_close(processor.pixel_values([str(images / name)]), expected)
        torch.testing.assert_close(processor.pixel_values([image]), expected)
    rgb = torch.from_numpy(np.asarray(Image.open(images / "rgb.png")))  # [H, W, 3] uint8
    expected = processor.pixel_values([images / "rgb.png"])
    for tensor in (
        rgb,
        rgb.permute(2, 0, 1),
        rgb.permute(2, 0, 1).float() / 255,
        rgb.numpy(),
        rgb.numpy()[::-1, ::-1][::-1, ::-1],
    ):
        torch.testing.assert_close(processor.pixel_values([tensor]), expected)
    with pytest.raises(FileNotFoundError, match="images\\[0\\]: no such image file"):
        processor.pixel_values([images / "missing.png"])
    (images / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="images\\[0\\]: not an image file that PIL can read: .*notes.png"):
        processor.pixel_values([images / "notes.png"])
    (images / "cut.png").write_bytes((images / "rgb.png").read_bytes()[:200])  # opens, fails to load
    with pytest.raises(ValueError, match="images\\[0\\]: not an image file that PIL can read: .*cut.png"):
        processor.pixel_values([images / "cut.png"])
    with pytest.raises(TypeError, match="images\\[1\\]: expected a PIL image, a path, a tensor or a numpy array, got int"):
        processor.pixel_values([rgb, 3])
    with pytest.raises(ValueError, match="images\\[0\\]: expected an image tensor"):
        processor.pixel_values([torch.zeros(5, 6, 7, dtype=torch.uint8)])
    # float images outside 0..1 were clamped into a wrong image without a word (a 0..255 image in
    # floats came out white); NaN, an empty image and a meta tensor are refused too
    floats = rgb.permute(2, 0, 1).float()
    for bad, message in ((floats, "expected float values in 0..1 \\(or a uint8 image for 0..255\\), got values in 0\\.\\.25"),
                         ((floats - 128) / 64, "expected float values in 0..1"),
                         (torch.full((3, 4, 4), float("nan")), "expected float values in 0..1 .*, got values in nan..nan"),
                         (rgb[:0], "expected an image with pixels, got shape \\[0, 70, 3\\]"),
                         (floats.to("meta"), "expected an image tensor with values, got one on the meta device")):  # fmt: skip
        with pytest.raises(ValueError, match="images\\[0\\]: " + message):
            processor.pixel_values([bad])


def test_missing_tokenizer_or_image_processor_is_named(directories, tmp_path):
    llm_dir, vision_dir, _, _ = directories
    with pytest.raises(FileNotFoundError, match="llm_dir: no such directory"):
        AuroraProcessor.from_pretrained(tmp_path / "nowhere", vision_dir)
    with pytest.raises(FileNotFoundError, match="expected an image processor \\(preprocessor_config.json\\)"):
        AuroraProcessor.from_pretrained(llm_dir, tmp_path)
    with pytest.raises(ValueError, match="expected a tokenizer"):
        AuroraProcessor.from_pretrained(tmp_path, vision_dir)


def test_chat_answers_in_text_and_streams_it(directories):
    llm_dir, vision_dir, weights, images = directories
    model = AuroraEdgeV.from_pretrained(llm_dir, vision_dir, weights, backend="reference", dtype=torch.float32)
    processor = AuroraProcessor.from_pretrained(llm_dir, vision_dir)
    prompts = ["what is in this picture?", "describe the colours of the image in one line."]
    paths = [images / "rgb.png", images / "rgba.png"]
    pieces = {0: [], 1: []}
    answers = model.chat(processor, paths, prompts, max_new_tokens=6, streamer=lambda b, text: pieces[b].append(text))
    assert all(isinstance(a, str) for a in answers)
    assert ["".join(pieces[b]) for b in (0, 1)] == answers
    # the same tokens as generate on the processor's inputs, decoded
    pixel_values, ids = processor(paths, prompts)
    tokens = model.generate(pixel_values, ids, 6, eos_token_id=list(processor.eos_token_ids))
    assert answers == [processor.decode(t) for t in tokens]
    padded = model.generate(pixel_values, ids, 6, eos_token_id=list(processor.eos_token_ids), pad_token_id=0)
    assert padded.dtype == torch.int64 and padded.shape == (2, max(len(t) for t in tokens))
    assert model.chat(processor, paths, prompts, max_new_tokens=6, do_sample=True, seed=3) == \
        model.chat(processor, paths, prompts, max_new_tokens=6, do_sample=True, seed=3)  # fmt: skip


def test_the_command_line_answers_about_image_files(directories, capsys):
    llm_dir, vision_dir, weights, images = directories
    argv = ["--llm-dir", str(llm_dir), "--vision-dir", str(vision_dir), "--aurora-weights", str(weights),
            "--image", str(images / "rgb.png"), "--prompt", "what is in this picture?",
            "--image", str(images / "grey.png"), "--prompt", "a cat sits on a mat.",
            "--max-new-tokens", "4", "--backend", "reference", "--device", "cpu"]  # fmt: skip
    assert generate.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("text: ") == 2 and "prefill:" in out
    with pytest.raises(SystemExit):
        generate.parse_args([*argv[:6], "--image", str(images / "rgb.png")])  # an image without its prompt
    assert "--image and --prompt: expected one prompt per image" in capsys.readouterr().err
