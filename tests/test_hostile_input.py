"""Inputs users really pass, through the public ops: views of index tensors, compiled graphs, caches
that overlap themselves, NaN and inf, calls from several threads. Each is refused with an error that
names the argument, or computed right; none crashes the process or writes outside the op's outputs
and caches. (The model, the loaders and the CLI have theirs in tests/model/.)"""

import threading

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import check_op, randn
from tests.catalogue import cu_seqlens

BACKENDS = ["triton", "reference"]


@pytest.fixture
def f32(device, gen):
    return lambda *shape: randn(shape, torch.float32, device, gen)


def _varlen(f32, device, lengths=(3, 0, 5)):
    total = sum(lengths)
    return f32(total, 4, 16), f32(total, 2, 16), cu_seqlens(lengths, device), max(lengths)


def _decode(f32, device, lengths=(3, 20), capacity=40):
    q, new = f32(len(lengths), 1, 4, 16), f32(len(lengths), 1, 2, 16)
    k_cache, v_cache = f32(len(lengths), capacity, 2, 16), f32(len(lengths), capacity, 2, 16)
    return q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32, device=device), new


def _paged(f32, device, lengths=(3, 20)):
    """Pages of 16 in a pool of 6, two sequences of 3 pages each."""
    q, new = f32(len(lengths), 1, 4, 16), f32(len(lengths), 1, 2, 16)
    block_table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=device)
    return q, f32(6, 16, 2, 16), f32(6, 16, 2, 16), torch.tensor(lengths, dtype=torch.int32, device=device), block_table, new


