"""Weights from disk: the LLM from a transformers Qwen2 directory, the vision tower from a SigLIP
directory, the projector / compressor / fusion from our own safetensors file.

Checkpoints are read with `safetensors` (single file or sharded with model.safetensors.index.json).
Their tensor names are transformers': the loader concatenates q/k/v (and gate/up) into this model's
fused projections. transformers writes config.json without the fields that equal its class defaults,
so missing fields take those defaults (below). Nothing is ever downloaded.

Every config field that changes the forward pass is either read (sizes, eps, rope_theta, tied
embeddings, head_dim) or held to the one value this model computes (_QWEN2_FIXED, _SIGLIP_FIXED,
layer_types, rope scaling): any other value is a ValueError naming the file, the field and the
value, never a model that loads and computes something else. A file that cannot be read (invalid
JSON, a truncated or corrupt safetensors file, an index without its weight_map, a shard it names
that is missing) is an error that names the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os

import torch

from aurora_kernels.model.config import AuroraConfig, CompressorConfig, LLMConfig, VisionConfig

# transformers' class defaults for the fields we read (Qwen2Config, SiglipVisionConfig)
_QWEN2_DEFAULTS = {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                   "rope_theta": 10000.0, "tie_word_embeddings": False}  # fmt: skip
_SIGLIP_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                    "num_channels": 3, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6}  # fmt: skip
AURORA_PARTS = ("projector.", "compressor.", "fusion.")

# Fields that change the forward pass, held to the values this model computes, with transformers'
# default (the value when the field is absent). Qwen2: the SwiGLU activation, full attention in every
# layer (no sliding window), RoPE over the whole head dim. SigLIP: the tanh GELU (transformers' two
# names for it).
_QWEN2_FIXED = {"hidden_act": (("silu",), "silu"), "use_sliding_window": ((False,), False),
                "partial_rotary_factor": ((1.0,), 1.0)}  # fmt: skip
_SIGLIP_FIXED = {"hidden_act": (("gelu_pytorch_tanh", "gelu_new"), "gelu_pytorch_tanh")}


def _read_json(path) -> dict:
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _read_config(directory) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: expected a config.json (a transformers model directory)")
    return _read_json(path)


def _refuse_quantized(path: str, raw: dict) -> None:
    """A quantized checkpoint's tensors (int8, float8, packed int4 with scales) are not weights to
    cast: refused by its config before any tensor is read."""
    quantization = raw.get("quantization_config")
    if quantization:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else None
        raise ValueError(f"{path}: expected an unquantized checkpoint, got a quantization_config (quant_method "
                         f"{method!r}); this model loads float16, bfloat16 or float32 weights")  # fmt: skip


def _hold_fixed_fields(path: str, raw: dict, fixed: dict) -> None:
    """Each field of `fixed` (absent: its default) is one of its allowed values, or a ValueError."""
    for field, (allowed, default) in fixed.items():
        value = raw.get(field, default)
        if isinstance(value, bool) != isinstance(allowed[0], bool) or value not in allowed:
            raise ValueError(f"{path}: expected {field} {' or '.join(map(repr, allowed))}, got {value!r} "
                             "(this model does not compute that)")  # fmt: skip


def llm_config_from_dir(llm_dir) -> LLMConfig:
    raw = _read_config(llm_dir)
    if raw.get("model_type") != "qwen2":
        raise ValueError(f"{llm_dir}/config.json: expected model_type 'qwen2', got {raw.get('model_type')!r}")
    get = lambda key: raw.get(key, _QWEN2_DEFAULTS.get(key))  # noqa: E731
    path = f"{llm_dir}/config.json"
    _refuse_quantized(path, raw)
    _hold_fixed_fields(path, raw, _QWEN2_FIXED)
    sliding = sorted({t for t in raw.get("layer_types") or () if t != "full_attention"})
    if sliding:
        raise ValueError(f"{path}: expected layer_types all 'full_attention', got {sliding} (this model does not compute that)")
    heads = get("num_attention_heads")
    rope = raw.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", get("rope_theta"))
    if rope.get("rope_type", "default") != "default" or raw.get("rope_scaling"):
        raise ValueError(f"{path}: expected plain RoPE (no rope scaling), got {rope or raw.get('rope_scaling')}")
    _hold_fixed_fields(path + " rope_parameters", rope, {"partial_rotary_factor": _QWEN2_FIXED["partial_rotary_factor"]})
    return LLMConfig(
        vocab_size=get("vocab_size"), hidden_size=get("hidden_size"), num_layers=get("num_hidden_layers"),
        num_heads=heads, num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or get("hidden_size") // heads, intermediate_size=get("intermediate_size"),
        rms_norm_eps=get("rms_norm_eps"), rope_theta=float(rope_theta),
        max_position_embeddings=get("max_position_embeddings"), tie_word_embeddings=bool(get("tie_word_embeddings")),
    )  # fmt: skip


def vision_config_from_dir(vision_dir) -> VisionConfig:
    raw = _read_config(vision_dir)
    _refuse_quantized(f"{vision_dir}/config.json", raw)
    kind = raw.get("model_type")
    if kind == "siglip":
        raw = raw.get("vision_config") or {}
    elif kind != "siglip_vision_model":
        raise ValueError(f"{vision_dir}/config.json: expected model_type 'siglip' or 'siglip_vision_model', got {kind!r}")
    get = lambda key: raw.get(key, _SIGLIP_DEFAULTS[key])  # noqa: E731
    _hold_fixed_fields(f"{vision_dir}/config.json", raw, _SIGLIP_FIXED)
    return VisionConfig(
        image_size=get("image_size"), patch_size=get("patch_size"), hidden_size=get("hidden_size"),
        num_layers=get("num_hidden_layers"), num_heads=get("num_attention_heads"),
        intermediate_size=get("intermediate_size"), layer_norm_eps=get("layer_norm_eps"), num_channels=get("num_channels"),
    )  # fmt: skip


class Checkpoint:
    """The tensors of a safetensors checkpoint directory (one file, or shards + index), read lazily."""

    def __init__(self, directory):
        self.directory = directory
        self._open = {}
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.isfile(index):
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
                raise ValueError(f"{index}: expected a 'weight_map' object of tensor name -> shard file")
        elif os.path.isfile(single):
            weight_map = dict.fromkeys(self._file("model.safetensors").keys(), "model.safetensors")
        else:
            raise FileNotFoundError(f"{directory}: expected model.safetensors or model.safetensors.index.json")
        self.weight_map = weight_map

    def _file(self, file: str):
        """The directory's safetensors file `file`, opened once."""
        if file not in self._open:
            self._open[file] = open_safetensors(os.path.join(self.directory, file))
        return self._open[file]

    def names(self):
        return self.weight_map.keys()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise KeyError(f"{self.directory}: checkpoint has no tensor {name!r}")
        file = self.weight_map[name]
        return read_tensor(self._file(file), name, os.path.join(self.directory, file))


