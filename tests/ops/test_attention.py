import re

import pytest
import torch
import triton
import triton.language as tl

import aurora_kernels as ak
from aurora_kernels._dispatch import new_output, poisoned_outputs
from aurora_kernels.ops import attention as attention_module
from aurora_kernels.ops import reference
from aurora_kernels.testing import assert_parity, check_compile, check_cuda_graph, check_op, randn, reference_in_float64
from tests.catalogue import DTYPE_IDS, DTYPES, GQA_HEADS, HEAD_DIMS, RAGGED_LENGTHS, cu_seqlens, cuda_only, fused_qkv


def _qkv(batch, len_q, len_k, heads_q, heads_kv, head_dim, dtype, device, gen):
    return (randn((batch, len_q, heads_q, head_dim), dtype, device, gen),
            randn((batch, len_k, heads_kv, head_dim), dtype, device, gen),
            randn((batch, len_k, heads_kv, head_dim), dtype, device, gen))  # fmt: skip


def _packed(lengths_q, lengths_k, heads_q, heads_kv, head_dim, dtype, device, gen):
    q = randn((sum(lengths_q), heads_q, head_dim), dtype, device, gen)
    k, v = (randn((sum(lengths_k), heads_kv, head_dim), dtype, device, gen) for _ in range(2))
    return (q, k, v, cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device),
            max(lengths_q, default=0), max(lengths_k, default=0))  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dense_head_dims(dtype, head_dim, causal, device, gen):
    check_op(ak.attention, reference.attention, *_qkv(2, 37, 50, 4, 2, head_dim, dtype, device, gen), causal=causal)


@pytest.mark.parametrize("heads", GQA_HEADS, ids=lambda h: f"gqa{h[0] // h[1]}")
@pytest.mark.parametrize(
    "lengths", [(1, 1), (17, 17), (129, 129), (1, 100), (100, 17), (129, 17)], ids=lambda n: f"q{n[0]}-k{n[1]}"
)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dense_lengths_and_gqa(heads, lengths, causal, device, gen):
    # Lq > Lk with causal leaves the first Lq - Lk rows seeing no key: they must be 0
    args = _qkv(1, *lengths, *heads, 64, torch.bfloat16, device, gen)
    check_op(ak.attention, reference.attention, *args, causal=causal)


@pytest.mark.parametrize("head_dim", [80, 96])
def test_fused_qkv_views(head_dim, device, gen):
    q, k, v = fused_qkv((2, 33), 12, 2, head_dim, torch.float16, device, gen)
    assert not q.is_contiguous()
    check_op(ak.attention, reference.attention, q, k, v, causal=True)


def test_softmax_scale_and_vit_shape(device, gen):
    # the ViT's use: 256 tokens, D 72, non-causal, as slices of one qkv projection
    q, k, v = fused_qkv((1, 256), 4, 4, 72, torch.bfloat16, device, gen)
    check_op(ak.attention, reference.attention, q, k, v, softmax_scale=0.3)


def test_matches_sdpa(device, gen):
    """An independent check of kernel (and reference) against PyTorch's SDPA with GQA, bottom-right causal."""
    q, k, v = _qkv(2, 40, 40, 12, 2, 64, torch.float32, device, gen)
    out = ak.attention(q, k, v, causal=True)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    assert_parity(out, expected, torch.float32, "attention vs SDPA")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("lengths", RAGGED_LENGTHS, ids=lambda n: "-".join(map(str, n)))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_ragged(dtype, lengths, causal, device, gen):
    check_op(ak.attention_varlen, reference.attention_varlen, *_packed(lengths, lengths, 6, 1, 128, dtype, device, gen),
             causal=causal)  # fmt: skip


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_varlen_cross_attention(causal, device, gen):
    # the fusion's shape: ragged text over each image's own visual tokens; an entry with no keys gives 0
    lengths_q, lengths_k = [3, 0, 40, 7, 1], [64, 64, 64, 0, 64]
    args = _packed(lengths_q, lengths_k, 4, 4, 128, torch.bfloat16, device, gen)
    with poisoned_outputs():
        out = ak.attention_varlen(*args, causal=causal)
    assert torch.equal(out[43:50], torch.zeros_like(out[43:50]))
    check_op(ak.attention_varlen, reference.attention_varlen, *args, causal=causal)