# ----------------------------------------------------------------------------- 1. index tensors are views


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_cu_seqlens_are_refused_by_name(backend, f32, device):
    q, k, cu, longest = _varlen(f32, device)
    column = torch.stack([cu, cu + 100], 1)[:, 0]  # a column of a 2-D tensor: stride 2
    every_other = torch.stack([cu, cu], 1).flatten()[::2]
    for bad in (column, every_other):
        assert torch.equal(bad, cu) and bad.stride() == (2,)
        with pytest.raises(
            ValueError, match=r"cu_seqlens_q: expected the last dim to be contiguous .*cu_seqlens_q.contiguous\(\)"
        ):
            ak.attention_varlen(q, k, k, bad, cu, longest, longest, backend=backend)
        with pytest.raises(ValueError, match="cu_seqlens_k: expected the last dim to be contiguous"):
            ak.attention_varlen(q, k, k, cu, bad, longest, longest, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_cache_seqlens_are_refused_by_name(backend, f32, device):
    q, k_cache, v_cache, seqlens, new = _decode(f32, device)
    column = torch.stack([seqlens, seqlens + 7], 1)[:, 0]
    with pytest.raises(ValueError, match="cache_seqlens: expected the last dim to be contiguous"):
        ak.decode_attention(q, k_cache, v_cache, column, new, new.clone(), backend=backend)
    assert not k_cache.isnan().any()  # nothing appended before the error


@pytest.mark.parametrize("backend", BACKENDS)
def test_column_strided_block_table_is_refused_and_a_row_slice_is_read_through_its_stride(backend, f32, device):
    q, k_pool, v_pool, seqlens, block_table, new = _paged(f32, device)
    transposed = block_table.t().contiguous().t()  # the same values, column-major
    with pytest.raises(ValueError, match="block_table: expected the last dim to be contiguous"):
        ak.decode_attention(q, k_pool, v_pool, seqlens, block_table=transposed, backend=backend)
    # a slice of a wider table (row stride 5, as a serving engine's preallocated table) is fine
    wide = torch.full((2, 5), -1, dtype=torch.int32, device=device)
    wide[:, :3] = block_table
    if backend == "triton":
        check_op(ak.decode_attention, reference.decode_attention, q, k_pool, v_pool, seqlens, new, new.clone(), wide[:, :3])


# ----------------------------------------------------------------------------- 2. compiled equals eager

_BAD_VARLEN = {
    "decreasing cu_seqlens": ([0, 5, 3, 8], 5, "cu_seqlens_q: expected non-decreasing offsets"),
    "cu_seqlens past the packed rows": ([0, 3, 3, 40], 40, "cu_seqlens_q: expected the last offset to equal the number of packed rows"),
    "max_seqlen_q below the longest": ([0, 3, 3, 8], 4, "max_seqlen_q: expected >= the longest sequence in cu_seqlens_q"),
}  # fmt: skip


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_value_checks_run_inside_compiled_graphs(compiler, f32, device):
    """The eager path's value checks run in the compiled graph too, at run time (fullgraph, dynamic
    shapes): a graph traced with good offsets raises on bad ones, as eager does."""
    if device.type != "cpu":
        pytest.skip("value checks run on CPU tensors by default (a host sync on CUDA)")
    q, k, good, _ = _varlen(f32, device)

    def varlen(q, k, cu, max_seqlen_q):
        return ak.attention_varlen(q, k, k, cu, good, max_seqlen_q, 5)

    torch._dynamo.reset()
    compiled = torch.compile(varlen, backend=compiler, fullgraph=True, dynamic=True)
    compiled(q, k, good, 5)
    for offsets, max_seqlen_q, message in _BAD_VARLEN.values():
        bad = torch.tensor(offsets, dtype=torch.int32, device=device)
        for fn in (varlen, compiled):
            with pytest.raises(ValueError, match=message):
                fn(q, k, bad, max_seqlen_q)
    q, k_cache, v_cache, seqlens, new = _decode(f32, device)
    decode = torch.compile(lambda s: ak.decode_attention(q, k_cache, v_cache, s, new, new), backend=compiler, fullgraph=True)
    with pytest.raises(ValueError, match="cache_seqlens: sequence 1 needs 40 \\+ 1 appended token positions"):
        decode(torch.tensor([3, 40], dtype=torch.int32, device=device))


def test_unchecked_index_values_stay_inside_the_tensors(f32, device):
    """With value checks off (as on CUDA by default), bad offsets, lengths and pages give a wrong
    output at most: the kernels clamp what they read into the real bounds. Each input lies inside a
    buffer whose other rows are NaN, so a read outside it would put NaN into the output, and a write
    outside it would replace a NaN."""
    with ak.value_checks("never"):
        buffer = torch.full((3, 8, 4, 16), float("nan"), device=device)
        buffer[1] = f32(8, 4, 16)
        q, k = buffer[1], buffer[1, :, :2]
        for offsets in ([0, 5, 3, 8], [0, 3, 3, 40], [-5, 3, 3, 8], [0, 3, 3, 2**30]):
            bad = torch.tensor(offsets, dtype=torch.int32, device=device)
            out = ak.attention_varlen(q, k, k, bad, bad, 8, 8)  # max_seqlen 8: every clamped row is written
            assert not out.isnan().any(), offsets
        # contiguous: lengths past the capacity (or negative) are clamped into it; a full cache takes no append
        q, _, v_cache, _, new = _decode(f32, device)
        guarded = torch.full((4, 40, 2, 16), float("nan"), device=device)
        guarded[1:3] = f32(2, 40, 2, 16)
        for lengths in ([3, 40], [3, 2**30], [-7, 5]):
            seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
            out = ak.decode_attention(q, guarded[1:3], v_cache, seqlens, new, new.clone())
            assert not out.isnan().any() and guarded[0].isnan().all() and guarded[3].isnan().all(), lengths
        # paged: entries outside the pool's 6 pages (7, -1, 6) are neither read nor written
        q, k_pool, v_pool, _, _, new = _paged(f32, device)
        guarded = torch.full((10, 16, 2, 16), float("nan"), device=device)
        guarded[2:8] = k_pool
        bad_pages = torch.tensor([[0, 7, 2], [-1, 4, 6]], dtype=torch.int32, device=device)
        seqlens = torch.tensor([40, 47], dtype=torch.int32, device=device)
        out = ak.decode_attention(q, guarded[2:8], v_pool, seqlens, new, new.clone(), block_table=bad_pages)
        assert not out.isnan().any() and guarded[:2].isnan().all() and guarded[8:].isnan().all()


def test_degenerate_sizes_are_computed_or_refused(f32, device):
    """Sizes at their edges: a max_seqlen far past the packed rows launches no more programs than
    the rows need (it used to launch 2**33 and hang); an empty page pool or cache holds nothing;
    rotary tables of no row, or a causal flag that is not a bool, are refused by name."""
    packed_q, packed_k, cu, longest = _varlen(f32, device)
    check_op(ak.attention_varlen, reference.attention_varlen, packed_q, packed_k, packed_k, cu, cu, 2**40, 2**40)
    q, k_cache, v_cache, seqlens, new = _decode(f32, device)
    with ak.value_checks("never"):
        empty_pool = f32(0, 16, 2, 16)
        out = ak.decode_attention(q, empty_pool, empty_pool.clone(), seqlens, new, new.clone(),
                                  block_table=torch.zeros(2, 3, dtype=torch.int32, device=device))  # fmt: skip
        assert out.eq(0).all()  # no key anywhere, the new one included: no page to hold it
    if device.type == "cpu":
        with pytest.raises(
            ValueError, match="cache_seqlens: sequence 0 needs 3 \\+ 1 appended token positions but its cache holds 0"
        ):
            ak.decode_attention(q, f32(2, 0, 2, 16), f32(2, 0, 2, 16), seqlens, new, new.clone())
    with pytest.raises(ValueError, match="rotary_cos: expected at least one row"):
        ak.decode_attention(q, k_cache, v_cache, seqlens, new, new.clone(), rotary_cos=f32(0, 16), rotary_sin=f32(0, 16))
    with pytest.raises(TypeError, match="causal: expected a bool, got str"):
        ak.attention(q, q, q, causal="no")
    with pytest.raises(TypeError, match="causal: expected a bool, got int"):
        ak.attention_varlen(packed_q, packed_k, packed_k, cu, cu, longest, longest, causal=1)


def test_any_strides_of_a_row_input_compute_right(device, gen):
    """The row-wise ops take any strides with a contiguous last dim, as their docstrings say and
    the references do: views whose rows need three strided groups (two leading dims transposed over
    a third), which the kernels refused, are copied once and computed (every op and input that
    walks rows, apply_rotary's aside: its token dims are at most two; the inputs left as they
    were)."""

    def transposed(*shape, dtype=torch.float32):  # [a, b, c, ..., N] with strides that chain in no pair
        return randn((shape[1], shape[0], *shape[2:]), dtype, device, gen).transpose(0, 1)

    x, residual = transposed(2, 3, 5, 64), transposed(2, 3, 5, 64)
    before = x.clone()
    weight, bias = randn((64,), torch.float32, device, gen), randn((64,), torch.float32, device, gen)
    check_op(ak.rms_norm, reference.rms_norm, x, weight, 1e-6, residual=residual)
    check_op(ak.layer_norm, reference.layer_norm, x, weight, bias, 1e-6, residual=residual)
    check_op(ak.silu_and_mul, reference.silu_and_mul, x)
    check_op(ak.gelu_tanh, reference.gelu_tanh, x)
    projection = randn((48, 64), torch.float32, device, gen)
    check_op(ak.linear, reference.linear, transposed(2, 2, 2, 64), projection)
    check_op(ak.rms_norm_linear, reference.rms_norm_linear, x, weight, projection, residual=residual)
    assert torch.equal(x, before)


# ----------------------------------------------------------------------------- 3. in-place safety


@pytest.mark.parametrize("backend", BACKENDS)
def test_caches_that_overlap_themselves_are_refused_when_written(backend, f32, device):
    q, k_cache, v_cache, seqlens, new = _decode(f32, device)
    shared = k_cache[:1].expand(2, -1, -1, -1)  # one sequence's rows for both: stride 0 over the batch
    with pytest.raises(ValueError, match=r"k_cache: expected a tensor whose elements do not overlap \(it is written in place\)"):
        ak.decode_attention(q, shared, v_cache, seqlens, new, new.clone(), backend=backend)
    overlapping = torch.as_strided(v_cache, v_cache.shape, (40 * 32, 16, 16, 1))  # heads on top of each other
    with pytest.raises(ValueError, match="v_cache: expected a tensor whose elements do not overlap"):
        ak.decode_attention(q, k_cache, overlapping, seqlens, new, new.clone(), backend=backend)
    with pytest.raises(ValueError, match="k_cache, v_cache: expected tensors in separate memory .*give each its own memory"):
        ak.decode_attention(q, k_cache, k_cache, seqlens, new, new.clone(), backend=backend)
    # read-only (no append): a shared, expanded cache is fine
    assert ak.decode_attention(q, shared, shared, seqlens, backend=backend).shape == q.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_written_caches_that_share_memory_with_another_argument_are_refused(backend, f32, device):
    """Two caches laid over each other in part (V's heads 0..1 on K's heads 1..2 of one buffer), or a
    new token that is a view of the cache it is written into: the launch would race with itself
    (the new v over the new k), so both ops refuse, naming both, before writing anything."""
    q, _, _, seqlens, new = _decode(f32, device)
    buffer = f32(2, 40, 3, 16)
    before = buffer.clone()
    with pytest.raises(ValueError, match="k_cache, v_cache: expected tensors in separate memory"):
        ak.decode_attention(q, buffer[:, :, 0:2], buffer[:, :, 1:3], seqlens, new, new.clone(), backend=backend)
    k_cache, v_cache = buffer[:, :, 0:2].clone(), buffer[:, :, 1:3].clone()
    with pytest.raises(ValueError, match=r"k_cache, k: expected tensors in separate memory \(k_cache is written in place "
                                         r"while k is read\).*pass k.clone\(\)"):  # fmt: skip
        ak.decode_attention(q, k_cache, v_cache, seqlens, k_cache[:, 30:31], new, backend=backend)
    rows = 2 * 40
    tokens_q, tokens_k = f32(rows, 4, 16), f32(rows, 2, 16)
    cos, sin, slots = f32(rows, 16), f32(rows, 16), torch.arange(rows, device=device)
    with pytest.raises(ValueError, match="k_cache, v_cache: expected tensors in separate memory"):
        ak.apply_rotary(tokens_q, tokens_k, cos, sin, v=tokens_k.clone(), k_cache=buffer.view(rows, 3, 16)[:, 0:2],
                        v_cache=buffer.view(rows, 3, 16)[:, 1:3], cache_slots=slots, backend=backend)  # fmt: skip
    with pytest.raises(ValueError, match="v_cache, cos: expected tensors in separate memory"):
        ak.apply_rotary(tokens_q, tokens_k, buffer.view(rows, 48)[:, :16], sin, v=tokens_k.clone(),
                        k_cache=f32(rows, 2, 16), v_cache=buffer.view(rows, 48)[:, 16:].unflatten(-1, (2, 16)),
                        cache_slots=slots, backend=backend)  # fmt: skip
    assert torch.equal(buffer, before)  # nothing written before the errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_caches_side_by_side_in_one_allocation_are_written_like_separate_ones(backend, f32, device):
    """The serving engines' layouts put K and V in one allocation: vLLM's [2, pages, ...], FlashInfer's
    [pages, 2, ...] (the two caches interleave page by page), and [pages, page, 2 x Hkv, D]. Their
    elements never coincide, so the ops take them, and write what separate caches would hold."""
    q, _, _, seqlens, new = _decode(f32, device)
    new_v = f32(*new.shape)
    block_table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=device)
    k_pool, v_pool = f32(6, 16, 2, 16), f32(6, 16, 2, 16)
    want_k, want_v = k_pool.clone(), v_pool.clone()
    want = ak.decode_attention(q, want_k, want_v, seqlens, new, new_v, block_table=block_table, backend=backend)
    for layout in ("vllm", "flashinfer", "heads"):
        if layout == "vllm":
            pools = torch.stack([k_pool, v_pool])
            k_view, v_view = pools[0], pools[1]
        elif layout == "flashinfer":
            pools = torch.stack([k_pool, v_pool], 1)
            k_view, v_view = pools[:, 0], pools[:, 1]
        else:
            pools = torch.cat([k_pool, v_pool], 2)
            k_view, v_view = pools[:, :, :2], pools[:, :, 2:]
        out = ak.decode_attention(q, k_view, v_view, seqlens, new, new_v, block_table=block_table, backend=backend)
        assert torch.equal(out, want), layout
        assert torch.equal(k_view, want_k) and torch.equal(v_view, want_v), layout