def open_safetensors(path):
    """safe_open(path), or an error that names the file: missing, truncated, or not safetensors."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such safetensors file")
    try:
        return safe_open(path, "pt")
    except Exception as e:  # safetensors raises its own error type for a file it cannot parse
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None


# the dtypes a weight is read in and cast from; an int8, uint8 or float8 tensor is a quantized
# checkpoint's, whose values mean nothing without its scales: cast, they would make a wrong model
WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def read_tensor(file, name: str, path) -> torch.Tensor:
    try:
        tensor = file.get_tensor(name)
    except Exception as e:  # safetensors raises its own error type for data it cannot read
        raise ValueError(f"{path}: cannot read tensor {name!r} ({e})") from None
    if tensor.dtype not in WEIGHT_DTYPES:
        raise ValueError(f"{path}: tensor {name!r}: expected float16, bfloat16, float32 or float64 weights, got "
                         f"{tensor.dtype} (a quantized checkpoint? this model loads unquantized ones)")  # fmt: skip
    return tensor


def qwen2_names(cfg: LLMConfig) -> dict[str, list[str]]:
    """This model's LLM parameter -> the transformers tensors concatenated (dim 0) to make it."""
    names = {"llm.embed_tokens.weight": ["model.embed_tokens.weight"], "llm.norm.weight": ["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        names["llm.lm_head.weight"] = ["lm_head.weight"]
    for i in range(cfg.num_layers):
        ours, theirs = f"llm.layers.{i}.", f"model.layers.{i}."
        attn, mlp = theirs + "self_attn.", theirs + "mlp."
        names.update({
            ours + "input_layernorm.weight": [theirs + "input_layernorm.weight"],
            ours + "qkv_proj.weight": [attn + f"{p}_proj.weight" for p in "qkv"],
            ours + "qkv_proj.bias": [attn + f"{p}_proj.bias" for p in "qkv"],
            ours + "o_proj.weight": [attn + "o_proj.weight"],
            ours + "post_attention_layernorm.weight": [theirs + "post_attention_layernorm.weight"],
            ours + "gate_up_proj.weight": [mlp + "gate_proj.weight", mlp + "up_proj.weight"],
            ours + "down_proj.weight": [mlp + "down_proj.weight"],
        })  # fmt: skip
    return names


def siglip_prefix(checkpoint: Checkpoint) -> str:
    """SiglipModel checkpoints (and SiglipVisionModel ones from transformers 4) name the vision tensors
    vision_model.*; transformers 5 writes a SiglipVisionModel's without the prefix."""
    for prefix in ("vision_model.", ""):
        if prefix + "embeddings.patch_embedding.weight" in checkpoint.names():
            return prefix
    raise KeyError(
        f"{checkpoint.directory}: checkpoint has no SigLIP patch embedding (vision_model.embeddings.patch_embedding.weight)"
    )


def siglip_names(cfg: VisionConfig, root: str = "vision_model.") -> dict[str, list[str]]:
    """This model's vision parameter -> the transformers SigLIP tensors (under `root`) to make it."""
    names = {
        "vision.patch_embedding.weight": [root + "embeddings.patch_embedding.weight"],
        "vision.patch_embedding.bias": [root + "embeddings.patch_embedding.bias"],
        "vision.position_embedding": [root + "embeddings.position_embedding.weight"],
        "vision.post_layernorm.weight": [root + "post_layernorm.weight"],
        "vision.post_layernorm.bias": [root + "post_layernorm.bias"],
    }
    for i in range(cfg.num_layers):
        ours, theirs = f"vision.layers.{i}.", f"{root}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            names.update({
                ours + f"layer_norm1.{kind}": [theirs + f"layer_norm1.{kind}"],
                ours + f"qkv_proj.{kind}": [theirs + f"self_attn.{p}_proj.{kind}" for p in "qkv"],
                ours + f"out_proj.{kind}": [theirs + f"self_attn.out_proj.{kind}"],
                ours + f"layer_norm2.{kind}": [theirs + f"layer_norm2.{kind}"],
                ours + f"fc1.{kind}": [theirs + f"mlp.fc1.{kind}"],
                ours + f"fc2.{kind}": [theirs + f"mlp.fc2.{kind}"],
            })  # fmt: skip
    return names


