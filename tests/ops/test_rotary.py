import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import assert_parity, check_op, randn
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
    with pytest.raises(ValueError, match="cos: expected shape \\[..., 5, 64 or 32\\]"):
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


def test_the_broadcast_rule_is_torchs():
    """_check_broadcasts (plain Python, for the host time) accepts exactly the leading dims that
    torch.broadcast_shapes broadcasts to q's token dims unchanged: every shape of up to 3 dims of
    sizes 0..3 against every token shape of up to 3 dims."""
    import itertools

    from aurora_kernels.ops.rotary import _check_broadcasts

    shapes = [s for rank in range(4) for s in itertools.product(range(4), repeat=rank)]
    for leading, token_shape in itertools.product(shapes, [s for s in shapes if s]):
        try:
            torchs = torch.broadcast_shapes(leading, token_shape) == token_shape
        except RuntimeError:
            torchs = False
        try:
            _check_broadcasts("cos", torch.Size((*leading, 8)), token_shape, trailing=1)
            ours = True
        except ValueError:
            ours = False
        assert ours == torchs, (leading, token_shape)


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


def _positions_case(token_shape, head_dim, dtype, device, gen, half_width, table_rows=300):
    """q, k as slices of a fused projection; tables of `table_rows` rows (full or half width: the
    halves of vLLM's cos_sin_cache, views of one [rows, D] tensor); positions int64 [..., L], every
    other entry of a longer tensor (a strided view), scrambled over the table."""
    q, k, _ = fused_qkv(token_shape, 4, 2, head_dim, dtype, device, gen)
    width = head_dim // 2 if half_width else head_dim
    cos_sin = randn((table_rows, 2 * width), torch.float32, device, gen)
    cos, sin = cos_sin.chunk(2, dim=-1)
    positions = torch.randint(0, table_rows, (*token_shape[:-1], 2 * token_shape[-1]), generator=gen).to(device)[..., ::2]
    return q, k, cos, sin, positions


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("half_width", [True, False], ids=["D/2-tables", "D-tables"])
@pytest.mark.parametrize("token_shape, head_dim", [((37,), 128), ((2, 9), 72)], ids=["packed-D128", "dense-D72"])
def test_positions_pick_the_rows_of_whole_tables(dtype, half_width, token_shape, head_dim, device, gen):
    q, k, cos, sin, positions = _positions_case(token_shape, head_dim, dtype, device, gen, half_width)
    with ak.count_calls() as calls:
        check_op(ak.apply_rotary, reference.apply_rotary, q, k, cos, sin, positions=positions)
    assert calls[("apply_rotary", "triton")] == 1
    # the same rotation as the gathered full-width rows without positions (the reference's own path)
    gathered = [torch.cat((t[positions], t[positions]), -1) if half_width else t[positions] for t in (cos, sin)]
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, *gathered)
    # int32 positions, one row of them broadcast over a dense batch's sequences
    one_sequence = positions.reshape(-1, positions.shape[-1])[-1].int()
    check_op(ak.apply_rotary, reference.apply_rotary, q, k, cos, sin, positions=one_sequence)


def test_positions_with_the_cache_write(device, gen):
    q, k, v, _, _, (k_cache, v_cache), slots = _cache_write_case((11,), 4, 2, 64, torch.bfloat16, device, gen)
    _, _, cos, sin, positions = _positions_case((11,), 64, torch.bfloat16, device, gen, half_width=True)
    want_k_cache, want_v_cache = k_cache.double(), v_cache.double()
    want_q, want_k = reference.apply_rotary(q.double(), k.double(), cos.double(), sin.double(), positions=positions,
                                            v=v.double(), k_cache=want_k_cache, v_cache=want_v_cache, cache_slots=slots)  # fmt: skip
    q_rot, k_rot = ak.apply_rotary(q, k, cos, sin, positions=positions, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=slots)
    assert_parity(q_rot, want_q, torch.bfloat16, "q_rot")
    assert_parity(k_rot, want_k, torch.bfloat16, "k_rot")
    assert_parity(k_cache, want_k_cache, torch.bfloat16, "k_cache after the write")
    assert torch.equal(v_cache[slots], v.reshape(-1, 2, 64))


def test_positions_under_torch_compile(device, gen):
    """No host sync: the value check of the positions stays out of a traced graph."""
    q, k, cos, sin, positions = _positions_case((2, 9), 64, torch.float32, device, gen, half_width=True)
    want = reference.apply_rotary(q.double(), k.double(), cos.double(), sin.double(), positions=positions)
    torch._dynamo.reset()
    got = torch.compile(lambda q, k, p: ak.apply_rotary(q, k, cos, sin, positions=p), fullgraph=True)(q, k, positions)
    assert_parity(got[0], want[0], torch.float32, "compiled q_rot")
    assert_parity(got[1], want[1], torch.float32, "compiled k_rot")


