"""Weight loading: checkpoints in transformers' formats, written by the tests (nothing downloaded)."""

import json

import pytest
import torch

from aurora_kernels.model import AuroraEdgeV, preset
from aurora_kernels.model.loading import Checkpoint, qwen2_names, save_aurora_weights, siglip_names
from aurora_kernels.testing import assert_parity

TINY = preset("tiny", llm={"tie_word_embeddings": False})

QWEN2_CONFIG = {"model_type": "qwen2", "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
                "rope_theta": 1e6, "max_position_embeddings": 1024, "tie_word_embeddings": False}  # fmt: skip
SIGLIP_VISION_CONFIG = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "image_size": 64, "patch_size": 8, "hidden_act": "gelu_pytorch_tanh"}  # fmt: skip


def _piece_sizes(ours: str, total: int, pieces: int, cfg):
    """How a fused parameter splits back into transformers' tensors (dim 0)."""
    if pieces == 1:
        return [total]
    if ours.startswith("llm.") and "qkv" in ours:
        kv = cfg.llm.num_kv_heads * cfg.llm.head_dim
        return [total - 2 * kv, kv, kv]
    return [total // pieces] * pieces


def write_checkpoint(directory, config_json, names, gen, shards=1):
    """Random tensors under transformers' names, shaped as `names` needs, as model.safetensors or
    as `shards` files with an index. Returns the tensors."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_json))
    shapes = dict(AuroraEdgeV(TINY, backend="reference").named_parameters())
    tensors = {}
    for ours, theirs in names.items():
        shape = shapes[ours].shape
        for name, rows in zip(theirs, _piece_sizes(ours, shape[0], len(theirs), TINY)):
            tensors[name] = torch.randn((rows, *shape[1:]), generator=gen) * 0.1
    if shards == 1:
        save_file(tensors, directory / "model.safetensors")
        return tensors
    items = sorted(tensors)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in items[s::shards]}
        save_file(part, directory / file)
        weight_map.update(dict.fromkeys(part, file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


@pytest.fixture
def checkpoints(tmp_path, gen):
    cpu_gen = torch.Generator().manual_seed(gen.initial_seed())
    llm = write_checkpoint(tmp_path / "qwen2", QWEN2_CONFIG, qwen2_names(TINY.llm), cpu_gen, shards=3)
    vision = write_checkpoint(tmp_path / "siglip", {"model_type": "siglip_vision_model", **SIGLIP_VISION_CONFIG},
                              siglip_names(TINY.vision), cpu_gen)  # fmt: skip
    return tmp_path, llm, vision


def test_round_trip_sharded_llm_and_vision(checkpoints, device):
    root, llm, vision = checkpoints
    model = AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip", backend="reference", dtype=torch.float32, device=device)
    assert model.config.llm == TINY.llm and model.config.vision == TINY.vision
    params = dict(model.named_parameters())
    for names, tensors in ((qwen2_names(TINY.llm), llm), (siglip_names(TINY.vision), vision)):
        for ours, theirs in names.items():
            assert torch.equal(params[ours].cpu(), torch.cat([tensors[name] for name in theirs]))


def test_aurora_weights_round_trip(checkpoints, tmp_path, device):
    root, _, _ = checkpoints
    first = AuroraEdgeV.from_pretrained(
        root / "qwen2", root / "siglip", compressor="pool", backend="reference", dtype=torch.float32
    )
    save_aurora_weights(first, tmp_path / "aurora.safetensors")
    second = AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip", tmp_path / "aurora.safetensors", compressor="pool",
                                         backend="reference", dtype=torch.float32, device=device)  # fmt: skip
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name].cpu()), name
    with pytest.raises(ValueError, match="compressor: .* holds a 'pool' compressor, got compressor='mlp'"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip", tmp_path / "aurora.safetensors", compressor="mlp")


def test_loading_errors(checkpoints, tmp_path):
    root, llm, _ = checkpoints
    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(QWEN2_CONFIG))
    missing = dict(llm)
    del missing["model.layers.1.self_attn.k_proj.bias"]
    save_file(missing, broken / "model.safetensors")
    with pytest.raises(KeyError, match="checkpoint has no tensor 'model.layers.1.self_attn.k_proj.bias'"):
        AuroraEdgeV.from_pretrained(broken, root / "siglip", dtype=torch.float32)
    wrong = dict(llm, **{"model.norm.weight": torch.ones(200)})
    save_file(wrong, broken / "model.safetensors")
    with pytest.raises(ValueError, match=r"model.norm.weight: expected shape \[256\] \(from config.json\), got \[200\]"):
        AuroraEdgeV.from_pretrained(broken, root / "siglip", dtype=torch.float32)
    (broken / "config.json").write_text(json.dumps({**QWEN2_CONFIG, "model_type": "llama"}))
    with pytest.raises(ValueError, match="config.json: expected model_type 'qwen2', got 'llama'"):
        AuroraEdgeV.from_pretrained(broken, root / "siglip")
    (root / "siglip" / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ValueError, match="expected model_type 'siglip' or 'siglip_vision_model'"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")
    with pytest.raises(FileNotFoundError, match="expected a config.json"):
        AuroraEdgeV.from_pretrained(tmp_path / "nowhere")


# ------------------------------------------------------------ against transformers, same weights


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def _randomise(module, gen):
    """transformers initialises biases and norms to constants; random values test their mapping too."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llm_logits_match_transformers(transformers, tied, tmp_path, device, gen):
    cpu_gen = torch.Generator().manual_seed(gen.initial_seed())
    hf_config = transformers.Qwen2Config(
        **{k: v for k, v in QWEN2_CONFIG.items() if k != "model_type"} | {"tie_word_embeddings": tied}
    )
    hf = transformers.Qwen2ForCausalLM(hf_config).eval()
    _randomise(hf, cpu_gen)
    if tied:
        hf.tie_weights()
    hf.save_pretrained(tmp_path / "qwen2", max_shard_size="1MB")
    hf_vision = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SIGLIP_VISION_CONFIG)).eval()
    hf_vision.save_pretrained(tmp_path / "siglip")
    model = AuroraEdgeV.from_pretrained(
        tmp_path / "qwen2", tmp_path / "siglip", backend="reference", dtype=torch.float32, device=device
    )
    assert model.config.llm.tie_word_embeddings == tied
    ids = torch.randint(0, 1000, (2, 11), generator=cpu_gen)
    with torch.no_grad():
        expected = hf(ids).logits
        ours = model.llm(ids.to(device))
    assert_parity(ours, expected.double(), torch.float32, "Qwen2 logits vs transformers")


