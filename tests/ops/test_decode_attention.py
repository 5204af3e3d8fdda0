import pytest
import torch

import aurora_kernels as ak
from aurora_kernels._dispatch import poisoned_outputs
from aurora_kernels.model.layers import RotaryTables
from aurora_kernels.ops import reference
from aurora_kernels.ops.decode_attention import default_num_kv_splits
from aurora_kernels.testing import assert_parity, check_compile, check_cuda_graph, check_op, randn, reference_in_float64
from tests.catalogue import DTYPE_IDS, DTYPES, GQA_HEADS, HEAD_DIMS, RAGGED_LENGTHS, cuda_only, fused_qkv


def _decode_inputs(lengths, heads_q, heads_kv, head_dim, dtype, device, gen, capacity=None, append=False):
    batch = len(lengths)
    capacity = capacity or max(lengths) + 1
    q = randn((batch, 1, heads_q, head_dim), dtype, device, gen)
    k_cache, v_cache = (randn((batch, capacity, heads_kv, head_dim), dtype, device, gen) for _ in range(2))
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    new = [randn((batch, 1, heads_kv, head_dim), dtype, device, gen) for _ in range(2)] if append else [None, None]
    return q, k_cache, v_cache, seqlens, *new


def _paged_copy(k_cache, v_cache, page_size, gen):
    """The same caches as pages in a shuffled pool [num_blocks, page_size, Hkv, D] with a block table
    (two spare pages that no sequence uses)."""
    batch, capacity, heads_kv, head_dim = k_cache.shape
    pages_per_seq = -(-capacity // page_size)
    num_blocks = batch * pages_per_seq + 2
    order = torch.randperm(
        num_blocks, generator=torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen, device=gen.device)))
    )
    block_table = order[: batch * pages_per_seq].reshape(batch, pages_per_seq).to(torch.int32).to(k_cache.device)
    pools = []
    for cache in (k_cache, v_cache):
        pool = randn((num_blocks, page_size, heads_kv, head_dim), cache.dtype, cache.device, gen)
        padded = torch.zeros((batch, pages_per_seq * page_size, heads_kv, head_dim), dtype=cache.dtype, device=cache.device)
        padded[:, :capacity] = cache
        pool[block_table.long()] = padded.unflatten(1, (pages_per_seq, page_size))
        pools.append(pool)
    return (*pools, block_table)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", RAGGED_LENGTHS, ids=lambda n: "-".join(map(str, n)))
@pytest.mark.parametrize("append", [False, True], ids=["cached", "append"])
def test_ragged_contiguous(dtype, lengths, append, device, gen):
    check_op(
        ak.decode_attention, reference.decode_attention, *_decode_inputs(lengths, 12, 2, 128, dtype, device, gen, append=append)
    )


@pytest.mark.parametrize("heads", GQA_HEADS, ids=lambda h: f"gqa{h[0] // h[1]}")
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_gqa_and_head_dims(heads, head_dim, device, gen):
    check_op(ak.decode_attention, reference.decode_attention,
             *_decode_inputs([70, 1, 33], *heads, head_dim, torch.bfloat16, device, gen, append=True))  # fmt: skip


@pytest.mark.parametrize("num_kv_splits", [1, 2, 3, 7, 16])
def test_num_kv_splits(num_kv_splits, device, gen):
    args = _decode_inputs([0, 1, 130, 64], 6, 1, 64, torch.float16, device, gen, capacity=200)
    check_op(ak.decode_attention, reference.decode_attention, *args, num_kv_splits=num_kv_splits)