def test_positions_arguments_are_checked_by_name(device, gen):
    q, k, cos, sin, positions = _positions_case((5,), 64, torch.float32, device, gen, half_width=False, table_rows=20)
    with pytest.raises(TypeError, match="positions: expected dtype int32/int64, got torch.float32"):
        ak.apply_rotary(q, k, cos, sin, positions=positions.float())
    with pytest.raises(ValueError, match=r"positions: expected leading dims that broadcast to q's \[\] \(and L = 5\), got \[4\]"):
        ak.apply_rotary(q, k, cos, sin, positions=positions[:4])
    a_table = r"expected a table \[max_positions >= 1, 64 or 32\] \(with positions\)"
    with pytest.raises(ValueError, match=rf"cos: {a_table}, got \[1, 20, 64\]"):
        ak.apply_rotary(q, k, cos[None], sin, positions=positions)
    with pytest.raises(ValueError, match=rf"sin: {a_table}, got \[0, 64\]"):
        ak.apply_rotary(q, k, cos, sin[:0], positions=positions)
    with pytest.raises(ValueError, match=r"sin: expected the width and rows of cos \[20, 64\], got \[19, 64\]"):
        ak.apply_rotary(q, k, cos, sin[:19], positions=positions)
    with pytest.raises(ValueError, match=r"sin: expected the width of cos \[5, 64\], got \[5, 32\]"):
        ak.apply_rotary(q, k, cos[positions], sin[positions, :32])
    if device.type == "cpu":  # the value check reads the positions: on CUDA only under value_checks("always")
        rows = r"positions: expected rows in \[0, 20\) of the tables cos, sin, got"
        for bad, seen in ((positions - 20, r"-\d+\.\.-\d+"), (positions + 20, r"\d+\.\.\d+")):
            for backend in ("triton", "reference"):
                with pytest.raises(ValueError, match=rf"{rows} {seen}"):
                    ak.apply_rotary(q, k, cos, sin, positions=bad, backend=backend)
    # unchecked, a position outside the tables reads their nearest row, nothing outside them
    wild = torch.tensor([-(2**40), -1, 0, 19, 2**40], device=device)
    with ak.value_checks("never"):
        got = ak.apply_rotary(q, k, cos, sin, positions=wild)
    want = reference.apply_rotary(q.double(), k.double(), cos.double(), sin.double(), positions=wild.clamp(0, 19))
    assert_parity(got[0], want[0], torch.float32, "q_rot at clamped positions")


def _cache_write_case(token_shape, heads_q, heads_kv, head_dim, dtype, device, gen, rows=64):
    """q, k, v as slices of one fused projection, a cache of `rows` rows viewed from a paged pool,
    poisoned with a sentinel, and each token's slot: distinct rows in a scrambled order."""
    q, k, v = fused_qkv(token_shape, heads_q, heads_kv, head_dim, dtype, device, gen)
    cos, sin = _tables(token_shape, head_dim, torch.float32, device, gen)
    tokens = q.numel() // (heads_q * head_dim)
    caches = [torch.full((rows // 16, 16, heads_kv, head_dim), 7.0, dtype=dtype, device=device).view(-1, heads_kv, head_dim)
              for _ in range(2)]  # fmt: skip
    slots = torch.randperm(rows, generator=torch.Generator().manual_seed(tokens))[:tokens].to(device)
    return q, k, v, cos, sin, caches, slots


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("token_shape, head_dim", [((37,), 128), ((2, 9), 72)], ids=["packed-D128", "dense-D72"])
def test_the_cache_write_is_the_rotated_k_and_v_at_their_slots(dtype, token_shape, head_dim, device, gen):
    """The rotated k and v land in the cache at each token's slot, every other row untouched; q_rot
    and k_rot as without the write."""
    q, k, v, cos, sin, (k_cache, v_cache), slots = _cache_write_case(token_shape, 12, 2, head_dim, dtype, device, gen)
    want_k_cache, want_v_cache = k_cache.double(), v_cache.double()
    want_q, want_k = reference.apply_rotary(q.double(), k.double(), cos.double(), sin.double(), v=v.double(),
                                            k_cache=want_k_cache, v_cache=want_v_cache, cache_slots=slots)  # fmt: skip
    with ak.count_calls() as calls:
        q_rot, k_rot = ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=slots)
    assert calls == {("apply_rotary", "triton"): 1}
    assert_parity(q_rot, want_q, dtype, "q_rot")
    assert_parity(k_rot, want_k, dtype, "k_rot")
    assert_parity(k_cache, want_k_cache, dtype, "k_cache after the write")
    assert torch.equal(v_cache[slots], v.reshape(-1, 2, head_dim))  # v is copied, not rounded
    untouched = torch.ones(k_cache.shape[0], dtype=torch.bool, device=device)
    untouched[slots] = False
    assert (k_cache[untouched] == 7).all() and (v_cache[untouched] == 7).all()


def test_the_cache_write_under_torch_compile(device, gen):
    q, k, v, cos, sin, (k_cache, v_cache), slots = _cache_write_case((11,), 4, 2, 64, torch.float32, device, gen)
    want_k_cache, want_v_cache = k_cache.clone(), v_cache.clone()
    want = reference.apply_rotary(q, k, cos, sin, v=v, k_cache=want_k_cache, v_cache=want_v_cache, cache_slots=slots)

    def step(q, k, v, k_cache, v_cache):
        return ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=slots)

    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True)(q, k, v, k_cache, v_cache)
    assert_parity(got[0], want[0].double(), torch.float32, "compiled q_rot")
    assert_parity(k_cache, want_k_cache.double(), torch.float32, "compiled k_cache write")
    assert torch.equal(v_cache, want_v_cache)