@pytest.mark.parametrize("checkpoint", ["SiglipVisionModel", "SiglipModel"])
def test_vision_matches_transformers(transformers, checkpoint, tmp_path, device, gen):
    cpu_gen = torch.Generator().manual_seed(gen.initial_seed())
    vision_config = transformers.SiglipVisionConfig(**SIGLIP_VISION_CONFIG)
    if checkpoint == "SiglipModel":
        text = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
        hf_full = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=SIGLIP_VISION_CONFIG)).eval()
        _randomise(hf_full, cpu_gen)
        hf_full.save_pretrained(tmp_path / "siglip")
        hf = hf_full.vision_model
    else:
        hf = transformers.SiglipVisionModel(vision_config).eval()
        _randomise(hf, cpu_gen)
        hf.save_pretrained(tmp_path / "siglip")
    hf_llm = transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(**{k: v for k, v in QWEN2_CONFIG.items() if k != "model_type"})
    )
    hf_llm.save_pretrained(tmp_path / "qwen2")
    model = AuroraEdgeV.from_pretrained(
        tmp_path / "qwen2", tmp_path / "siglip", backend="reference", dtype=torch.float32, device=device
    )
    pixel_values = torch.randn((2, 3, 64, 64), generator=cpu_gen)
    with torch.no_grad():
        expected = hf(pixel_values=pixel_values).last_hidden_state
        ours = model.vision(pixel_values.to(device))
    assert_parity(ours, expected.double(), torch.float32, "SigLIP last_hidden_state vs transformers")