def test_the_memory_sharing_test_agrees_with_counting_shared_elements(gen):
    """`_may_share_elements` against the ground truth: the elements two views of one buffer both
    address, enumerated. Views of one layout are resolved exactly both ways; views of two layouts
    whose spans meet may be refused where they share nothing, never taken where they share one."""
    from aurora_kernels._validation import _may_share_elements

    buffer = torch.arange(4 * 6 * 3 * 8, dtype=torch.float32)

    def addresses(view):  # the buffer elements a view addresses: first + sum(index * stride) over its indices
        offsets = torch.zeros((), dtype=torch.int64)
        for size, stride in zip(view.shape, view.stride()):
            offsets = offsets[..., None] + torch.arange(size) * stride
        return set(((view.data_ptr() - buffer.data_ptr()) // 4 + offsets).flatten().tolist())

    def views():
        shaped = buffer.view(4, 6, 3, 8)
        yield shaped[:, :, 0:2], shaped[:, :, 1:3]
        yield shaped[:, :, 0:1], shaped[:, :, 2:3]
        yield shaped[:2], shaped[2:]
        yield shaped[:, 0::2], shaped[:, 1::2]
        yield shaped[:, :3], shaped[:, 2:5]
        yield shaped[..., :4], shaped[..., 4:]
        yield shaped[..., :5], shaped[..., 3:]
        yield shaped[1:3, 1:4], shaped[2:4, 2:5]
        yield shaped[:, :, 0], shaped[:, :, 1]
        yield shaped[0], shaped[0].transpose(0, 1).contiguous().transpose(0, 1)  # another allocation
        yield shaped[0, :, :, :4], shaped[0].transpose(0, 1)[:, :, 4:]  # two layouts, no element shared
        yield shaped[0, :, :, :4], shaped[0].transpose(0, 1)[:, :, 3:]  # two layouts, sharing
        yield buffer[:0], buffer
        for _ in range(40):  # random slices of one layout
            starts = [int(torch.randint(0, n, (), generator=gen)) for n in shaped.shape]
            lengths = [int(torch.randint(1, n - s + 1, (), generator=gen)) for n, s in zip(shaped.shape, starts)]
            shift = [int(torch.randint(0, n - ln + 1, (), generator=gen)) for n, ln in zip(shaped.shape, lengths)]
            a = shaped[tuple(slice(s, s + ln) for s, ln in zip(starts, lengths))]
            b = shaped[tuple(slice(s, s + ln) for s, ln in zip(shift, lengths))]
            yield a, b

    for a, b in views():
        shared = bool(addresses(a) & addresses(b))
        one_layout = a.shape == b.shape and a.stride() == b.stride()
        for x, y in ((a, b), (b, a)):
            found = _may_share_elements(x, y)
            assert found == shared if one_layout else (found or not shared), (x.shape, x.stride(), y.shape, y.stride())


# ----------------------------------------------------------------------------- 4. NaN and inf as torch


def _sdpa(q, k, v, causal=False, scale=None):
    """torch's SDPA in [B, L, H, D], the independent judge of the NaN pattern: its math backend (the
    CPU flash backend drops a NaN in q, and turns a NaN scale into 0s). Causal (Lq == Lk): query i
    over keys 0..i, one SDPA call a row, since the math backend adds its mask to the scores and so
    lets a NaN in a key leak into the rows that cannot see it."""
    if causal:
        return torch.cat([_sdpa(q[:, i : i + 1], k[:, : i + 1], v[:, : i + 1], False, scale) for i in range(q.shape[1])], 1)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2)


def _nan_pattern(out):
    return out.isnan().flatten(-2).any(-1)  # per (…, query row): NaN anywhere in its heads' outputs


@pytest.mark.parametrize("causal", [False, True])
def test_attention_propagates_nan_and_inf_as_torch(causal, f32, device):
    q, k, v = f32(1, 6, 2, 16), f32(1, 6, 2, 16), f32(1, 6, 2, 16)
    q_nan, k_nan = q.clone(), k.clone()
    q_nan[0, 4, 1, 3] = float("nan")  # row 4 of head 1
    k_nan[0, 2, 0, 5] = float("nan")  # key 2: every row that sees it (causal: rows 2..5)
    cases = [(q_nan, k, None), (q, k_nan, None), (q, k, float("inf")), (q, k, float("nan"))]
    for qq, kk, scale in cases:
        expected = _sdpa(qq, kk, v, causal, scale)
        assert expected.isnan().any()
        for backend in BACKENDS:
            out = ak.attention(qq, kk, v, causal=causal, softmax_scale=scale, backend=backend)
            assert torch.equal(out.isnan(), expected.isnan()), (backend, scale, _nan_pattern(out), _nan_pattern(expected))
    # A finite scale whose products overflow: which scores reach +-inf depends on how the scale is
    # applied (the kernel folds log2(e) into it; SDPA's math path scales q and k by its square root),
    # so scores are made 0 or at least 32 in magnitude, past every such threshold; the judge is
    # softmax(q k^T scale) v written out.
    signs = [torch.where(f32(1, 6, 2, 16) > 0, 4.0, -4.0) for _ in range(2)]
    group = signs[0].transpose(1, 2), signs[1].transpose(1, 2)
    scores = (group[0] @ group[1].transpose(-1, -2)) * 1e38
    if causal:
        scores = scores.masked_fill(~torch.ones(6, 6, dtype=torch.bool, device=device).tril(), float("-inf"))
    expected = (torch.softmax(scores, -1) @ v.transpose(1, 2)).transpose(1, 2)
    assert expected.isnan().any() and not expected.isnan().all()
    for backend in BACKENDS:
        out = ak.attention(*signs, v, causal=causal, softmax_scale=1e38, backend=backend)
        assert torch.equal(out.isnan(), expected.isnan()), (backend, _nan_pattern(out), _nan_pattern(expected))


def test_varlen_and_decode_propagate_nan_and_keep_empty_rows_zero(f32, device):
    """The same NaN pattern on both backends; a query that sees no key is 0 all the same."""
    q, k, cu, longest = _varlen(f32, device, lengths=(3, 0, 5, 2))
    k = k.clone()
    k[4, 1, 7] = float("nan")  # key 1 of sequence 2 (rows 3..7): its rows NaN, the others not
    kv = f32(*k.shape[:2], 16)
    empty_k = cu_seqlens((3, 0, 5, 0), device)  # sequence 3 has queries but no keys: 0
    k_rows = k[: int(empty_k[-1])]
    for backend in BACKENDS:
        out = ak.attention_varlen(q, k_rows, kv[: k_rows.shape[0]], cu, empty_k, longest, longest, backend=backend)
        assert out[3:8].isnan().any(-1).any(-1).all() and not out[:3].isnan().any() and out[8:].eq(0).all(), backend
    q, k_cache, v_cache, seqlens, new = _decode(f32, device, lengths=(3, 20, 0))
    k_cache[1, 11, 0, 2] = float("nan")  # a cached key of sequence 1; sequence 0's row 30 is past its length
    k_cache[0, 30, 1, 2] = float("nan")
    patterns = []
    for backend in BACKENDS:
        out = ak.decode_attention(q, k_cache.clone(), v_cache.clone(), seqlens, backend=backend)
        patterns.append(out.isnan())
        assert out[2].eq(0).all(), backend  # nothing cached, nothing appended: 0
    assert torch.equal(patterns[0], patterns[1]) and patterns[0][1].any() and not patterns[0][0].any()
    # an infinite scale: every sequence with a key is NaN (all its scores +-inf, or 0 x inf), whether
    # its splits are merged or not; the empty one is 0
    for num_kv_splits in (1, 3):
        out = ak.decode_attention(
            q, k_cache.nan_to_num(0.0), v_cache, seqlens, softmax_scale=float("inf"), num_kv_splits=num_kv_splits
        )
        assert out[:2].isnan().all() and out[2].eq(0).all(), num_kv_splits


def test_decode_keys_that_all_overflow_to_minus_inf_give_nan_and_a_split_of_them_weighs_nothing(device, gen):
    """Scores of -32 x 1e38 overflow to -inf. A sequence whose every key does so is NaN (torch's
    softmax of all -inf); one with a key of score 0 besides puts all its weight there, whichever
    split holds which key (fp32: splits of 16 keys)."""
    q = torch.zeros(2, 1, 1, 16, device=device)
    q[..., 0] = 4.0
    k_cache = torch.zeros(2, 32, 1, 16, device=device)
    k_cache[:, :, :, 0] = -8.0  # q.k = -32
    k_cache[1, 16:, :, 0] = 0.0  # sequence 1: its second split scores 0
    v_cache = randn((2, 32, 1, 16), torch.float32, device, gen)
    seqlens = torch.tensor([32, 32], dtype=torch.int32, device=device)
    for backend, splits in (("reference", None), ("triton", 1), ("triton", 2), ("triton", 3)):
        out = ak.decode_attention(q, k_cache, v_cache, seqlens, softmax_scale=1e38, num_kv_splits=splits, backend=backend)
        assert out[0].isnan().all(), (backend, splits)
        torch.testing.assert_close(out[1, 0, 0], v_cache[1, 16:, 0].mean(0), msg=f"{backend} {splits}")


# ----------------------------------------------------------------------------- 6. any argument, replaced


def _replacements(value):
    """What a user passes by mistake in an argument's place (the op's own inputs otherwise)."""
    if not isinstance(value, torch.Tensor):
        return [("a string", "x"), ("None", None), ("a list", [value])]
    found = [("a list", value.tolist()), ("None", None), ("a meta tensor", value.to("meta")),
             ("a 0-dim tensor", value.flatten()[:1].reshape(())), ("one more dim", value.unsqueeze(0))]  # fmt: skip
    return found + [(str(dtype), value.to(dtype)) for dtype in (torch.float64, torch.int32, torch.bool, torch.float16)
                    if dtype != value.dtype]  # fmt: skip


def _rotary_by_position(dtype, device, gen):
    """apply_rotary's inputs with positions: half-width tables [5, 16] (as many rows as tokens, so
    that without the positions they are a token's rows, computed right)."""
    q, k = randn((2, 5, 4, 32), dtype, device, gen), randn((2, 5, 2, 32), dtype, device, gen)
    positions = torch.randint(0, 5, (2, 5), generator=gen).to(device)
    return (q, k, randn((5, 16), dtype, device, gen), randn((5, 16), dtype, device, gen)), {"positions": positions}


def _decode_attention_into_out(dtype, device, gen):
    """decode_attention's benchmark inputs with an out to write into."""
    from bench import harness

    args, kwargs = harness.OPS["decode_attention"].small_inputs(dtype, device, gen)
    return args, {**kwargs, "out": torch.empty_like(args[0])}


def test_any_argument_replaced_is_refused_by_name_or_computed_right(device, gen):
    """Every argument of every op (and of apply_rotary by position, decode_attention into out), in
    turn, replaced by a list, None, a meta tensor, a 0-dim tensor, one more dim or another dtype: a
    TypeError or ValueError that names the argument, or the reference's result (found by a fuzz of
    this kind: a list of lengths met an AttributeError)."""
    import inspect

    from bench import harness

    harness.load_cases()
    entries = [
        *harness.OPS.values(),
        harness.OpEntry("apply_rotary", ak.apply_rotary, reference.apply_rotary, _rotary_by_position),
        harness.OpEntry("decode_attention", ak.decode_attention, reference.decode_attention, _decode_attention_into_out),
    ]
    for entry in entries:
        op = entry.op
        names = list(inspect.signature(entry.public).parameters)
        args, kwargs = entry.small_inputs(torch.float32, device, gen)
        places = [(names[i], i) for i in range(len(args))] + [(name, name) for name in kwargs]
        for name, place in places:
            for what, replacement in _replacements(args[place] if isinstance(place, int) else kwargs[place]):
                new_args, new_kwargs = list(args), dict(kwargs)
                if isinstance(place, int):
                    new_args[place] = replacement
                else:
                    new_kwargs[place] = replacement
                try:
                    entry.public(*new_args, **new_kwargs)
                except (TypeError, ValueError) as e:
                    assert name in str(e), (op, name, what, str(e))
                    continue
                check_op(entry.public, entry.reference, *new_args, **new_kwargs)


# ----------------------------------------------------------------------------- 7. threads


def test_count_calls_value_checks_and_pdl_belong_to_their_thread(f32, device):
    x, w = f32(4, 32), f32(32)
    q, k, cu, longest = _varlen(f32, device)
    started, done = threading.Event(), threading.Event()
    errors = []

    def other_thread():
        try:
            with ak.value_checks("never"), ak.using_programmatic_dependent_launch(True):
                started.set()
                for _ in range(5):
                    ak.rms_norm(x, w, backend="reference")
                done.wait(30)
        except Exception as e:  # noqa: BLE001 - surfaced below
            errors.append(e)
            started.set()

    worker = threading.Thread(target=other_thread)
    with ak.count_calls() as counts:
        worker.start()
        started.wait(30)
        ak.rms_norm(x, w, backend="reference")
        assert not ak.programmatic_dependent_launch()  # the other thread's generate-style switch stays there
        with ak.value_checks("always"), pytest.raises(ValueError, match="max_seqlen_k"):
            ak.attention_varlen(q, k, k, cu, cu, longest, longest - 1, backend="reference")  # not disabled by the other thread
        done.set()
        worker.join(30)
    assert not errors
    assert counts[("rms_norm", "reference")] == 1  # the other thread's five calls are not counted here
