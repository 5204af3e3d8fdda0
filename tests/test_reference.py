"""The eager references checked against independent PyTorch, in float64."""

import math

import pytest
import torch
import torch.nn.functional as F

from aurora_kernels.ops import reference
from aurora_kernels.testing import randn, rel_error
from tests.catalogue import GQA_HEADS, cu_seqlens

F64 = torch.float64
BOUND = 1e-12  # float64 against float64: only rounding differs


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("grid,k", [((16, 16), 2), ((6, 9), 3), ((4, 4), 4), ((5, 5), 1)])
def test_token_pool_vs_torch_pooling(mode, grid, k, device, gen):
    batch, channels = 2, 7
    x = randn((batch, grid[0] * grid[1], channels), F64, device, gen)
    image = x.view(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)  # [B, C, H, W]
    pooled = F.avg_pool2d(image, k) if mode == "avg" else F.max_pool2d(image, k)
    expected = pooled.permute(0, 2, 3, 1).reshape(batch, -1, channels)
    assert rel_error(reference.token_pool(x, grid, k, mode), expected) < BOUND


def test_token_pool_max_propagates_nan(device, gen):
    x = randn((1, 16, 3), F64, device, gen)
    x[0, 5, 1] = math.nan  # token (1, 1): window (0, 0)
    out = reference.token_pool(x, (4, 4), 2, "max")
    assert out[0, 0, 1].isnan() and not out[0, 0, [0, 2]].isnan().any() and not out[0, 1:].isnan().any()


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "silu"])
def test_token_mlp_compress_vs_linear_layers(activation, device, gen):
    x = randn((3, 16, 10), F64, device, gen)
    w1, b1 = randn((24, 16), F64, device, gen), randn((24,), F64, device, gen)
    w2, b2 = randn((4, 24), F64, device, gen), randn((4,), F64, device, gen)
    act = {"gelu_tanh": lambda h: F.gelu(h, approximate="tanh"), "gelu": F.gelu, "silu": F.silu}[activation]
    expected = F.linear(act(F.linear(x.transpose(1, 2), w1, b1)), w2, b2).transpose(1, 2)
    assert rel_error(reference.token_mlp_compress(x, w1, b1, w2, b2, activation), expected) < BOUND


def _sdpa(q, k, v, causal, scale=None):
    """SDPA on [B, L, H, D] with GQA and a bottom-right causal mask (SDPA's is_causal is top-left)."""
    mask = None
    if causal:
        len_q, len_k = q.shape[1], k.shape[1]
        mask = torch.ones(len_q, len_k, dtype=torch.bool, device=q.device).tril(len_k - len_q)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.transpose(1, 2)