def test_varlen_fused_qkv_views(device, gen):
    lengths = [17, 0, 70]
    q, k, v = fused_qkv((sum(lengths),), 12, 2, 72, torch.bfloat16, device, gen)
    cu = cu_seqlens(lengths, device)
    check_op(ak.attention_varlen, reference.attention_varlen, q, k, v, cu, cu, 70, 70, causal=True)


def test_varlen_max_seqlen_larger_than_needed(device, gen):
    q, k, v, cu_q, cu_k, _, _ = _packed([5, 9], [5, 9], 2, 1, 64, torch.float32, device, gen)
    check_op(ak.attention_varlen, reference.attention_varlen, q, k, v, cu_q, cu_k, 300, 300)


def _forced_blocks(block_m, block_n, persistent=False):
    """attention_varlen through the launcher with forced tile sizes, so a test covers many key blocks,
    the unmasked/masked loop split and the causal block skipping at small shapes."""

    def run(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, softmax_scale=None, *, backend):
        assert backend == "triton"
        out = new_output(q.shape, q.dtype, q.device)
        blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "PERSISTENT": persistent}
        return attention_module._launch_into(q, k, v, out, cu_q, cu_k, max_q, max_k, causal, softmax_scale, blocks)

    run.__name__ = f"attention_varlen[{block_m}x{block_n}{', persistent' if persistent else ''}]"
    return run


def _forced_dense_blocks(block_m, block_n, persistent=False):
    """attention (dense) through the launcher with forced tile sizes."""

    def run(q, k, v, causal=False, softmax_scale=None, *, backend):
        assert backend == "triton"
        out = new_output(q.shape, q.dtype, q.device)
        blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "PERSISTENT": persistent}
        return attention_module._launch_into(q, k, v, out, None, None, q.shape[1], k.shape[1], causal, softmax_scale, blocks)

    run.__name__ = f"attention[{block_m}x{block_n}{', persistent' if persistent else ''}]"
    return run


