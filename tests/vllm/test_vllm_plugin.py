"""The vLLM plugin against the real vLLM package (`make test-vllm`: a venv of its own, since vLLM pins
its own torch; `make test` leaves this folder out). On CPU under the Triton interpreter: the entry
point is found, vLLM builds our layers where models ask for its RMSNorm, SiluAndMul and
RotaryEmbedding, each answers as vLLM's own implementation does, and a decode batch through the
"AURORA" backend answers as vLLM's Triton backend on the same paged cache. Serving a model needs a
GPU: bench/vllm_check.py."""

import importlib.metadata
import math

import pytest
import torch
import vllm  # noqa: F401  (the venv of `make test-vllm` has it; an import error here is a failure)
from vllm.config import DeviceConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.activation import SiluAndMul
from vllm.model_executor.layers.layernorm import RMSNorm
from vllm.model_executor.layers.rotary_embedding import get_rope
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding
from vllm.plugins import load_general_plugins
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.attention.backends.triton_attn import TritonAttentionMetadata

import aurora_kernels as ak
from aurora_kernels.integrations import _vllm_layers
from aurora_kernels.testing import assert_parity
from tests.test_vllm_adapters import paged_decode_reference


@pytest.fixture(scope="module", autouse=True)
def vllm_config():
    load_general_plugins()  # as vLLM does in each process: our entry point among them
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        yield


def test_the_entry_point_is_installed():
    points = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert any(p.value == "aurora_kernels.integrations.vllm_plugin:register" for p in points)


def test_layers_are_ours_and_answer_as_vllms(gen):
    norm, act = RMSNorm(96, eps=1e-6), SiluAndMul()
    assert type(norm) is _vllm_layers.AuroraRMSNorm and type(act) is _vllm_layers.AuroraSiluAndMul
    with torch.no_grad():
        norm.weight.copy_(torch.randn(96, generator=gen))
    x, residual, gate_up = (torch.randn(shape, generator=gen) for shape in ((7, 96), (7, 96), (7, 2 * 80)))
    with ak.count_calls() as calls:
        normed, summed = norm(x, residual.clone())
        alone = norm(x)
        activated = act(gate_up)
    assert calls == {("rms_norm", "triton"): 2, ("silu_and_mul", "triton"): 1}
    # vLLM's own implementations (the in-tree classes' forward_native) in float32 as the reference
    want_normed, want_summed = RMSNorm.forward_native(norm, x.clone(), residual.clone())
    assert_parity(normed, want_normed.double(), torch.float32, "RMSNorm with residual")
    assert_parity(summed, want_summed.double(), torch.float32, "RMSNorm's residual sum")
    assert_parity(alone, RMSNorm.forward_native(norm, x.clone()).double(), torch.float32, "RMSNorm")
    assert_parity(activated, SiluAndMul.forward_native(gate_up.double()), torch.float32, "SiluAndMul")


def test_rotary_is_ours_for_qwen2_and_vllms_elsewhere(gen):
    rope = get_rope(128, max_position=512, is_neox_style=True, rope_parameters={"rope_theta": 1e6, "rope_type": "default"},
                    dtype=torch.float32)  # fmt: skip
    assert type(rope) is _vllm_layers.AuroraRotaryEmbedding and rope._ours
    positions = torch.randint(0, 512, (9,), generator=gen)
    q, k = torch.randn((9, 12 * 128), generator=gen), torch.randn((9, 2 * 128), generator=gen)
    with ak.count_calls() as calls:
        q_rot, k_rot = rope(positions, q.clone(), k.clone())
    assert calls == {("apply_rotary", "triton"): 1}
    want_q, want_k = RotaryEmbedding.forward_static(positions, q.double(), k.double(), 128, 128,
                                                    rope.cos_sin_cache.double(), True)  # fmt: skip
    assert_parity(q_rot, want_q, torch.float32, "rotary q")
    assert_parity(k_rot, want_k, torch.float32, "rotary k")
    gptj = get_rope(128, max_position=512, is_neox_style=False, rope_parameters={"rope_theta": 1e6, "rope_type": "default"},
                    dtype=torch.float32)  # fmt: skip
    assert not gptj._ours  # GPT-J style: vLLM's own, with a warning
    with ak.count_calls() as calls:
        gptj(positions, q.clone(), k.clone())
    assert not calls


@pytest.mark.parametrize("block_size", [16, 32])
def test_decode_batch_through_the_aurora_backend(block_size, gen):
    """vLLM's own metadata and impl class, our kernel: the answer of attention read from vLLM's paged
    layout (vLLM's Triton kernels do not run under the interpreter: vLLM swaps triton out on a
    machine without a GPU)."""
    backend = AttentionBackendEnum["AURORA"].get_class()
    assert backend is _vllm_layers.AuroraAttentionBackend and backend.get_name() == "AURORA"
    heads_q, heads_kv, head_dim, num_blocks = 12, 2, 128, 24
    seq_lens = torch.tensor([1, 37, 80, 17], dtype=torch.int32)
    batch = seq_lens.shape[0]
    blocks = torch.randperm(num_blocks, generator=gen)[: batch * 6].view(batch, 6).to(torch.int32)
    kv_cache = torch.randn((num_blocks, heads_kv, block_size, 2 * head_dim), generator=gen)
    query = torch.randn((batch, heads_q, head_dim), generator=gen)
    scale = 1 / math.sqrt(head_dim)
    metadata = TritonAttentionMetadata(
        num_actual_tokens=batch, max_query_len=1, query_start_loc=torch.arange(batch + 1, dtype=torch.int32),
        max_seq_len=int(seq_lens.max()), seq_lens=seq_lens, block_table=blocks, slot_mapping=torch.zeros(batch, dtype=torch.int64),
        seq_threshold_3D=0, num_par_softmax_segments=16, softmax_segm_output=torch.empty((batch, heads_q, 16, head_dim)),
        softmax_segm_max=torch.empty((batch, heads_q, 16)), softmax_segm_expsum=torch.empty((batch, heads_q, 16)), causal=True,
    )  # fmt: skip
    impl = backend.get_impl_cls()(num_heads=heads_q, head_size=head_dim, scale=scale, num_kv_heads=heads_kv,
                                  alibi_slopes=None, sliding_window=None, kv_cache_dtype="auto")  # fmt: skip
    assert impl._ours
    out = torch.full_like(query, float("nan"))
    with ak.count_calls() as calls:
        impl.forward(torch.nn.Module(), query, None, None, kv_cache, metadata, out)
    assert calls == {("decode_attention", "triton"): 1}
    assert_parity(out, paged_decode_reference(query, kv_cache, blocks, seq_lens, scale), torch.float32, "AURORA decode")
    windowed = backend.get_impl_cls()(num_heads=heads_q, head_size=head_dim, scale=scale, num_kv_heads=heads_kv,
                                      alibi_slopes=None, sliding_window=64, kv_cache_dtype="auto")  # fmt: skip
    assert not windowed._ours  # a sliding window: vLLM's Triton kernel, with a warning
