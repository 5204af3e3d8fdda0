"""The vLLM plugin's adapters (integrations/vllm_plugin.py) on any machine, vLLM not installed: vLLM's
rotary convention (a [max_positions, D] cache of cosines then sines, flattened heads) and its paged
KV-cache layout ([num_blocks, Hkv, block_size, 2 * D]) against float64 references written from
vLLM's definitions. tests/vllm/ checks the plugin inside the real vLLM (`make test-vllm`)."""

import math

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.integrations.vllm_plugin import paged_decode_attention, paged_kv_cache_views, rotary_embedding
from aurora_kernels.testing import assert_parity


def cos_sin_cache(max_positions, head_dim, theta=1e6):
    """vLLM's RotaryEmbedding cache: per position the D/2 cosines, then the D/2 sines."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def neox_reference(positions, x, cache, head_dim):
    """Rotate-half: x1 * cos - x2 * sin, x2 * cos + x1 * sin on the two halves of each head."""
    x = x.double().view(positions.shape[0], -1, head_dim)
    cos, sin = (t[:, None] for t in cache.double()[positions].chunk(2, dim=-1))
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def paged_decode_reference(query, kv_cache, block_table, seq_lens, scale):
    """float64 attention of each query over its sequence's tokens, read page by page from vLLM's
    [num_blocks, Hkv, block_size, 2 * D] layout."""
    heads_q, head_dim = query.shape[1], query.shape[2]
    heads_kv, block_size = kv_cache.shape[1], kv_cache.shape[2]
    out = []
    for b, length in enumerate(seq_lens.tolist()):
        pages = kv_cache[block_table[b, : -(-length // block_size)].long()].double()  # [pages, Hkv, block, 2D]
        tokens = pages.permute(0, 2, 1, 3).reshape(-1, heads_kv, 2 * head_dim)[:length]
        k, v = (t.repeat_interleave(heads_q // heads_kv, dim=1) for t in (tokens[..., :head_dim], tokens[..., head_dim:]))
        weights = torch.softmax(torch.einsum("hd,thd->ht", query[b].double(), k) * scale, dim=-1)
        out.append(torch.einsum("ht,thd->hd", weights, v))
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("flat", [True, False], ids=["[T, H*D]", "[T, H, D]"])
def test_rotary_embedding_in_vllms_convention(dtype, flat, gen):
    head_dim, tokens = 128, 11
    cache = cos_sin_cache(300, head_dim).to(dtype)
    positions = torch.randint(0, 300, (tokens,), generator=gen)
    shape_q, shape_k = (
        ((tokens, 12 * head_dim), (tokens, 2 * head_dim)) if flat else ((tokens, 12, head_dim), (tokens, 2, head_dim))
    )
    query, key = torch.randn(shape_q, generator=gen).to(dtype), torch.randn(shape_k, generator=gen).to(dtype)
    with ak.count_calls() as calls:
        q_rot, k_rot = rotary_embedding(positions, query, key, cache, head_dim)
    assert calls == {("apply_rotary", "triton"): 1}  # one launch: the kernel picks the rows of the halves
    assert q_rot.shape == query.shape and k_rot.shape == key.shape
    assert_parity(q_rot, neox_reference(positions, query, cache, head_dim).view(shape_q), dtype, "rotary q")
    assert_parity(k_rot, neox_reference(positions, key, cache, head_dim).view(shape_k), dtype, "rotary k")
    q_only, no_key = rotary_embedding(positions, query, None, cache, head_dim)  # cross-layer KV sharing
    assert no_key is None and torch.equal(q_only, q_rot)


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_decode_attention_on_vllms_cache(block_size, dtype, gen):
    heads_q, heads_kv, head_dim, num_blocks = 12, 2, 128, 32
    seq_lens = torch.tensor([1, 37, 80, 17, 0], dtype=torch.int32)  # a request with nothing cached gives 0
    batch = seq_lens.shape[0]
    block_table = torch.randperm(num_blocks, generator=gen)[: batch * 6].view(batch, 6).to(torch.int32)
    kv_cache = torch.randn((num_blocks, heads_kv, block_size, 2 * head_dim), generator=gen).to(dtype)
    query = torch.randn((batch, heads_q, head_dim), generator=gen).to(dtype)
    scale = 1 / math.sqrt(head_dim)
    before = kv_cache.clone()
    out = torch.full_like(query, float("nan"))
    with ak.count_calls() as calls:
        paged_decode_attention(query, kv_cache, block_table, seq_lens, scale, out=out)
    assert calls == {("decode_attention", "triton"): 1} and torch.equal(kv_cache, before)  # the cache is only read
    want = paged_decode_reference(query[:-1], kv_cache, block_table[:-1], seq_lens[:-1], scale)
    assert_parity(out[:-1], want, dtype, "paged decode on vLLM's layout")
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))


def test_kv_cache_views_share_memory_and_refuse_other_layouts():
    kv_cache = torch.randn(3, 2, 16, 2 * 64)
    key_cache, value_cache = paged_kv_cache_views(kv_cache, 64)
    assert key_cache.shape == value_cache.shape == (3, 16, 2, 64)
    assert key_cache.data_ptr() == kv_cache.data_ptr() and torch.equal(value_cache[1, 5, 0], kv_cache[1, 0, 5, 64:])
    with pytest.raises(
        ValueError, match=r"kv_cache: expected \[num_blocks, Hkv, block_size, 2 \* 64\], got \(2, 3, 2, 16, 128\)"
    ):
        paged_kv_cache_views(torch.randn(2, 3, 2, 16, 128), 64)


def test_paged_decode_attention_writes_vllms_output_rows_without_a_copy(monkeypatch, gen):
    """vLLM's output rows (contiguous) are handed to the kernels as out; a strided out, which vLLM does
    not pass, is still filled right, by a copy."""
    from aurora_kernels.integrations import vllm_plugin

    seq_lens = torch.tensor([5, 40], dtype=torch.int32)
    block_table = torch.tensor([[3, 1, 0], [2, 4, 5]], dtype=torch.int32)
    kv_cache = torch.randn((6, 2, 16, 2 * 64), generator=gen)
    query = torch.randn((2, 4, 64), generator=gen)
    want = paged_decode_reference(query, kv_cache, block_table, seq_lens, 0.125)
    handed = []

    def spy(*args, out=None, **kwargs):
        handed.append(out)
        return ak.decode_attention(*args, out=out, **kwargs)

    monkeypatch.setattr(vllm_plugin, "decode_attention", spy)
    buffer = torch.full((8, 4, 64), float("nan"))  # vLLM's output buffer: the decode rows come first
    assert paged_decode_attention(query, kv_cache, block_table, seq_lens, 0.125, out=buffer[:2]).data_ptr() == buffer.data_ptr()
    assert handed[-1].data_ptr() == buffer.data_ptr()
    assert_parity(buffer[:2], want, torch.float32, "into vLLM's output rows")
    strided = torch.full((2, 4, 128), float("nan"))[..., :64]
    paged_decode_attention(query, kv_cache, block_table, seq_lens, 0.125, out=strided)
    assert handed[-1] is None
    assert_parity(strided, want, torch.float32, "into a strided out")