@pytest.mark.parametrize("blocks", [(16, 16), (16, 32), (32, 16)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_many_key_blocks(blocks, causal, device, gen):
    args = _packed([70, 1, 0, 33, 5], [70, 1, 9, 50, 0], 4, 2, 72, torch.float16, device, gen)
    check_op(_forced_blocks(*blocks), reference.attention_varlen, *args, causal=causal)


@pytest.mark.parametrize("kind", list(attention_module._GPU_CONFIGS))
def test_every_autotune_candidate(kind, device, gen):
    """Each tile the autotuner may pick (a GPU test run keeps only each autotuner's first), at a head
    dim of its kind, on a CPU its block shapes under the interpreter: ragged and causal, or for the
    kind of dense non-causal launches with whole key blocks, 256 keys (GQA, 100 query rows: a partial
    query block), persistent programs too."""
    head_dim = {"half_narrow_head": 72, "half_narrow_head_whole_key_blocks": 72, "half": 128, "fp32": 64}[kind]
    dtype = torch.float32 if kind == "fp32" else torch.bfloat16
    whole_blocks = kind.endswith("whole_key_blocks")
    assert attention_module.launcher_kind(head_dim, dtype, whole_blocks) == kind
    if whole_blocks:
        q, k, v = _qkv(2, 100, 256, 4, 2, head_dim, dtype, device, gen)
        for block_m, block_n, _, _, *persistent in attention_module._GPU_CONFIGS[kind]:
            check_op(_forced_dense_blocks(block_m, block_n, bool(persistent)), reference.attention, q, k, v)
        return
    args = _packed([150, 1, 40], [150, 1, 60], 4, 2, head_dim, dtype, device, gen)
    for block_m, block_n, _, _ in attention_module._GPU_CONFIGS[kind]:
        check_op(_forced_blocks(block_m, block_n), reference.attention_varlen, *args, causal=True)


def test_whole_key_blocks_only_for_dense_non_causal_multiples_of_the_largest_block():
    """The masked key loop is left out only where no program can need it."""
    rule = attention_module.whole_key_blocks
    assert rule(False, False, 256) and rule(False, False, 2 * attention_module.MAX_BLOCK_N)
    assert not rule(False, False, 192)  # 1.5 blocks of 128
    assert not rule(False, False, 0)
    assert not rule(True, False, 256)  # packed: every sequence its own length
    assert not rule(False, True, 256)  # causal: the diagonal is masked


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dense_launches_with_and_without_whole_key_blocks(causal, device, gen):
    """The launcher's own choice (interpreter blocks): 256 keys non-causal take whole key blocks,
    250 keys or causal the masked loop; both give the reference's answer."""
    for len_k in (256, 250):
        check_op(ak.attention, reference.attention, *_qkv(2, 40, len_k, 4, 2, 72, torch.bfloat16, device, gen), causal=causal)


@pytest.mark.parametrize("block_n", [64, 32])
def test_persistent_programs_walk_several_items(block_n, device, gen, monkeypatch):
    """A persistent grid of 2 programs (one SM here) over 2 images x 4 heads x 4 query blocks: each
    program walks 16 items (query block, head, image) in steps of the grid, negative scale too."""
    monkeypatch.setattr(attention_module, "sm_count", lambda device: 1)
    q, k, v = _qkv(2, 256, 256, 4, 4, 72, torch.bfloat16, device, gen)
    for scale in (None, -0.2):
        check_op(_forced_dense_blocks(64, block_n, persistent=True), reference.attention, q, k, v, softmax_scale=scale)


def test_key_offsets_go_64_bit_only_where_32_bits_may_not_hold_them():
    """The K/V tile offsets are 32-bit unless a key's offset from its sequence's first row (key rows
    plus a block, times the token stride, plus D) may pass 2**31 - 1, or the dtype is fp32."""
    head_dim, heads = 128, 2

    def keys(rows, token_stride, dtype=torch.bfloat16):  # meta tensors: the rule reads shapes and strides
        return torch.empty_strided((rows, heads, head_dim), (token_stride, head_dim, 1), dtype=dtype, device="meta")

    stride = heads * head_dim
    fits = (attention_module.INT32_MAX - head_dim) // stride - attention_module.MAX_BLOCK_N
    assert not attention_module.wide_offsets(keys(fits, stride), keys(fits, stride))
    assert attention_module.wide_offsets(keys(fits + 1, stride), keys(fits + 1, stride))
    assert attention_module.wide_offsets(keys(16, stride), keys(16, 2**24))  # v's stride counts too
    assert attention_module.wide_offsets(keys(16, stride, torch.float32), keys(16, stride, torch.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_64_bit_key_offsets(dtype, device, gen, monkeypatch):
    """The 64-bit offsets of keys too far apart for 32 bits (a tensor of that size is gigabytes), taken
    here by lowering the bound: ragged, causal, D 72 (a tail block), masked and unmasked blocks."""
    monkeypatch.setattr(attention_module, "INT32_MAX", 1000)
    args = _packed([150, 1, 40], [150, 1, 60], 4, 2, 72, dtype, device, gen)
    assert attention_module.wide_offsets(args[1], args[2])
    check_op(_forced_blocks(32, 32), reference.attention_varlen, *args, causal=True)


@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_negative_and_zero_softmax_scales(scale, dtype, device, gen):
    """The kernel scales with |softmax_scale| and moves a negative scale's sign into q (its unmasked
    blocks take the row max before scaling, which only a scale >= 0 allows); a scale of 0 is a uniform
    average over the visible keys. Ragged and causal, so masked and unmasked blocks both run."""
    args = _packed([150, 1, 40], [150, 1, 60], 4, 2, 72, dtype, device, gen)
    for blocks in ((32, 32), (64, 64)):
        check_op(_forced_blocks(*blocks), reference.attention_varlen, *args, causal=True, softmax_scale=scale)
    q, k, v = _qkv(2, 40, 70, 4, 4, 64, dtype, device, gen)
    check_op(ak.attention, reference.attention, q, k, v, softmax_scale=scale)


def test_empty_inputs(device, gen):
    q, k, v = _qkv(0, 5, 5, 2, 2, 64, torch.float16, device, gen)
    assert ak.attention(q, k, v).shape == (0, 5, 2, 64)
    q, k, v = _qkv(2, 0, 5, 2, 2, 64, torch.float16, device, gen)
    assert ak.attention(q, k, v).shape == (2, 0, 2, 64)
    q, k, v = _qkv(2, 3, 0, 2, 2, 64, torch.float16, device, gen)
    assert torch.equal(ak.attention(q, k, v), torch.zeros_like(q))
    args = _packed([0, 0], [0, 4], 2, 2, 64, torch.float16, device, gen)
    assert ak.attention_varlen(*args).shape == (0, 2, 64)


def test_int64_offsets(device, gen):
    """k, v rows 2**27 elements apart: row 16 lies past 2**31 elements, where an int32 offset wraps.
    The storage is allocated but not written, so only the touched pages become real memory."""
    head_dim, rows, row_stride = 64, 17, 2**27
    storage = torch.empty(row_stride * rows, dtype=torch.float16, device=device)
    k, v = (storage.as_strided((1, rows, 1, head_dim), (0, row_stride, head_dim, 1), offset) for offset in (0, 2 * head_dim))
    for t in (k, v):
        t.copy_(randn(t.shape, torch.float16, device, gen))
    q = randn((1, 4, 2, head_dim), torch.float16, device, gen)
    with poisoned_outputs():
        out = ak.attention(q, k, v)
    assert_parity(out, reference_in_float64(reference.attention, q, k, v), torch.float16)


def test_bad_inputs(device, gen):
    q, k, v = _qkv(1, 4, 4, 6, 4, 64, torch.float32, device, gen)
    with pytest.raises(ValueError, match="k: expected a number of KV heads that divides the 6 query heads"):
        ak.attention(q, k, v)
    big = randn((1, 4, 2, 264), torch.float32, device, gen)
    with pytest.raises(ValueError, match=r"q: expected a head dim D in \[1, 256\], got 264"):
        ak.attention(big, big, big)
    q, k, v, cu_q, cu_k, max_q, max_k = _packed([3, 5], [3, 5], 2, 2, 64, torch.float32, device, gen)
    with pytest.raises(TypeError, match="cu_seqlens_k: expected dtype int32"):
        ak.attention_varlen(q, k, v, cu_q, cu_k.long(), max_q, max_k)
    with pytest.raises(ValueError, match="cu_seqlens_k: expected shape"):
        ak.attention_varlen(q, k, v, cu_q, cu_k[:2], max_q, max_k)
    # a value check (it reads cu_seqlens): on CUDA tensors it runs only when asked for
    with (
        ak.value_checks("always"),
        pytest.raises(ValueError, match=r"max_seqlen_q: expected >= the longest sequence in cu_seqlens_q \(5\), got 4"),
    ):
        ak.attention_varlen(q, k, v, cu_q, cu_k, 4, max_k)
    with pytest.raises(ValueError, match="v: expected shape"):
        ak.attention_varlen(q, k, v[:, :1], cu_q, cu_k, max_q, max_k)


@pytest.mark.parametrize("check", [check_compile, pytest.param(check_cuda_graph, marks=cuda_only)],
                         ids=["torch_compile", "cuda_graph"])  # fmt: skip
def test_compiled_and_graph_captured(check, device, gen):
    args = _packed([100, 0, 37], [100, 0, 37], 12, 2, 128, torch.bfloat16, device, gen)
    expected = reference_in_float64(reference.attention_varlen, *args, causal=True)
    check(lambda *a: ak.attention_varlen(*a, causal=True), args, expected, torch.bfloat16, "attention_varlen")


@triton.jit
def _coords_kernel(out_ptr, query_blocks, num_heads, num_seqs, CAUSAL: tl.constexpr):
    item = tl.program_id(0)
    m_block, head, batch = attention_module._query_block_coords(item, query_blocks, num_heads, num_seqs, CAUSAL)
    tl.store(out_ptr + 3 * item, m_block)
    tl.store(out_ptr + 3 * item + 1, head)
    tl.store(out_ptr + 3 * item + 2, batch)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_work_items_cover_every_block_once_in_the_order_that_balances(causal, device):
    """The grid's items map one to one onto (query block, head, sequence). Causal: items in start
    order take every head's and sequence's last (longest) query block before any shorter one, the
    head fastest (a KV head's query heads side by side); otherwise one (sequence, head)'s blocks are
    side by side."""
    query_blocks, heads, seqs = 5, 3, 2
    out = torch.full((query_blocks * heads * seqs, 3), -1, dtype=torch.int32, device=device)
    _coords_kernel[(out.shape[0],)](out, query_blocks, heads, seqs, CAUSAL=causal)
    coords = [tuple(row) for row in out.tolist()]
    expected = {(m, h, b) for m in range(query_blocks) for h in range(heads) for b in range(seqs)}
    assert sorted(coords) == sorted(expected)  # every item once
    if causal:
        assert [m for m, _, _ in coords] == sorted((m for m, _, _ in coords), reverse=True)
        assert [h for _, h, _ in coords[:heads]] == list(range(heads))
    else:
        assert [m for m, _, _ in coords[:query_blocks]] == list(range(query_blocks))
        assert {(h, b) for _, h, b in coords[:query_blocks]} == {(0, 0)}


def test_too_many_programs_for_the_grid(device, gen, monkeypatch):
    """The grid is one axis of (query block, sequence, head) programs, at most 2**31 - 1 of them: a
    launch that could need more is refused before it starts, naming the count (the bound lowered
    here: a tensor that big is terabytes)."""
    monkeypatch.setattr(attention_module, "MAX_PROGRAMS", 100)
    args = _packed([300, 1, 40], [300, 1, 40], 4, 2, 64, torch.bfloat16, device, gen)
    expected = "q: expected at most 100 programs (blocks of 16 query rows x 4 heads x 3 sequences), got 228"
    with pytest.raises(ValueError, match=re.escape(expected)):
        ak.attention_varlen(*args)


@cuda_only
def test_more_sequences_than_a_grid_axis_of_65535(device, gen):
    """65,537 packed sequences (one grid axis per sequence would stop at 65,535), the last ones with
    tokens: the programs' (block, sequence, head) decomposition reaches them."""
    lengths = [0] * 65530 + [3, 1, 0, 7, 2, 0, 5]
    check_op(ak.attention_varlen, reference.attention_varlen, *_packed(lengths, lengths, 4, 2, 64, torch.bfloat16, device, gen),
             causal=True)  # fmt: skip


def test_autotune_size_classes():
    """Powers of 4: one ViT image (256 tokens x 16 heads) and 32 of them are tuned apart, prompts of
    100 and 110 tokens are not (no re-tuning at each new length); token_mlp_compress's batch of 1 and
    of 64 apart, 5 and 9 not."""
    from aurora_kernels.ops._autotune import power_of_4_class
    from aurora_kernels.ops.token_mlp_compress import BATCH_CLASSES

    rows = attention_module.QUERY_ROWS_CLASSES
    assert [power_of_4_class(n, *rows) for n in (1, 4096, 4097, 16384, 2**20, 2**30)] == [4096, 4096, 16384, 16384, 2**20, 2**20]
    assert power_of_4_class(256 * 16, *rows) != power_of_4_class(32 * 256 * 16, *rows)
    assert power_of_4_class(100 * 12, *rows) == power_of_4_class(110 * 12, *rows)
    assert [power_of_4_class(b, *BATCH_CLASSES) for b in (1, 2, 4, 5, 9, 16, 64, 1000)] == [1, 4, 4, 16, 16, 16, 64, 64]


# flash-attn's test matrix (its seqlen pairs, scaled to what the interpreter runs in seconds): ragged
# pairs on both sides of a block, Lq > Lk causal (the top rows see nothing), one query over many keys,
# MQA
FLASH_ATTN_SEQLENS = [(113, 203), (128, 217), (1, 239), (3, 799), (203, 113), (217, 128)]


@pytest.mark.parametrize("seqlens", FLASH_ATTN_SEQLENS, ids=lambda s: f"q{s[0]}-k{s[1]}")
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attn_matrix_dense_mqa(seqlens, causal, device, gen):
    check_op(ak.attention, reference.attention, *_qkv(2, *seqlens, 4, 1, 128, torch.bfloat16, device, gen), causal=causal)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_attn_matrix_packed(causal, device, gen):
    """Every pair of the matrix as one packed batch, plus an empty sequence on each side."""
    lengths_q, lengths_k = [*(q for q, _ in FLASH_ATTN_SEQLENS), 0, 5], [*(k for _, k in FLASH_ATTN_SEQLENS), 7, 0]
    check_op(ak.attention_varlen, reference.attention_varlen, *_packed(lengths_q, lengths_k, 6, 2, 64, torch.float16, device, gen),
             causal=causal)  # fmt: skip