@pytest.mark.parametrize("page_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("append", [False, True], ids=["cached", "append"])
def test_paged_matches_contiguous(page_size, append, device, gen):
    q, k_cache, v_cache, seqlens, k, v = _decode_inputs([17, 0, 100], 12, 2, 80, torch.bfloat16, device, gen,
                                                        capacity=130, append=append)  # fmt: skip
    k_pool, v_pool, block_table = _paged_copy(k_cache, v_cache, page_size, gen)
    with poisoned_outputs():
        paged = ak.decode_attention(q, k_pool, v_pool, seqlens, k, v, block_table=block_table, num_kv_splits=3)
    contiguous = ak.decode_attention(q, k_cache, v_cache, seqlens, k, v, num_kv_splits=3)
    assert torch.equal(paged, contiguous)  # the same tiles in the same order: the same bits
    # and both caches now hold the appended token at the same logical positions
    logical = k_pool[block_table.long()].flatten(1, 2)[:, : k_cache.shape[1]]
    assert torch.equal(logical, k_cache)


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_append_writes_cache_exactly(paged, device, gen):
    lengths = [5, 0, 63, 64]
    q, k_cache, v_cache, seqlens, k, v = _decode_inputs(lengths, 4, 2, 64, torch.float16, device, gen, capacity=80, append=True)
    block_table = None
    if paged:
        k_cache, v_cache, block_table = _paged_copy(k_cache, v_cache, 16, gen)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    with poisoned_outputs():
        out = ak.decode_attention(q, k_cache, v_cache, seqlens, k, v, block_table=block_table)
    expected_k, expected_v = k_before.clone(), v_before.clone()
    for b, n in enumerate(lengths):
        block, row = (b, n) if not paged else (int(block_table[b, n // 16]), n % 16)
        expected_k[block, row], expected_v[block, row] = k[b, 0], v[b, 0]
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
    # appending then attending equals attending over the cache that already holds the token
    again = ak.decode_attention(q, k_cache, v_cache, seqlens + 1, block_table=block_table)
    assert_parity(out, reference_in_float64(reference.decode_attention, q, k_cache, v_cache, seqlens + 1, None, None, block_table),
                  torch.float16)  # fmt: skip
    assert_parity(again, out.double(), torch.float16, "no-append over the appended cache")


def _rotary_tables(head_dim, device, max_positions=300):
    """The model's tables (theta 1e6, fp32 [max_positions, D]), at their real values."""
    tables = RotaryTables(head_dim, 1e6, max_positions).to(device)
    return tables.cos, tables.sin


def _model_call_inputs(lengths, capacity, dtype, paged, device, gen):
    """The model's decode call (Hq 12, Hkv 2, D 128, a new token appended, RoPE tables), its cache
    contiguous or paged in pages of 16: (q, k_cache, v_cache, seqlens, k, v, block_table, cos, sin)."""
    q, k_cache, v_cache, seqlens, k, v = _decode_inputs(lengths, 12, 2, 128, dtype, device, gen, capacity=capacity, append=True)
    block_table = None
    if paged:
        k_cache, v_cache, block_table = _paged_copy(k_cache, v_cache, 16, gen)
    return (q, k_cache, v_cache, seqlens, k, v, block_table, *_rotary_tables(128, device, capacity))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_rotary_fused(dtype, paged, device, gen):
    """q and the new k rotated in the kernel at position cache_seqlens[b]: the output, and the key the
    cache now holds, match apply_rotary followed by decode_attention."""
    q, k_cache, v_cache, seqlens, k, v, block_table, cos, sin = _model_call_inputs(
        [0, 1, 37, 130], 150, dtype, paged, device, gen
    )
    expected = reference_in_float64(reference.decode_attention, q, k_cache.clone(), v_cache.clone(), seqlens, k, v,
                                    block_table, None, None, cos, sin)  # fmt: skip
    unfused_cache = k_cache.clone()
    with poisoned_outputs():
        out = ak.decode_attention(q, k_cache, v_cache, seqlens, k, v, block_table, num_kv_splits=3,
                                  rotary_cos=cos, rotary_sin=sin)  # fmt: skip
    assert_parity(out, expected, dtype, "fused rotary")
    positions = seqlens.long()[:, None]
    q_rot, k_rot = ak.apply_rotary(q, k, cos[positions], sin[positions])
    unfused = ak.decode_attention(q_rot, unfused_cache, v_cache.clone(), seqlens, k_rot, v, block_table, num_kv_splits=3)
    assert_parity(out, unfused.double(), dtype, "fused rotary against apply_rotary + decode_attention")
    assert_parity(k_cache, unfused_cache.double(), dtype, "the rotated keys written to the cache")


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("num_kv_splits", [1, 3])
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_out_is_written_in_place_and_returned(paged, num_kv_splits, backend, device, gen):
    """out (a serving engine's buffer, NaN here) receives the result: with one split from the split
    kernel, with several from the merge; the call returns out itself."""
    q, k_cache, v_cache, seqlens, k, v, block_table, cos, sin = _model_call_inputs(
        [0, 1, 37, 130], 150, torch.bfloat16, paged, device, gen
    )
    expected = reference_in_float64(reference.decode_attention, q, k_cache.clone(), v_cache.clone(), seqlens, k, v,
                                    block_table, None, None, cos, sin)  # fmt: skip
    out = torch.full_like(q, float("nan"))
    got = ak.decode_attention(q, k_cache, v_cache, seqlens, k, v, block_table, num_kv_splits=num_kv_splits,
                              rotary_cos=cos, rotary_sin=sin, out=out, backend=backend)  # fmt: skip
    assert got is out
    assert_parity(out, expected, torch.bfloat16, "decode_attention into out")


def test_out_is_checked_by_name(device, gen):
    q, k_cache, v_cache, seqlens, k, v = _decode_inputs([3, 9], 4, 2, 64, torch.float32, device, gen, append=True)
    with pytest.raises(
        ValueError, match=r"out: expected shape \[2, 1, 4, 64\] \[B, 1, Hq, D\] \(the shape of q\), got \[2, 4, 64\]"
    ):
        ak.decode_attention(q, k_cache, v_cache, seqlens, out=torch.empty(2, 4, 64, device=device))
    with pytest.raises(TypeError, match=r"out: expected dtype torch.float32 \(the dtype of q\), got torch.bfloat16"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, out=torch.empty_like(q, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="out: expected a contiguous tensor"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, out=torch.empty(2, 1, 64, 4, device=device).transpose(-1, -2))
    with pytest.raises(ValueError, match="out: expected a tensor on"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, out=torch.empty_like(q, device="meta"))
    with pytest.raises(TypeError, match="out: expected a torch.Tensor, got list"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, out=q.tolist())
    # out in memory the launch reads or writes: the kernels would race with themselves
    with pytest.raises(ValueError, match="out, q: expected tensors in separate memory"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, out=q)
    in_cache = k_cache.view(-1)[: q.numel()].view(q.shape)
    with pytest.raises(ValueError, match="out, k_cache: expected tensors in separate memory"):  # the cache, read
        ak.decode_attention(q, k_cache, v_cache, seqlens, out=in_cache)
    with pytest.raises(ValueError, match="k_cache, out: expected tensors in separate memory"):  # written by the append
        ak.decode_attention(q, k_cache, v_cache, seqlens, k, v, out=in_cache)


def test_out_under_torch_compile(device, gen):
    q, k_cache, v_cache, seqlens, k, v = _decode_inputs([100, 7, 0], 12, 2, 128, torch.bfloat16, device, gen,
                                                        capacity=256, append=True)  # fmt: skip
    expected = reference_in_float64(reference.decode_attention, q, k_cache.clone(), v_cache.clone(), seqlens, k, v)
    out = torch.full_like(q, float("nan"))

    def step(q, k_cache, v_cache, k, v, out):
        ak.decode_attention(q, k_cache, v_cache, seqlens, k, v, out=out)

    torch._dynamo.reset()
    torch.compile(step, fullgraph=True)(q, k_cache, v_cache, k, v, out)
    assert_parity(out, expected, torch.bfloat16, "compiled decode_attention into out")


@pytest.mark.parametrize("heads", GQA_HEADS, ids=lambda h: f"gqa{h[0] // h[1]}")
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_rotary_fused_gqa_and_head_dims(heads, head_dim, device, gen):
    """Head dims 72/80 have halves of 36/40 inside a 128-column tile; q a slice of a fused projection."""
    heads_q, heads_kv = heads
    q, k, v = fused_qkv((3, 1), heads_q, heads_kv, head_dim, torch.bfloat16, device, gen)
    _, k_cache, v_cache, seqlens, _, _ = _decode_inputs([70, 0, 33], heads_q, heads_kv, head_dim, torch.bfloat16, device, gen)
    cos, sin = _rotary_tables(head_dim, device)
    check_op(ak.decode_attention, reference.decode_attention, q, k_cache, v_cache, seqlens, k, v,
             rotary_cos=cos, rotary_sin=sin)  # fmt: skip


def test_strided_q_and_fused_kv_cache(device, gen):
    """q a slice of a fused projection; K and V caches interleaved in one [B, S, 2, Hkv, D] buffer."""
    batch, capacity, heads_q, heads_kv, head_dim = 3, 90, 12, 2, 128
    qkv = randn((batch, 1, (heads_q + 2 * heads_kv) * head_dim), torch.bfloat16, device, gen)
    q = qkv[..., : heads_q * head_dim].unflatten(-1, (heads_q, head_dim))
    kv_cache = randn((batch, capacity, 2, heads_kv, head_dim), torch.bfloat16, device, gen)
    seqlens = torch.tensor([89, 3, 40], dtype=torch.int32, device=device)
    k, v = (randn((batch, 1, heads_kv, head_dim), torch.bfloat16, device, gen) for _ in range(2))
    check_op(ak.decode_attention, reference.decode_attention, q, kv_cache[:, :, 0], kv_cache[:, :, 1], seqlens, k, v)


def test_empty_sequences_give_zero(device, gen):
    q, k_cache, v_cache, seqlens, _, _ = _decode_inputs([0, 0], 4, 2, 64, torch.float32, device, gen, capacity=16)
    for splits in (1, 4):
        with poisoned_outputs():
            out = ak.decode_attention(q, k_cache, v_cache, seqlens, num_kv_splits=splits)
        assert torch.equal(out, torch.zeros_like(out))
    q, k_cache, v_cache, seqlens, _, _ = _decode_inputs([3], 4, 2, 64, torch.float32, device, gen)
    assert ak.decode_attention(q[:0], k_cache[:0], v_cache[:0], seqlens[:0]).shape == (0, 1, 4, 64)


def test_int64_offsets(device, gen):
    """Sequence 1's cache starts 2**31 + 256 elements in: past what an int32 offset can address. The
    storage is allocated but not written, so only the touched pages become real memory."""
    heads_kv, head_dim, capacity = 2, 64, 40
    batch_stride = 2**31 + 256
    storage = torch.empty(batch_stride + 2 * capacity * heads_kv * head_dim, dtype=torch.float16, device=device)
    caches = [storage.as_strided((2, capacity, heads_kv, head_dim), (batch_stride, heads_kv * head_dim, head_dim, 1), offset)
              for offset in (0, capacity * heads_kv * head_dim)]  # fmt: skip
    for cache in caches:
        cache.copy_(randn(cache.shape, torch.float16, device, gen))
    q = randn((2, 1, 4, head_dim), torch.float16, device, gen)
    k, v = (randn((2, 1, heads_kv, head_dim), torch.float16, device, gen) for _ in range(2))
    seqlens = torch.tensor([7, 33], dtype=torch.int32, device=device)
    expected = reference_in_float64(reference.decode_attention, q, *(c.clone() for c in caches), seqlens, k, v)
    with poisoned_outputs():
        out = ak.decode_attention(q, *caches, seqlens, k, v, num_kv_splits=2)
    assert_parity(out, expected, torch.float16)
    assert torch.equal(caches[0][1, 33], k[1, 0]) and torch.equal(caches[1][1, 33], v[1, 0])


def test_default_num_kv_splits_rule():
    cpu = torch.device("cpu")  # the rule assumes an H100's 132 SMs for CPU tensors
    assert default_num_kv_splits(1, 2, 4096, cpu) == 64  # 2 * 132 programs wanted, 64 tokens a split at least
    assert default_num_kv_splits(1, 2, 100, cpu) == 2
    assert default_num_kv_splits(1, 2, 64, cpu) == 1  # one tile: nothing to split
    assert default_num_kv_splits(32, 2, 16384, cpu) == 5
    assert default_num_kv_splits(128, 2, 16384, cpu) == 2
    assert default_num_kv_splits(256, 2, 16384, cpu) == 1
    assert default_num_kv_splits(1, 1, 10**6, cpu) == 128  # capped at MAX_KV_SPLITS
    # 17 splits wanted, but 4096 tokens in splits of 256 are 16: a 17th would always be empty
    assert default_num_kv_splits(8, 2, 4096, cpu) == 16
    assert default_num_kv_splits(32, 2, 1024, cpu) == 4  # 5 wanted, 4 of 256
    assert default_num_kv_splits(2, 2, 0, cpu) == 1  # a cache of no tokens
    for batch in (1, 3, 8, 13, 32, 64):  # whatever the count, no split is empty at full capacity
        for capacity in (64, 100, 320, 1000, 1024, 4096, 16384):
            splits = default_num_kv_splits(batch, 2, capacity, cpu)
            split_len = -(-(-(-capacity // splits)) // 64) * 64  # the kernel's: whole tiles of 64
            assert (splits - 1) * split_len < capacity, (batch, capacity, splits)


def test_bad_num_kv_splits(device, gen):
    args = _decode_inputs([3], 4, 2, 64, torch.float32, device, gen)[:4]
    with pytest.raises(ValueError, match="num_kv_splits: expected an int >= 1, got 0"):
        ak.decode_attention(*args, num_kv_splits=0)
    with pytest.raises(ValueError, match="num_kv_splits: expected at most 128, got 129"):
        ak.decode_attention(*args, num_kv_splits=129)


@pytest.mark.parametrize("check", [check_compile, pytest.param(check_cuda_graph, marks=cuda_only)],
                         ids=["torch_compile", "cuda_graph"])  # fmt: skip
def test_compiled_and_graph_captured(check, device, gen):
    q, k_cache, v_cache, seqlens, k, v = _decode_inputs([100, 7, 0], 12, 2, 128, torch.bfloat16, device, gen,
                                                        capacity=256, append=True)  # fmt: skip
    cos, sin = _rotary_tables(128, device)
    args = (q, k_cache, v_cache, seqlens, k, v, None, None, None, cos, sin)  # the model's decode: append + rotary
    expected = reference_in_float64(reference.decode_attention, q, k_cache.clone(), v_cache.clone(), *args[3:])
    # the append writes the same token to the same slot on every call (cache_seqlens is not advanced)
    check(ak.decode_attention, args, expected, torch.bfloat16, "decode_attention")


@pytest.mark.parametrize("page_size", [None, 16, 256], ids=["contiguous", "paged16", "paged256"])
def test_flash_attn_matrix_append_at_random_lengths(page_size, device, gen):
    """flash-attn's kvcache matrix: MQA, a new token appended at random cache lengths (0 among them),
    rotated at its position (non-zero offsets), contiguous or paged (pages of 16 and 256)."""
    lengths = [0, *torch.randint(1, 299, (4,), generator=gen, device=gen.device).tolist()]
    q, k_cache, v_cache, seqlens, k, v = _decode_inputs(
        lengths, 8, 1, 128, torch.bfloat16, device, gen, capacity=300, append=True
    )
    block_table = None
    if page_size is not None:
        k_cache, v_cache, block_table = _paged_copy(k_cache, v_cache, page_size, gen)
    cos, sin = _rotary_tables(128, device, 300)
    check_op(ak.decode_attention, reference.decode_attention, q, k_cache, v_cache, seqlens, k, v, block_table,
             rotary_cos=cos, rotary_sin=sin)  # fmt: skip


def _key_mask(lengths, capacity, device, gen, drop=0.5):
    """bool [B, capacity]: random keys dropped (a padded batch has holes anywhere: left padding, a
    right-padded prompt before its generated tokens); sequence 0 keeps none of its keys, sequence 1
    only its last; past each length the mask holds junk, which the kernel must not read as keys.
    A slice of a wider mask, as transformers hands one over."""
    wide = torch.rand((len(lengths), capacity + 5), generator=torch.Generator().manual_seed(gen.initial_seed() % 2**31))
    mask = (wide >= drop).to(device)[:, 5:]
    mask[0] = False
    mask[1, : lengths[1] - 1] = False
    mask[1, lengths[1] - 1] = True
    return mask


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("num_kv_splits", [1, 3, 16])
@pytest.mark.parametrize("append", [False, True], ids=["cached", "append"])
def test_key_mask_drops_the_keys_it_clears(dtype, num_kv_splits, append, device, gen):
    """Against the reference, which attends the kept keys alone (a sequence that keeps none gives 0,
    or, with an append, attends the new token alone), whatever the splits: a split whose keys are all
    dropped weighs nothing, where one whose scores all overflowed would be NaN."""
    lengths = [40, 90, 130, 7]
    args = _decode_inputs(lengths, 12, 2, 128, dtype, device, gen, capacity=140, append=append)
    mask = _key_mask(lengths, 140, device, gen)
    assert mask.stride(0) == 145  # a slice of a wider mask
    for cache in args[1:3]:  # a dropped key's row may hold anything: NaN, in memory never written
        cache[~mask] = float("nan")
    check_op(ak.decode_attention, reference.decode_attention, *args, num_kv_splits=num_kv_splits, key_mask=mask)
    with poisoned_outputs():
        out = ak.decode_attention(*args[:4], num_kv_splits=num_kv_splits, key_mask=mask)
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # no key kept: 0, not NaN


def test_key_mask_reference_attends_the_kept_keys_alone(device, gen):
    """The reference with a mask equals plain attention over the kept keys gathered (SDPA's math, an
    independent implementation)."""
    lengths = [20, 9, 33]
    q, k_cache, v_cache, seqlens, _, _ = _decode_inputs(lengths, 4, 2, 32, torch.float64, device, gen, capacity=40)
    mask = _key_mask(lengths, 40, device, gen)
    got = reference.decode_attention(q, k_cache, v_cache, seqlens, key_mask=mask)
    for b, length in enumerate(lengths):
        kept = mask[b, :length].nonzero()[:, 0]
        if kept.numel() == 0:
            assert torch.equal(got[b], torch.zeros_like(got[b]))
            continue
        keys, values = (t[b, kept].transpose(0, 1).repeat_interleave(2, 0) for t in (k_cache, v_cache))  # [Hq, L, D]
        want = torch.nn.functional.scaled_dot_product_attention(q[b, 0][:, None], keys, values)[:, 0]
        torch.testing.assert_close(got[b, 0], want, rtol=1e-12, atol=1e-12)


def test_key_mask_is_checked_by_name(device, gen):
    q, k_cache, v_cache, seqlens, _, _ = _decode_inputs([3, 9], 4, 2, 64, torch.float32, device, gen, capacity=16)
    mask = torch.ones((2, 16), dtype=torch.bool, device=device)
    with pytest.raises(TypeError, match="key_mask: expected dtype bool, got torch.int64"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, key_mask=mask.long())
    with pytest.raises(
        ValueError, match=r"key_mask: expected shape \[2, 16\] \[B, S_max\] \(the cache's positions\), got \[2, 15\]"
    ):
        ak.decode_attention(q, k_cache, v_cache, seqlens, key_mask=mask[:, :15])
    with pytest.raises(ValueError, match="key_mask: expected the last dim to be contiguous"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, key_mask=torch.ones((2, 32), dtype=torch.bool, device=device)[:, ::2])
    paged_k, paged_v, block_table = _paged_copy(k_cache, v_cache, 16, gen)
    with pytest.raises(ValueError, match="key_mask: expected a contiguous cache"):
        ak.decode_attention(q, paged_k, paged_v, seqlens, block_table=block_table, key_mask=mask)


@pytest.mark.parametrize("check", [check_compile, pytest.param(check_cuda_graph, marks=cuda_only)],
                         ids=["torch_compile", "cuda_graph"])  # fmt: skip
def test_key_mask_compiled_and_graph_captured(check, device, gen):
    lengths = [40, 90, 5]
    q, k_cache, v_cache, seqlens, _, _ = _decode_inputs(lengths, 12, 2, 128, torch.bfloat16, device, gen, capacity=96)
    mask = _key_mask(lengths, 96, device, gen)
    expected = reference_in_float64(reference.decode_attention, q, k_cache, v_cache, seqlens, key_mask=mask)
    check(lambda *args: ak.decode_attention(*args, key_mask=mask), (q, k_cache, v_cache, seqlens), expected, torch.bfloat16,
          "decode_attention with a key mask")  # fmt: skip