@pytest.mark.parametrize("heads", GQA_HEADS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("len_q,len_k", [(1, 1), (17, 17), (5, 40), (1, 33)])
def test_attention_vs_sdpa(heads, causal, len_q, len_k, device, gen):
    q = randn((2, len_q, heads[0], 72), F64, device, gen)
    k, v = (randn((2, len_k, heads[1], 72), F64, device, gen) for _ in range(2))
    got = reference.attention(q, k, v, causal, softmax_scale=0.3)
    assert rel_error(got, _sdpa(q, k, v, causal, scale=0.3)) < BOUND


def test_attention_rows_that_see_no_key_are_zero(device, gen):
    q = randn((1, 6, 2, 16), F64, device, gen)
    k, v = randn((1, 2, 2, 16), F64, device, gen), randn((1, 2, 2, 16), F64, device, gen)
    out = reference.attention(q, k, v, causal=True)  # bottom-right: queries 0..3 see nothing
    assert torch.equal(out[:, :4], torch.zeros_like(out[:, :4]))
    assert rel_error(out[:, 4:], _sdpa(q[:, 4:], k, v, causal=True)) < BOUND


def test_attention_varlen_vs_per_sequence_sdpa(device, gen):
    lengths_q, lengths_k = [3, 0, 9, 1], [5, 4, 9, 0]
    q = randn((sum(lengths_q), 4, 32), F64, device, gen)
    k, v = (randn((sum(lengths_k), 2, 32), F64, device, gen) for _ in range(2))
    cu_q, cu_k = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    out = reference.attention_varlen(q, k, v, cu_q, cu_k, 9, 9, causal=True)
    for b in range(4):
        q0, q1, k0, k1 = int(cu_q[b]), int(cu_q[b + 1]), int(cu_k[b]), int(cu_k[b + 1])
        if q1 == q0:
            continue
        if k1 == k0:
            assert torch.equal(out[q0:q1], torch.zeros_like(out[q0:q1]))
            continue
        expected = _sdpa(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], causal=True)[0]
        assert rel_error(out[q0:q1], expected) < BOUND


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("append", [False, True])
def test_decode_attention_vs_sdpa(paged, append, device, gen):
    batch, heads_q, heads_kv, head_dim, block_size = 3, 6, 2, 16, 16
    lengths = [0, 17, 40]
    q = randn((batch, 1, heads_q, head_dim), F64, device, gen)
    new_k, new_v = (randn((batch, 1, heads_kv, head_dim), F64, device, gen) for _ in range(2))
    dense_k, dense_v = (randn((batch, 64, heads_kv, head_dim), F64, device, gen) for _ in range(2))
    if paged:
        # sequence b owns blocks in a shuffled order of the pool
        perm = torch.randperm(batch * 4, generator=torch.Generator().manual_seed(0)).to(device)
        block_table = perm.view(batch, 4).to(torch.int32)
        k_cache = torch.empty((batch * 4, block_size, heads_kv, head_dim), dtype=F64, device=device)
        v_cache = torch.empty_like(k_cache)
        for b in range(batch):
            for j in range(4):
                k_cache[block_table[b, j]] = dense_k[b, j * block_size : (j + 1) * block_size]
                v_cache[block_table[b, j]] = dense_v[b, j * block_size : (j + 1) * block_size]
    else:
        block_table, k_cache, v_cache = None, dense_k.clone(), dense_v.clone()
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    kw = dict(k=new_k, v=new_v) if append else {}
    out = reference.decode_attention(q, k_cache, v_cache, seqlens, block_table=block_table, **kw)
    for b, n in enumerate(lengths):
        keys, values = dense_k[b, :n], dense_v[b, :n]
        if append:
            keys, values = torch.cat([keys, new_k[b]]), torch.cat([values, new_v[b]])
        if keys.shape[0] == 0:
            assert torch.equal(out[b], torch.zeros_like(out[b]))
            continue
        expected = _sdpa(q[b : b + 1], keys[None], values[None], causal=False)[0]
        assert rel_error(out[b], expected) < BOUND
        if append and not paged:
            assert torch.equal(k_cache[b, n], new_k[b, 0]) and torch.equal(v_cache[b, n], new_v[b, 0])
        if append and paged:
            block = block_table[b, n // block_size]
            assert torch.equal(k_cache[block, n % block_size], new_k[b, 0])


def test_rms_norm_vs_torch(device, gen):
    x, r, w = randn((5, 96), F64, device, gen), randn((5, 96), F64, device, gen), randn((96,), F64, device, gen)
    assert rel_error(reference.rms_norm(x, w, 1e-6), F.rms_norm(x, (96,), w, 1e-6)) < BOUND
    normed, h = reference.rms_norm(x, w, 1e-6, residual=r)
    assert rel_error(h, x + r) < BOUND and rel_error(normed, F.rms_norm(x + r, (96,), w, 1e-6)) < BOUND


def test_fused_projections_vs_torch(device, gen):
    """The fused_linear references against F.linear and the ops they fuse: the residual stream's add
    after o_proj and down_proj, and SwiGLU on either side of a projection."""
    x, w, b = randn((5, 96), F64, device, gen), randn((40, 96), F64, device, gen), randn((40,), F64, device, gen)
    r, gate_up = randn((5, 40), F64, device, gen), randn((5, 192), F64, device, gen)
    assert rel_error(reference.linear(x, w, b, r), F.linear(x, w, b) + r) < BOUND
    swiglu = F.silu(gate_up[:, :96]) * gate_up[:, 96:]
    assert rel_error(reference.silu_and_mul_linear(gate_up, w, None, r), F.linear(swiglu, w) + r) < BOUND
    norm_weight, w_gate_up, x_residual = (randn(shape, F64, device, gen) for shape in ((96,), (80, 96), (5, 96)))
    y, h = reference.rms_norm_linear_silu_and_mul(x, norm_weight, w_gate_up, None, 1e-6, x_residual)
    gu = F.linear(F.rms_norm(x + x_residual, (96,), norm_weight, 1e-6), w_gate_up)
    assert rel_error(h, x + x_residual) < BOUND and rel_error(y, F.silu(gu[:, :40]) * gu[:, 40:]) < BOUND


def test_layer_norm_vs_torch(device, gen):
    x = randn((5, 1152), F64, device, gen, shift=2.0)
    w, b = randn((1152,), F64, device, gen), randn((1152,), F64, device, gen)
    assert rel_error(reference.layer_norm(x, w, b, 1e-6), F.layer_norm(x, (1152,), w, b, 1e-6)) < BOUND


def test_activations_vs_torch(device, gen):
    x = randn((4, 200), F64, device, gen, scale=3.0)
    assert rel_error(reference.gelu_tanh(x), F.gelu(x, approximate="tanh")) < BOUND
    assert rel_error(reference.silu_and_mul(x), F.silu(x[:, :100]) * x[:, 100:]) < BOUND


def test_rotary_vs_complex_rotation(device, gen):
    """Rotate-half with cos = cat(c, c), sin = cat(s, s) is the complex product (x1 + i x2) e^{i theta}."""
    tokens, heads, head_dim = 7, 3, 16
    theta = randn((tokens, head_dim // 2), F64, device, gen)
    cos, sin = torch.cat([theta.cos()] * 2, -1), torch.cat([theta.sin()] * 2, -1)
    q = randn((tokens, heads, head_dim), F64, device, gen)
    q_rot, k_rot = reference.apply_rotary(q, q[:, :1], cos, sin)
    half = head_dim // 2
    z = torch.complex(q[..., :half], q[..., half:]) * torch.polar(torch.ones_like(theta), theta)[:, None, :]
    expected = torch.cat([z.real, z.imag], dim=-1)
    assert rel_error(q_rot, expected) < BOUND and rel_error(k_rot, expected[:, :1]) < BOUND


def test_decode_attention_rotary_vs_complex_rotation_and_sdpa(device, gen):
    """decode_attention(rotary_cos=, rotary_sin=) rotates q and the appended k at position
    cache_seqlens[b] (the complex product with e^{i theta[position]}), then attends (SDPA) over the
    cache plus the rotated key, which it has written into the cache."""
    batch, heads_q, heads_kv, head_dim = 3, 6, 2, 16
    lengths = [0, 9, 30]
    theta = randn((40, head_dim // 2), F64, device, gen)
    cos, sin = torch.cat([theta.cos()] * 2, -1), torch.cat([theta.sin()] * 2, -1)
    q = randn((batch, 1, heads_q, head_dim), F64, device, gen)
    new_k, new_v = (randn((batch, 1, heads_kv, head_dim), F64, device, gen) for _ in range(2))
    k_cache, v_cache = (randn((batch, 32, heads_kv, head_dim), F64, device, gen) for _ in range(2))
    cached_k = k_cache.clone()
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    out = reference.decode_attention(q, k_cache, v_cache, seqlens, new_k, new_v, rotary_cos=cos, rotary_sin=sin)

    def rotated(x, position):  # x [H, D]
        half = head_dim // 2
        z = torch.complex(x[..., :half], x[..., half:]) * torch.polar(torch.ones_like(theta[position]), theta[position])
        return torch.cat([z.real, z.imag], dim=-1)

    for b, n in enumerate(lengths):
        q_rot, k_rot = rotated(q[b, 0], n)[None, None], rotated(new_k[b, 0], n)[None]
        keys, values = torch.cat([cached_k[b, :n], k_rot]), torch.cat([v_cache[b, :n], new_v[b]])
        assert rel_error(out[b], _sdpa(q_rot, keys[None], values[None], causal=False)[0]) < BOUND
        assert rel_error(k_cache[b, n], k_rot[0]) < BOUND
