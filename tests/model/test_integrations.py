"""aurora_kernels.integrations: patch_qwen2 and patch_siglip on tiny randomly initialised transformers
models (Qwen2, and SigLIP's vision tower)."""

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.testing import assert_parity

transformers = pytest.importorskip("transformers")


def _tiny_qwen2(gen):
    config = transformers.Qwen2Config(vocab_size=500, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                                      max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(gen.initial_seed() % 2**31)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model


@pytest.fixture(autouse=True)
def restore_transformers_rotary(monkeypatch):
    """patch_qwen2 replaces transformers' module-level rotary function: undo it after each test, so
    other tests compare against the unpatched transformers."""
    from transformers.models.qwen2 import modeling_qwen2

    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", modeling_qwen2.apply_rotary_pos_emb)


def _patched_copy(model, device):
    from aurora_kernels.integrations import patch_qwen2

    patched = transformers.Qwen2ForCausalLM(model.config).eval()
    patched.load_state_dict(model.state_dict())
    return patch_qwen2(patched.to(device))


def test_patched_logits_and_generate_match(device, gen):
    model = _tiny_qwen2(gen).to(device)
    ids = torch.randint(0, 500, (2, 13), generator=torch.Generator().manual_seed(1)).to(device)
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():  # before patching: the rotary patch reaches every Qwen2 in the process
        expected = model(ids).logits
        expected_tokens = model.generate(ids[:1], **settings)
    patched = _patched_copy(model, device)
    with torch.no_grad():
        with ak.count_calls() as calls:
            got = patched(ids).logits
        tokens = patched.generate(ids[:1], **settings)
    assert_parity(got, expected.double(), torch.float32, "patched Qwen2 logits")
    assert {op for op, backend in calls if backend == "triton"} == {"rms_norm", "apply_rotary", "silu_and_mul", "attention"}
    assert calls[("rms_norm", "triton")] == 2 * 2 + 1  # two per layer and the final norm
    assert torch.equal(tokens, expected_tokens)


def test_patch_keeps_the_state_dict(device, gen):
    model = _tiny_qwen2(gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from aurora_kernels.integrations import patch_qwen2

    patch_qwen2(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_padding_mask_is_refused(device, gen):
    patched = _patched_copy(_tiny_qwen2(gen), device)
    ids = torch.randint(1, 500, (2, 6), device=device)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    with pytest.raises(ValueError, match="attention_mask: the aurora attention runs without a padding mask"):
        patched(ids, attention_mask=mask)


def test_rejects_other_models(gen):
    from aurora_kernels.integrations import patch_qwen2

    with pytest.raises(TypeError, match="model: expected a transformers Qwen2ForCausalLM or Qwen2Model, got Linear"):
        patch_qwen2(torch.nn.Linear(2, 2))


def test_rejects_a_non_swiglu_mlp(gen):
    from aurora_kernels.integrations import patch_qwen2

    config = transformers.Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, hidden_act="gelu")  # fmt: skip
    with pytest.raises(ValueError, match="model.config.hidden_act: expected 'silu' \\(SwiGLU\\), got 'gelu'"):
        patch_qwen2(transformers.Qwen2ForCausalLM(config), attention=False, rotary=False)


def _tiny_siglip(gen, **config):
    from tests.model.test_loading import SIGLIP_VISION_CONFIG

    torch.manual_seed(gen.initial_seed() % 2**31)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**{**SIGLIP_VISION_CONFIG, **config})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def test_patched_siglip_matches(device, gen):
    """The vision tower's outputs (after the final LayerNorm, and the pooling head's) with every
    LayerNorm, GELU and attention on the kernels, at SigLIP's head dim 72 (2 heads of a width of 144)."""
    from aurora_kernels.integrations import patch_siglip

    model = _tiny_siglip(gen, hidden_size=144).to(device)
    pixel_values = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        expected = model(pixel_values)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patch_siglip(model)
    with torch.no_grad(), ak.count_calls() as calls:
        got = model(pixel_values)
    assert_parity(got.last_hidden_state, expected.last_hidden_state.double(), torch.float32, "patched SigLIP hidden states")
    assert_parity(got.pooler_output, expected.pooler_output.double(), torch.float32, "patched SigLIP pooled output")
    layers = model.config.num_hidden_layers
    # two LayerNorms a layer, the final one and the pooling head's; an MLP a layer and the head's
    assert dict(calls) == {("layer_norm", "triton"): 2 * layers + 2, ("gelu_tanh", "triton"): layers + 1,
                           ("attention", "triton"): layers}  # fmt: skip
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_patch_siglip_rejects_what_it_cannot_run(gen):
    from aurora_kernels.integrations import patch_siglip

    with pytest.raises(TypeError, match="model: expected a transformers SiglipVisionModel, got Linear"):
        patch_siglip(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="model.config.hidden_act: expected 'gelu_pytorch_tanh', got 'gelu'"):
        patch_siglip(_tiny_siglip(gen, hidden_act="gelu"))
    model = _tiny_siglip(gen)
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm))  # where transformers keeps it
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, torch.nn.LayerNorm(model.config.hidden_size, elementwise_affine=False))
    with pytest.raises(ValueError, match="model: expected LayerNorms over the last dim with weight and bias, got LayerNorm"):
        patch_siglip(model)
    assert not hasattr(model, "_aurora_backend")  # refused before anything was patched
