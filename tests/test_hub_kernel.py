"""The package as an HF kernels Hub kernel (aurora_kernels/hub_build.py): built into a folder, loaded
with `kernels`' local loader, its layers kernelized into a tiny transformers Qwen2, and two builds in
one process, each with its own custom-op namespace."""

import subprocess
import sys

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels import hub_build
from aurora_kernels.testing import assert_parity
from tests.model.test_integrations import _tiny_qwen2, _tiny_siglip

# `make test` installs both (the extras hf and hub); a GPU machine's image may lack them
kernels = pytest.importorskip("kernels")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hub")
    hub_build.build(out)
    return out


def test_the_build_has_the_layout_kernels_reads(hub_dir):
    variant = hub_dir / "build" / hub_build.VARIANT
    metadata = kernels.Metadata.read_from_file(variant / "metadata.json")
    assert metadata.id == hub_build.build_id(hub_build.package_sources())
    assert str(metadata.name) == hub_build.KERNEL_NAME and metadata.python_depends == []
    text = (variant / "ops" / "rms_norm.py").read_text()
    assert "from aurora_kernels" not in text and f"from {metadata.id}._validation import" in text


def test_loaded_build_registers_its_own_ops(hub_dir, gen):
    kernel = kernels.get_local_kernel(hub_dir)
    namespace = kernel._dispatch.CUSTOM_OP_NAMESPACE
    assert kernel.__name__ == namespace != "aurora_kernels" and hasattr(getattr(torch.ops, namespace), "rms_norm")
    x, w = torch.randn((5, 96), generator=gen), torch.randn(96, generator=gen)
    with kernel.count_calls() as calls:
        out = kernel.rms_norm(x, w, 1e-6)
    assert calls[("rms_norm", "triton")] == 1
    assert_parity(out, ak.reference.rms_norm(x.double(), w.double(), 1e-6), torch.float32, "hub build rms_norm")


def test_kernelize_maps_qwen2_onto_the_layers_and_keeps_the_logits(hub_dir, gen):
    model = _tiny_qwen2(gen)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=gen)
    with torch.no_grad():
        expected = model(ids).logits
    mapping = {"RMSNorm": {"cpu": kernels.LocalLayerRepository(hub_dir, layer_name="RMSNorm")}}
    with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
        kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")  # rotary_pos_emb: transformers' own
    kernel = kernels.get_local_kernel(hub_dir)
    with torch.no_grad(), kernel.count_calls() as calls:
        logits = model(ids).logits
    norms = sum(isinstance(m, transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm) for m in model.modules())
    assert calls[("rms_norm", "triton")] == norms  # every RMSNorm ran the build's kernel, once per forward
    assert_parity(logits, expected.double(), torch.float32, "kernelized Qwen2 logits")


def test_kernelize_maps_siglip_gelu_onto_the_layers(hub_dir, gen):
    model = _tiny_siglip(gen, hidden_size=144)
    pixel_values = torch.randn((2, 3, 64, 64), generator=gen)
    with torch.no_grad():
        expected = model(pixel_values).last_hidden_state
    mapping = {"GeluTanh": {"cpu": kernels.LocalLayerRepository(hub_dir, layer_name="GeluTanh")}}
    with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
        kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu")
    with torch.no_grad(), kernels.get_local_kernel(hub_dir).count_calls() as calls:
        got = model(pixel_values).last_hidden_state
    assert calls[("gelu_tanh", "triton")] == model.config.num_hidden_layers + 1  # every MLP's and the pooling head's
    assert_parity(got, expected.double(), torch.float32, "kernelized SigLIP hidden states")


def test_kernelize_maps_a_users_silu_and_mul_layer(hub_dir, gen):
    @kernels.use_kernel_forward_from_hub("SiluAndMul")
    class SiluAndMul(torch.nn.Module):
        def forward(self, x):
            gate, up = x.chunk(2, dim=-1)
            return torch.nn.functional.silu(gate) * up

    model = torch.nn.Sequential(SiluAndMul())
    x = torch.randn((4, 7, 2 * 48), generator=gen)
    expected = model(x)
    mapping = {"SiluAndMul": {"cpu": kernels.LocalLayerRepository(hub_dir, layer_name="SiluAndMul")}}
    with kernels.use_kernel_mapping(mapping, inherit_mapping=False):
        kernels.kernelize(model, mode=kernels.Mode.INFERENCE, device="cpu", use_fallback=False)
    with kernels.get_local_kernel(hub_dir).count_calls() as calls:
        got = model(x)
    assert calls[("silu_and_mul", "triton")] == 1
    assert_parity(got, expected.double(), torch.float32, "kernelized SiluAndMul")


def test_two_builds_live_in_one_process(tmp_path, gen):
    """Two builds (another id stands for other sources) and the installed package: three namespaces,
    each op registered once, each answering alike."""
    builds = []
    for name in ("_aurora_kernels_build_a", "_aurora_kernels_build_b"):
        hub_build.build(tmp_path / name, name)
        builds.append(kernels.get_local_kernel(tmp_path / name))
        assert builds[-1].__name__ == name and hasattr(getattr(torch.ops, name), "gelu_tanh")
    x = torch.randn((3, 40), generator=gen)
    expected = ak.gelu_tanh(x)
    assert all(torch.equal(build.gelu_tanh(x), expected) for build in builds)


def test_build_command_line(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "aurora_kernels.hub_build", str(tmp_path), "--id", "not-a-name"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "kernel_id: expected a Python identifier" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_keyword_is_refused_as_the_build_id(tmp_path):
    """The copy's imports and the custom-op namespace are named by the id: `import import.ops` cannot parse."""
    with pytest.raises(ValueError, match="kernel_id: expected a Python identifier, not a keyword .*got 'import'"):
        hub_build.build(tmp_path, "import")
    assert not (tmp_path / "build").exists()


def test_importing_the_package_imports_no_optional_integration():
    """kernels, vLLM and transformers are optional: importing the package and its integrations
    imports none of them (transformers is imported by the functions that patch its models)."""
    code = ("import sys, aurora_kernels, aurora_kernels.layers, aurora_kernels.hub_build, aurora_kernels.integrations, "
            "aurora_kernels.integrations.vllm_plugin; "
            "print(sorted(m for m in ('kernels', 'vllm', 'transformers') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