def test_cache_write_arguments_are_checked_by_name(device, gen):
    q, k, v, cos, sin, (k_cache, v_cache), slots = _cache_write_case((5,), 4, 2, 64, torch.float32, device, gen)
    with pytest.raises(ValueError, match="v_cache, cache_slots: expected v, k_cache, v_cache and cache_slots together"):
        ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache)
    with pytest.raises(TypeError, match="cache_slots: expected dtype int64, got torch.int32"):
        ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=slots.int())
    with pytest.raises(ValueError, match=r"cache_slots: expected shape \[5\]"):
        ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=slots[:4])
    with pytest.raises(ValueError, match=r"k_cache: expected shape \[\*, 2, 64\]"):
        ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache.view(-1, 64), v_cache=v_cache, cache_slots=slots)
    with pytest.raises(TypeError, match="v_cache: expected dtype torch.float32"):
        ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache.half(), cache_slots=slots)
    with pytest.raises(ValueError, match="k_cache, v_cache: expected tensors in separate memory"):
        ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=k_cache, cache_slots=slots)
    with pytest.raises(ValueError, match="k_cache: expected a tensor whose elements do not overlap"):
        ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache[:1].expand(64, -1, -1), v_cache=v_cache, cache_slots=slots)
    if device.type == "cpu":  # the value check reads the slots: on CUDA only under value_checks("always")
        rows = r"cache_slots: expected rows in \[0, 64\) of k_cache, or -1 \(a padding token: no write\), got"
        for bad, seen in ((slots - slots.max() - 2, r"-\d+\.\.-2"), (slots + 64, r"\d+\.\.\d+")):
            for backend in ("triton", "reference"):
                with pytest.raises(ValueError, match=rf"{rows} {seen}"):
                    ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=bad, backend=backend)
    # unchecked, a slot outside the cache writes nothing: not the nearest row, which is another token's
    wild = torch.tensor([-(2**40), -2, 64, 1000, 2**40], device=device)
    with ak.value_checks("never"):
        q_rot, k_rot = ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=wild)
    assert (k_cache == 7).all() and (v_cache == 7).all()
    want_q, want_k = reference.apply_rotary(q.double(), k.double(), cos.double(), sin.double())
    assert_parity(q_rot, want_q, torch.float32, "q_rot with no row written")
    assert_parity(k_rot, want_k, torch.float32, "k_rot with no row written")


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_padding_tokens_with_slot_minus_one_write_no_row(backend, device, gen):
    """vLLM's slot_mapping marks padding tokens (a captured batch's spare rows) with -1: their k and v
    go nowhere, the other tokens' to their rows, and q_rot, k_rot are every token's."""
    q, k, v, cos, sin, (k_cache, v_cache), slots = _cache_write_case((9,), 4, 2, 64, torch.bfloat16, device, gen)
    padded = slots.clone()
    padded[[0, 4, 8]] = -1
    want_k_cache, want_v_cache = k_cache.double(), v_cache.double()
    want_q, want_k = reference.apply_rotary(q.double(), k.double(), cos.double(), sin.double(), v=v.double(),
                                            k_cache=want_k_cache, v_cache=want_v_cache, cache_slots=padded)  # fmt: skip
    q_rot, k_rot = ak.apply_rotary(q, k, cos, sin, v=v, k_cache=k_cache, v_cache=v_cache, cache_slots=padded,
                                   backend=backend)  # fmt: skip
    assert_parity(q_rot, want_q, torch.bfloat16, "q_rot")
    assert_parity(k_rot, want_k, torch.bfloat16, "k_rot")
    assert_parity(k_cache, want_k_cache, torch.bfloat16, "k_cache after the write")
    written = padded[padded >= 0]
    assert torch.equal(v_cache[written], v.reshape(-1, 2, 64)[padded >= 0])
    untouched = torch.ones(k_cache.shape[0], dtype=torch.bool, device=device)
    untouched[written] = False
    assert (k_cache[untouched] == 7).all() and (v_cache[untouched] == 7).all()
    assert untouched.sum() == k_cache.shape[0] - 6