def test_config_and_metadata_errors(checkpoints, tmp_path):
    root, _, _ = checkpoints
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"projector.fc1.weight": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="expected 'compressor' settings in the safetensors metadata"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip", plain)
    (root / "qwen2" / "config.json").write_text(json.dumps({**QWEN2_CONFIG, "rope_scaling": {"type": "yarn", "factor": 4}}))
    with pytest.raises(ValueError, match="config.json: expected plain RoPE"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")
    (root / "qwen2" / "config.json").write_text(json.dumps(QWEN2_CONFIG))
    (root / "siglip" / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model", **SIGLIP_VISION_CONFIG,
                                                             "hidden_act": "quick_gelu"}))  # fmt: skip
    with pytest.raises(ValueError, match="config.json: expected hidden_act 'gelu_pytorch_tanh' or 'gelu_new', got 'quick_gelu'"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")


# Qwen2 fields that change the forward pass and values this model does not compute: each refused by
# name (before, each loaded without a word and gave logits 1e-2 to 0.4 away from transformers)
REFUSED_QWEN2_FIELDS = [
    ({"hidden_act": "gelu"}, "expected hidden_act 'silu', got 'gelu'"),
    ({"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}, "expected use_sliding_window False, got True"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "expected layer_types all 'full_attention', got \\['sliding_attention'\\]"),
    ({"partial_rotary_factor": 0.5}, "expected partial_rotary_factor 1.0, got 0.5"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.25}},
     "rope_parameters: expected partial_rotary_factor 1.0, got 0.25"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "expected plain RoPE"),
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}},
     "expected an unquantized checkpoint, got a quantization_config \\(quant_method 'fp8'\\)"),
]  # fmt: skip


@pytest.mark.parametrize("fields, message", REFUSED_QWEN2_FIELDS, ids=lambda v: next(iter(v)) if isinstance(v, dict) else "")
def test_config_fields_that_change_the_math_are_refused_by_name(fields, message, checkpoints):
    root, _, _ = checkpoints
    (root / "qwen2" / "config.json").write_text(json.dumps({**QWEN2_CONFIG, **fields}))
    with pytest.raises(ValueError, match=f"qwen2/config.json.*{message}"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")


def test_config_fields_at_the_computed_values_load(checkpoints):
    """The same fields at the values this model computes (as transformers writes them) load."""
    root, _, _ = checkpoints
    same = {"hidden_act": "silu", "use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 2,
            "layer_types": ["full_attention"] * 2, "rope_scaling": None}  # fmt: skip
    (root / "qwen2" / "config.json").write_text(json.dumps({**QWEN2_CONFIG, **same}))
    (root / "siglip" / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model", **SIGLIP_VISION_CONFIG,
                                                             "hidden_act": "gelu_new"}))  # fmt: skip
    assert AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip", backend="reference").config.llm == TINY.llm


def test_quantized_tensors_are_refused_not_cast(checkpoints, tmp_path):
    """A float8 or int8 tensor is a quantized checkpoint's: cast to bf16 without its scales it made a
    wrong model without a word."""
    root, llm, _ = checkpoints
    from safetensors.torch import save_file

    quantized = tmp_path / "quantized"
    quantized.mkdir()
    (quantized / "config.json").write_text(json.dumps(QWEN2_CONFIG))
    for dtype in (torch.float8_e4m3fn, torch.int8):
        name = "model.layers.0.mlp.down_proj.weight"
        save_file(dict(llm, **{name: llm[name].to(dtype)}), quantized / "model.safetensors")
        with pytest.raises(
            ValueError, match=f"tensor '{name}': expected float16, bfloat16, float32 or float64 weights, got {dtype}"
        ):
            AuroraEdgeV.from_pretrained(quantized, root / "siglip")