def _set_parameter(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    """model's parameter `name` becomes `tensor` (its shape checked by the caller): a meta model's
    parameters are materialised one at a time, each in its final dtype and device."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    owner._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=owner._parameters[leaf].requires_grad)


@torch.no_grad()
def load_tensors(model: torch.nn.Module, checkpoint: Checkpoint, names: dict[str, list[str]], device, dtype) -> None:
    """Every mapped tensor (concatenated where a parameter is fused) into `model`, read once, in
    `dtype` on `device`."""
    params = dict(model.named_parameters())
    for ours, theirs in names.items():
        pieces = [checkpoint.get(name).to(device=device, dtype=dtype) for name in theirs]
        tensor = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        target = params[ours]
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"{checkpoint.directory}: {' + '.join(theirs)}: expected shape {list(target.shape)} (from config.json), "
                f"got {list(tensor.shape)}"
            )
        _set_parameter(model, ours, tensor)


def save_aurora_weights(model: torch.nn.Module, path) -> None:
    """The projector, compressor and fusion weights (ours: no transformers counterpart) to one
    safetensors file; the compressor's settings ride in its metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k.startswith(AURORA_PARTS)}
    save_file(tensors, path, metadata={"compressor": json.dumps(dataclasses.asdict(model.config.compressor))})


def _aurora_file_settings(path, compressor: str) -> CompressorConfig:
    metadata = open_safetensors(path).metadata() or {}
    if "compressor" not in metadata:
        raise ValueError(f"{path}: expected 'compressor' settings in the safetensors metadata (save_aurora_weights writes them)")
    try:
        fields = json.loads(metadata["compressor"])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the 'compressor' metadata is not valid JSON ({e})") from None
    known = {f.name for f in dataclasses.fields(CompressorConfig)}
    unknown = sorted(set(fields) - known) if isinstance(fields, dict) else None
    if unknown is None or unknown:
        raise ValueError(f"{path}: the 'compressor' metadata holds unknown fields {unknown or fields!r} "
                         f"(expected an object with some of {sorted(known)})")  # fmt: skip
    settings = CompressorConfig(**fields)
    if settings.kind != compressor:
        raise ValueError(f"compressor: {path} holds a {settings.kind!r} compressor, got compressor={compressor!r}")
    return settings


@torch.no_grad()
def load_aurora_weights(model: torch.nn.Module, path, device, dtype) -> None:
    file = open_safetensors(path)
    expected = {k: v for k, v in model.named_parameters() if k.startswith(AURORA_PARTS)}
    missing = sorted(set(expected) - set(file.keys()))
    if missing:
        raise KeyError(f"{path}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    for name, target in expected.items():
        tensor = read_tensor(file, name, path)
        if tensor.shape != target.shape:
            raise ValueError(f"{path}: {name}: expected shape {list(target.shape)}, got {list(tensor.shape)}")
        _set_parameter(model, name, tensor.to(device=device, dtype=dtype))


@torch.no_grad()
def materialize(model: torch.nn.Module, device, dtype, std: float = 0.02) -> torch.nn.Module:
    """A model built on the meta device, made real on `device` in `dtype`: each parameter still on
    meta gets random weights there (AuroraEdgeV.reset_parameters' distribution), each buffer is
    built again (the rotary tables, computed in float64, then cast as `model.to(dtype)` casts them).
    Parameters already loaded stay as they are."""
    from aurora_kernels.model.aurora import init_parameter
    from aurora_kernels.model.layers import RotaryTables

    for name, param in list(model.named_parameters()):
        if param.is_meta:
            tensor = torch.empty(param.shape, device=device, dtype=dtype)
            init_parameter(name, tensor, std)
            _set_parameter(model, name, tensor)
    for name, module in list(model.named_modules()):
        if isinstance(module, RotaryTables) and module.cos.is_meta:
            tables = RotaryTables(module.head_dim, module.theta, module.max_positions).to(device=device, dtype=dtype)
            owner_name, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(owner_name), leaf, tables)
    return model


def load_pretrained(cls, llm_dir, vision_dir, aurora_weights, compressor, backend, dtype, device):
    """The model built on the meta device (no memory, no random init of what the files hold), then
    each tensor read once from its file, in `dtype` on `device`; what no file holds is random."""
    llm_cfg = llm_config_from_dir(llm_dir)
    vision_cfg = vision_config_from_dir(vision_dir) if vision_dir is not None else VisionConfig()
    settings = (
        _aurora_file_settings(aurora_weights, compressor) if aurora_weights is not None else CompressorConfig(kind=compressor)
    )
    with torch.device("meta"):
        model = cls(AuroraConfig(vision=vision_cfg, llm=llm_cfg, compressor=settings), backend=backend)
    device = torch.device(device)
    load_tensors(model, Checkpoint(llm_dir), qwen2_names(llm_cfg), device, dtype)
    if vision_dir is not None:
        vision_checkpoint = Checkpoint(vision_dir)
        load_tensors(model, vision_checkpoint, siglip_names(vision_cfg, siglip_prefix(vision_checkpoint)), device, dtype)
    if aurora_weights is not None:
        load_aurora_weights(model, aurora_weights, device, dtype)
    return materialize(model, device, dtype)


# ----------------------------------------------------------------------------- writing


def _qwen2_config_json(cfg: LLMConfig) -> dict:
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
            "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings, "hidden_act": "silu", "use_sliding_window": False}  # fmt: skip


def _siglip_config_json(cfg: VisionConfig) -> dict:
    return {"model_type": "siglip_vision_model", "architectures": ["SiglipVisionModel"], "hidden_size": cfg.hidden_size,
            "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_channels": cfg.num_channels, "image_size": cfg.image_size,
            "patch_size": cfg.patch_size, "layer_norm_eps": cfg.layer_norm_eps, "hidden_act": "gelu_pytorch_tanh"}  # fmt: skip


def _split_for_transformers(model: torch.nn.Module, names: dict[str, list[str]], piece_rows) -> dict[str, torch.Tensor]:
    """transformers' tensors from this model's parameters: a fused parameter split back (dim 0)."""
    params = dict(model.named_parameters())
    tensors = {}
    for ours, theirs in names.items():
        param = params[ours].detach()
        for name, piece in zip(theirs, param.split(piece_rows(ours, param.shape[0], len(theirs)))):
            tensors[name] = piece.contiguous().cpu()
    return tensors


def save_pretrained(model: torch.nn.Module, llm_dir, vision_dir, aurora_weights) -> None:
    """The three parts as from_pretrained reads them: the LLM in a transformers Qwen2 directory, the
    vision tower in a SigLIP one (config.json + model.safetensors each, q/k/v and gate/up split
    back), the projector, compressor and fusion in our file."""
    from safetensors.torch import save_file

    config = model.config
    kv_rows = config.llm.num_kv_heads * config.llm.head_dim

    def llm_rows(ours, total, pieces):
        if pieces == 1:
            return [total]
        return [total - 2 * kv_rows, kv_rows, kv_rows] if "qkv" in ours else [total // pieces] * pieces

    for directory, config_json, tensors in (
        (llm_dir, _qwen2_config_json(config.llm), _split_for_transformers(model, qwen2_names(config.llm), llm_rows)),
        (vision_dir, _siglip_config_json(config.vision), _split_for_transformers(
            model, siglip_names(config.vision), lambda ours, total, pieces: [total // pieces] * pieces)),
    ):  # fmt: skip
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config_json, f, indent=1)
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    save_aurora_weights(model, aurora_weights)
