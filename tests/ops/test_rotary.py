import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import check_op, randn
from tests.catalogue import DTYPE_IDS, DTYPES, GQA_HEADS, HEAD_DIMS, far_apart, fused_qkv


def _tables(shape, head_dim, dtype, device, gen):
    return randn((*shape, head_dim), dtype, device, gen), randn((*shape, head_dim), dtype, device, gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("heads", GQA_HEADS, ids=lambda h: f"Hq{h[0]}-Hkv{h[1]}")
def test_dense_fused_qkv(dtype, head_dim, heads, device, gen):
    q, k, _ = fused_qkv((2, 9), *heads, head_dim, dtype, device, gen)
    cos, sin = _tables((2, 9), head_dim, torch.float32, device, gen)  # fp32 tables, as transformers makes
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, cos, sin)


@pytest.mark.parametrize("num_tokens", [1, 37])
def test_packed_and_broadcast_tables(num_tokens, device, gen):
    q, k, _ = fused_qkv((num_tokens,), 12, 2, 128, torch.bfloat16, device, gen)
    cos, sin = _tables((num_tokens,), 128, torch.bfloat16, device, gen)
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, cos, sin)
    # dense batch with [L, D] tables shared by every sequence
    q, k, _ = fused_qkv((3, num_tokens), 4, 2, 64, torch.float32, device, gen)
    cos, sin = _tables((num_tokens,), 64, torch.float32, device, gen)
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, cos, sin)


def test_bad_inputs(device, gen):
    q, k, _ = fused_qkv((2, 5), 4, 2, 64, torch.float32, device, gen)
    cos, sin = _tables((2, 5), 64, torch.float32, device, gen)
    with pytest.raises(ValueError, match="cos: expected shape \\[..., 5, 64\\]"):
        ak.apply_rotary(q, k, cos[:, :4], sin)
    with pytest.raises(ValueError, match="sin: expected leading dims that broadcast"):
        ak.apply_rotary(q, k, cos, randn((3, 5, 64), torch.float32, device, gen))
    with pytest.raises(TypeError, match="k: expected dtype torch.float32"):
        ak.apply_rotary(q, k.half(), cos, sin)
    with pytest.raises(ValueError, match="k: expected shape"):
        ak.apply_rotary(q, k[:, :4], cos, sin)
    odd_q = randn((2, 5, 4, 63), torch.float32, device, gen)
    with pytest.raises(ValueError, match="q: expected an even head dim"):
        ak.apply_rotary(odd_q, odd_q, cos[..., :63], sin[..., :63])


def test_int64_offsets(device, gen):
    """q's tokens FAR_STRIDE elements apart (k, cos, sin contiguous)."""
    q = far_apart((3, 4, 64), torch.float16, device, gen)
    k = randn((3, 2, 64), torch.float16, device, gen)
    cos, sin = _tables((3,), 64, torch.float32, device, gen)
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, cos, sin)


def test_the_gpu_token_block(device, gen, monkeypatch):
    """The GPU's block of TOKENS_PER_PROGRAM tokens (the interpreter otherwise takes 32 at a time):
    11 tokens make three programs, the last one partly masked."""
    from aurora_kernels.ops import rotary

    monkeypatch.setattr(rotary, "INTERPRETER", False)
    assert rotary._launch_config(12, 2, 128)["BLOCK_T"] == rotary.TOKENS_PER_PROGRAM < 11
    q, k, _ = fused_qkv((11,), 12, 2, 128, torch.bfloat16, device, gen)
    cos, sin = _tables((11,), 128, torch.float32, device, gen)
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, cos, sin)


def test_tables_at_nonzero_offsets(device, gen):
    """Rows of the model's tables far from position 0 (a prompt continued at position 777), as the
    prefill after a cache hit gathers them."""
    from aurora_kernels.model.layers import RotaryTables

    tables = RotaryTables(128, 1e6, 4096).to(device)
    positions = torch.arange(777, 777 + 23, device=device)
    q, k, _ = fused_qkv((23,), 12, 2, 128, torch.bfloat16, device, gen)
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, tables.cos[positions], tables.sin[positions])