def test_files_that_cannot_be_read_are_named(checkpoints):
    root, _, _ = checkpoints
    index = root / "qwen2" / "model.safetensors.index.json"
    shard = root / "qwen2" / "model-00001-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])  # truncated
    with pytest.raises(ValueError, match=f"{shard}: not a readable safetensors file"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"{shard}: no such safetensors file"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match=f"{index}: expected a 'weight_map' object"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")
    index.write_text('{"weight_map": {')
    with pytest.raises(ValueError, match=f"{index}: not valid JSON"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")
    (root / "siglip" / "config.json").write_text("model_type: siglip")
    with pytest.raises(ValueError, match="siglip/config.json: not valid JSON"):
        AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip")
    (root / "siglip" / "model.safetensors").write_bytes(b"not safetensors at all")
    (root / "siglip" / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model", **SIGLIP_VISION_CONFIG}))
    with pytest.raises(ValueError, match="siglip/model.safetensors: not a readable safetensors file"):
        Checkpoint(root / "siglip")  # the LLM directory above is broken by now


def test_our_file_metadata_is_checked_field_by_field(checkpoints, tmp_path):
    from safetensors.torch import save_file

    root, _, _ = checkpoints
    path = tmp_path / "aurora.safetensors"
    for metadata, message in (({"compressor": json.dumps({"kind": "mlp", "colour": "red"})}, "the 'compressor' metadata holds unknown fields \\['colour'\\]"),
                              ({"compressor": "{kind: mlp"}, "the 'compressor' metadata is not valid JSON")):  # fmt: skip
        save_file({"projector.fc1.weight": torch.zeros(1)}, path, metadata=metadata)
        with pytest.raises(ValueError, match=f"{path}: {message}"):
            AuroraEdgeV.from_pretrained(root / "qwen2", root / "siglip", path)


def test_save_pretrained_round_trips_through_transformers_layouts(tmp_path, device, gen):
    """save_pretrained writes the three parts (q/k/v and gate/up split back into transformers'
    tensors); from_pretrained reads every parameter back bit for bit, in the dtype asked for, and
    transformers' own classes load the LLM and the vision tower."""
    model = AuroraEdgeV(TINY, backend="reference").to(device)
    model.save_pretrained(tmp_path / "qwen2", tmp_path / "siglip", tmp_path / "aurora.safetensors")
    loaded = AuroraEdgeV.from_pretrained(tmp_path / "qwen2", tmp_path / "siglip", tmp_path / "aurora.safetensors",
                                         backend="reference", dtype=torch.float32, device=device)  # fmt: skip
    assert loaded.config == model.config
    theirs = dict(loaded.named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(theirs[name], param), name
    assert torch.equal(loaded.llm.rotary.cos, model.llm.rotary.cos)
    half = AuroraEdgeV.from_pretrained(tmp_path / "qwen2", tmp_path / "siglip", tmp_path / "aurora.safetensors",
                                       backend="reference", dtype=torch.bfloat16, device=device)  # fmt: skip
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and half.llm.rotary.cos.dtype == torch.bfloat16
    transformers = pytest.importorskip("transformers")
    assert transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "qwen2").config.num_hidden_layers == TINY.llm.num_layers
    assert transformers.SiglipVisionModel.from_pretrained(tmp_path / "siglip").config.image_size == TINY.vision.image_size


def test_what_no_file_holds_is_random_and_real(checkpoints, device):
    """Without a vision directory or our file, those parts come out random (not meta, not zeros), on
    the device and in the dtype asked for; no parameter is left on the meta device."""
    root, _, _ = checkpoints
    model = AuroraEdgeV.from_pretrained(root / "qwen2", None, None, backend="reference", dtype=torch.float16, device=device)
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert {p.device.type for p in model.parameters()} == {device.type} and {p.dtype for p in model.parameters()} == {
        torch.float16
    }
    assert model.vision.layers[0].fc1.weight.std() > 0 and model.projector.fc1.weight.std() > 0
