"""linear, rms_norm_linear, silu_and_mul_linear and rms_norm_linear_silu_and_mul: one kernel with three
prologues and two epilogues, two paths (the GEMV for up to GEMV_MAX_ROWS fp16/bf16 rows or one fp32
row, the tensor-core tiles for more)."""

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels._dispatch import poisoned_outputs
from aurora_kernels.ops import fused_linear, reference
from aurora_kernels.testing import (
    assert_parity,
    check_compile,
    check_cuda_graph,
    check_op,
    randn,
    reference_in_float64,
    strided_view,  # fmt: skip
)
from tests.catalogue import DTYPE_IDS, DTYPES, cuda_only

# rows: 1 (the GEMV), 2 and 3 (the GEMV's blocks of 2 and 4 rows, the last one masked, in fp16/bf16;
# one row block of the tile path in fp32) and 17 (the tile path's rows in one wgmma block, two
# blocks of the others); K 300 and N 100 are not multiples of any block, and K 300 walks several K
# chunks
ROWS = (1, 2, 3, 17)
K, N = 300, 100


def _weights(in_features, out_features, dtype, device, gen, with_bias=True):
    weight = randn((out_features, in_features), dtype, device, gen, scale=in_features**-0.5)
    bias = randn((out_features,), dtype, device, gen) if with_bias else None
    return weight, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
def test_linear_parity(dtype, rows, with_bias, device, gen):
    x = randn((rows, K), dtype, device, gen)
    check_op(ak.linear, reference.linear, x, *_weights(K, N, dtype, device, gen, with_bias))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_rms_norm_linear_parity(dtype, rows, with_residual, device, gen):
    x = randn((rows, K), dtype, device, gen)
    residual = randn((rows, K), dtype, device, gen) if with_residual else None
    norm_weight = randn((K,), dtype, device, gen, scale=0.5, shift=1.0)
    errors = check_op(ak.rms_norm_linear, reference.rms_norm_linear, x, norm_weight,
                      *_weights(K, N, dtype, device, gen), 1e-6, residual)  # fmt: skip
    assert len(errors) == (2 if with_residual else 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows", ROWS)
def test_silu_and_mul_linear_parity(dtype, rows, device, gen):
    x = randn((rows, 2 * K), dtype, device, gen, scale=2.0)
    check_op(ak.silu_and_mul_linear, reference.silu_and_mul_linear, x, *_weights(K, N, dtype, device, gen, False))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_rms_norm_linear_silu_and_mul_parity(dtype, rows, with_residual, device, gen):
    """N 2 x 51 weight rows: an odd number of output columns, so the last program's pair block is
    partly masked; with a bias over the weight's rows."""
    x = randn((rows, K), dtype, device, gen)
    residual = randn((rows, K), dtype, device, gen) if with_residual else None
    norm_weight = randn((K,), dtype, device, gen, scale=0.5, shift=1.0)
    weight, bias = _weights(K, 2 * 51, dtype, device, gen)
    errors = check_op(ak.rms_norm_linear_silu_and_mul, reference.rms_norm_linear_silu_and_mul, x, norm_weight, weight, bias,
                      1e-6, residual)  # fmt: skip
    assert len(errors) == (2 if with_residual else 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_the_residual_added_to_the_output(dtype, device, gen):
    """linear and silu_and_mul_linear with a residual: the residual stream's add after o_proj and
    down_proj (h + o), in the epilogue on the fp32 sums, one rounding. 1 row (the GEMV, which reads
    the residual before its loop), 3 (its row blocks), 17 and 40 (the tiles, K split in two: the split
    sum adds it); a residual that is a column slice of a wider tensor, and one in [B, 1, N]."""
    for rows in (1, 3, 17, 40):
        x, residual = randn((rows, K), dtype, device, gen), randn((rows, N), dtype, device, gen)
        weight, bias = _weights(K, N, dtype, device, gen)
        check_op(ak.linear, reference.linear, x, weight, bias, residual)
        wider = randn((rows, N + 12), dtype, device, gen)[:, 4 : N + 4]
        check_op(ak.silu_and_mul_linear, reference.silu_and_mul_linear, randn((rows, 2 * K), dtype, device, gen, scale=2.0),
                 weight, None, wider)  # fmt: skip
        check_op(ak.linear, reference.linear, x[:, None], weight, None, residual[:, None])
        y = ak.linear(x, weight, bias, residual)
        assert (y.float() - ak.linear(x, weight, bias).float()).abs().max() > 0.5  # the residual is there


def test_the_activation_in_the_epilogue_pairs_each_gate_with_its_up_row(device, gen):
    """In fp32 a gate paired with another column's up row (or the halves swapped) is off by O(1), not
    by rounding: at 1 row (the GEMV) and 5 (the tiles) within 1e-5; then every candidate of the
    GEMV's row blocks, the 1-row configs (which take one pair) included."""
    in_features, columns = 64, 24
    weight = randn((2 * columns, in_features), torch.float32, device, gen)
    norm_weight = torch.ones(in_features, device=device)
    for rows in (1, 5):
        x = randn((rows, in_features), torch.float32, device, gen)
        expected = reference.rms_norm_linear_silu_and_mul(x, norm_weight, weight)
        torch.testing.assert_close(ak.rms_norm_linear_silu_and_mul(x, norm_weight, weight), expected, rtol=1e-5, atol=1e-5)
    half_x = x[:2].half()
    for config in fused_linear._GPU_CONFIGS["gemv_rows"]:
        y = fused_linear.launch(
            half_x, weight.half(), None, norm_weight.half(), None, 1e-6, 1, 1, config=config, kind="gemv_rows"
        )[0]
        expected = reference_in_float64(reference.rms_norm_linear_silu_and_mul, half_x, norm_weight.half(), weight.half())
        assert_parity(y, expected, torch.float16, f"gemv_rows {config}")


def test_the_silu_and_mul_epilogue_on_the_wgmma_tiles(device, gen):
    """Batches beyond the GEMV's rows take the wgmma tiles under the epilogue too, each program's gate
    and up rows one TMA box of the weight's [2, N/2, K] view: swapped at 5 and 17 rows, 64-row tiles
    at 65 (two row blocks); a weight TMA cannot read (a row slice of a wider tensor) takes the mma
    tiles. Each pairs every gate with its own up row: with the two halves exchanged, the answer is
    off by O(1), far past the bf16 bound."""
    in_features, columns = 256, 51  # a partial column block: the box reads zeros past 51 in both halves
    weight, bias = _weights(in_features, 2 * columns, torch.bfloat16, device, gen)
    swapped = torch.cat([weight[columns:], weight[:columns]])
    sliced = randn((2 * columns, in_features + 4), torch.bfloat16, device, gen)[:, :in_features]
    assert fused_linear.weight_tma_ok(weight) and not fused_linear.weight_tma_ok(sliced)
    norm_weight = randn((in_features,), torch.bfloat16, device, gen, scale=0.5, shift=1.0)
    for rows, kind in ((5, "wgmma_swap_ab"), (17, "wgmma_swap_ab"), (65, "wgmma")):
        assert fused_linear._launcher_kind(rows, torch.bfloat16, True) == kind
        x, residual = (randn((rows, in_features), torch.bfloat16, device, gen) for _ in range(2))
        for w in (weight, sliced):
            check_op(ak.rms_norm_linear_silu_and_mul, reference.rms_norm_linear_silu_and_mul, x, norm_weight, w, bias,
                     1e-6, residual)  # fmt: skip
        y = ak.rms_norm_linear_silu_and_mul(x, norm_weight, weight, bias)
        wrong = reference.rms_norm_linear_silu_and_mul(x, norm_weight, swapped, bias)
        assert (y.float() - wrong.float()).abs().max() > 0.1, kind


@pytest.mark.parametrize("batch", [1, 4, 5])
def test_model_widths_and_decode_shapes(batch, device, gen):
    """The LLM's hidden width (K 1536: 12 chunks of the interpreter's 128) and the decode layout
    [B, 1, C], with an fp32 norm weight on bf16 activations; B=1 and B=4 are the one-pass GEMV,
    B=5 the tensor-core tiles."""
    x = randn((batch, 1, 1536), torch.bfloat16, device, gen)
    residual = randn((batch, 1, 1536), torch.bfloat16, device, gen)
    norm_weight = randn((1536,), torch.float32, device, gen, scale=0.5, shift=1.0)
    check_op(ak.rms_norm_linear, reference.rms_norm_linear, x, norm_weight, *_weights(1536, 48, torch.bfloat16, device, gen),
             1e-6, residual)  # fmt: skip


def test_strided_inputs_and_weight_slices(device, gen):
    """x and residual with padded rows, [B, L] rows with two strides, and weights that are row slices
    of one fused weight (row stride > K)."""
    x = strided_view((4, 3, K), torch.float16, device, gen)
    residual = strided_view((4, 3, K), torch.float16, device, gen, pad=3)
    fused = randn((3 * N, K + 8), torch.float16, device, gen, scale=K**-0.5)[:, :K]
    weight = fused[N : 2 * N]
    assert weight.stride(0) == K + 8
    norm_weight = randn((K,), torch.float16, device, gen, scale=0.5, shift=1.0)
    check_op(ak.rms_norm_linear, reference.rms_norm_linear, x, norm_weight, weight, None, 1e-5, residual)
    check_op(ak.linear, reference.linear, x, weight)
    gate_up = strided_view((2, 2 * K), torch.float32, device, gen)
    check_op(ak.silu_and_mul_linear, reference.silu_and_mul_linear, gate_up, weight.float())


def test_empty_rows(device, gen):
    x = randn((0, 1, K), torch.bfloat16, device, gen)
    weight, bias = _weights(K, N, torch.bfloat16, device, gen)
    y, h = ak.rms_norm_linear(x, weight[0], weight, bias, residual=x)
    assert y.shape == (0, 1, N) and h.shape == (0, 1, K)
    assert ak.linear(x, weight).shape == (0, 1, N)


def test_int64_offsets(device, gen):
    """Rows of x and of the weight 2**30 + 64 elements apart: row 2 starts past 2**31 elements, where
    an int32 product of row index and stride wraps (each stride alone fits int32). The storage is
    allocated but not written, so only the touched pages become real memory."""
    row_stride, width = 2**30 + 64, 64
    storage = torch.empty(2 * row_stride + 2 * width, dtype=torch.float16, device=device)
    x, weight = (storage.as_strided((3, width), (row_stride, 1), offset) for offset in (0, width))
    for t in (x, weight):
        t.copy_(randn(t.shape, torch.float16, device, gen))
    check_op(ak.linear, reference.linear, x, weight)
    check_op(ak.linear, reference.linear, x[2:], weight)  # one row: the GEMV path


def test_matches_the_unfused_ops(device, gen):
    """backend="triton" of the fused op against the model's unfused chain (rms_norm, then a matmul in
    the same dtype): the same rounding points, so the same answer up to accumulation order."""
    x, residual = (randn((3, 1, 256), torch.float32, device, gen) for _ in range(2))
    norm_weight = randn((256,), torch.float32, device, gen, scale=0.5, shift=1.0)
    weight, bias = _weights(256, 64, torch.float32, device, gen)
    y, h = ak.rms_norm_linear(x, norm_weight, weight, bias, 1e-6, residual)
    normed, h_unfused = ak.rms_norm(x, norm_weight, 1e-6, residual)
    torch.testing.assert_close(h, h_unfused, rtol=0, atol=0)
    torch.testing.assert_close(y, torch.nn.functional.linear(normed, weight, bias), rtol=1e-5, atol=1e-5)


def test_bad_inputs(device, gen):
    x = randn((4, 64), torch.float32, device, gen)
    weight = randn((32, 64), torch.float32, device, gen)
    with pytest.raises(ValueError, match=r"weight: expected shape \[32, 64\] \[N, K\], got \[32, 48\]"):
        ak.linear(x, weight[:, :48])
    with pytest.raises(ValueError, match=r"weight: expected 2 dims \[N, K\]"):
        ak.linear(x, weight[0])
    with pytest.raises(TypeError, match="weight: expected dtype torch.float32 \\(the dtype of x\\), got torch.float16"):
        ak.linear(x, weight.half())
    with pytest.raises(ValueError, match="weight: expected the last dim to be contiguous"):
        ak.linear(x, weight.t().contiguous().t())
    with pytest.raises(ValueError, match="weight: expected at least one output feature"):
        ak.linear(x, weight[:0])
    with pytest.raises(ValueError, match=r"bias: expected shape \[32\] \[N\], got \[31\]"):
        ak.linear(x, weight, weight[0, :31])
    with pytest.raises(ValueError, match="bias: expected the last dim to be contiguous"):
        ak.linear(x, weight, weight[:, 0])
    with pytest.raises(ValueError, match=r"norm_weight: expected shape \[64\] \[K\]"):
        ak.rms_norm_linear(x, x[0, :32], weight)
    with pytest.raises(ValueError, match="norm_weight: expected the last dim to be contiguous"):
        ak.rms_norm_linear(x, randn((128,), torch.float32, device, gen)[::2], weight)
    with pytest.raises(TypeError, match="residual: expected dtype torch.float32"):
        ak.rms_norm_linear(x, x[0], weight, residual=x.half())
    with pytest.raises(ValueError, match="residual: expected shape"):
        ak.rms_norm_linear(x, x[0], weight, residual=x[:2])
    with pytest.raises(ValueError, match="eps: expected a non-negative float"):
        ak.rms_norm_linear(x, x[0], weight, eps=-1.0)
    with pytest.raises(ValueError, match="x: expected an even last dim"):
        ak.silu_and_mul_linear(x[:, :63], weight)
    with pytest.raises(ValueError, match=r"weight: expected shape \[32, 32\] \[N, K\], got \[32, 64\]"):
        ak.silu_and_mul_linear(x, weight)
    with pytest.raises(ValueError, match="x: expected the last dim to be contiguous"):
        ak.linear(x.t(), weight[:, :4])
    # x's last dim is named as in each docstring: K, the projection's input, or 2I, gate and up
    with pytest.raises(ValueError, match=r"x: expected a last dim K in \[1, \d+\], got 0"):
        ak.rms_norm_linear(x[:, :0], x[0, :0], weight[:, :0])
    with pytest.raises(ValueError, match=r"x: expected at least 1 dim \[\.\.\., 2I\]"):
        ak.silu_and_mul_linear(x[0, 0], weight)
    output = randn((4, 32), torch.float32, device, gen)  # linear(x, weight)'s shape
    with pytest.raises(
        ValueError, match=r"residual: expected shape \[4, 32\] \(the output's shape \[\.\.\., N\]\), got \[4, 64\]"
    ):
        ak.linear(x, weight, residual=x)
    with pytest.raises(TypeError, match="residual: expected dtype torch.float32 \\(the dtype of x\\), got torch.float16"):
        ak.silu_and_mul_linear(x, weight[:, :32], residual=output.half())
    with pytest.raises(ValueError, match="residual: expected the last dim to be contiguous"):
        ak.linear(x, weight, residual=output.t().contiguous().t())
    with pytest.raises(ValueError, match=r"weight: expected an even number of rows \[2I, K\] \(gate and up halves\), got 31"):
        ak.rms_norm_linear_silu_and_mul(x, x[0], weight[:31])
    with pytest.raises(ValueError, match=r"norm_weight: expected shape \[64\] \[K\]"):
        ak.rms_norm_linear_silu_and_mul(x, x[0, :32], weight)


@pytest.mark.parametrize("kind", list(fused_linear._GPU_CONFIGS))
def test_every_autotune_candidate(kind, device, gen):
    """Each tile the autotuner may pick, launched on its own with every prologue and with the epilogue:
    a GPU test run keeps only each autotuner's first candidate (autotuning off: AURORA_AUTOTUNE=0), so
    the others are checked here (on a CPU, their block shapes under the interpreter)."""
    dtype = torch.float32 if kind == "dot_fp32" else torch.bfloat16
    rows = {"gemv": 1, "gemv_rows": 3, "wgmma": 65, "wgmma_swap_ab": 33}.get(kind, 17)  # two row blocks
    # K: the wgmma tiles read the weight by TMA, whose rows must start 16 bytes apart (304 x 2 B)
    in_features = 304 if kind in fused_linear.TMA_KINDS else K
    x, residual = (randn((rows, in_features), dtype, device, gen) for _ in range(2))
    gate_up = randn((rows, 2 * in_features), dtype, device, gen, scale=2.0)
    norm_weight = randn((in_features,), dtype, device, gen, scale=0.5, shift=1.0)
    weight, bias = _weights(in_features, N, dtype, device, gen)
    output_residual = randn((rows, N), dtype, device, gen)
    calls = {
        "none": ((x, weight, bias, None, None, 0.0), reference.linear, (x, weight, bias)),
        "rms_norm": ((x, weight, bias, norm_weight, residual, 1e-6), reference.rms_norm_linear,
                     (x, norm_weight, weight, bias, 1e-6, residual)),
        "silu_and_mul": ((gate_up, weight, None, None, None, 0.0), reference.silu_and_mul_linear, (gate_up, weight)),
        "none + residual": ((x, weight, bias, None, output_residual, 0.0), reference.linear, (x, weight, bias, output_residual)),
    }  # fmt: skip
    calls["rms_norm, silu_and_mul epilogue"] = ((x, weight, bias, norm_weight, residual, 1e-6),
                                                reference.rms_norm_linear_silu_and_mul,
                                                (x, norm_weight, weight, bias, 1e-6, residual))  # fmt: skip
    configs = fused_linear._GPU_CONFIGS[kind]
    # and the GEMV's K loop unrolled twice, as the tile sweep also times it: at K = 300 the 8x256 tile
    # makes two steps (one unrolled iteration), the 8x512 tile one (the unrolled loop's remainder)
    unrolled = [(configs[0], 2), (configs[1], 2)] if kind == "gemv" else []
    for config, unroll in [(c, 1) for c in configs] + unrolled:
        for prologue, (launch_args, reference_fn, reference_args) in calls.items():
            prologue, _, epilogue = prologue.removesuffix(" + residual").partition(", ")
            with poisoned_outputs():
                outputs = fused_linear.launch(*launch_args, fused_linear.PROLOGUES.index(prologue), int(bool(epilogue)),
                                              config=config, unroll=unroll, kind=kind)  # fmt: skip
            expected = reference_in_float64(reference_fn, *reference_args)
            for out, ref in zip(outputs, expected if isinstance(expected, tuple) else (expected,)):
                assert_parity(out, ref, dtype, f"{kind} {config} unroll {unroll} {prologue}")


def test_the_autotuner_leaves_out_the_tile_that_spills():
    """`SPILLING_CANDIDATES`: the 4 x 1024 GEMV tile spills for the fp16/bf16 rms_norm without a
    residual. The launcher's early prune leaves it out of such calls alone (their dtype and
    HAS_RESIDUAL are in the autotuner's key), and the compile report leaves out just those pairs."""
    import triton

    from aurora_kernels._compile import all_configs
    from aurora_kernels.ops._autotune import _early_prune

    configs = [triton.Config({"BLOCK_N": c[0], "BLOCK_K": c[1]}, num_warps=c[2], num_stages=c[3])
               for c in fused_linear._GPU_CONFIGS["gemv"]]  # fmt: skip
    prune = _early_prune("gemv", fused_linear._fits_call)
    tile = lambda c: (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps)  # noqa: E731
    for dtype, has_residual in ((torch.float16, False), (torch.float16, True), (torch.bfloat16, False), (torch.float32, False)):
        kept = prune(configs, {"x_ptr": torch.empty(1, dtype=dtype)}, PROLOGUE=1, HAS_RESIDUAL=has_residual)
        spills = dtype != torch.float32 and not has_residual
        assert kept == [c for c in configs if not spills or tile(c) != (4, 1024, 4)], (dtype, has_residual)
    assert len(prune(configs, {"x_ptr": torch.empty(1, dtype=torch.float16)}, PROLOGUE=1, HAS_RESIDUAL=False)) == len(configs) - 1
    layer_0 = [c for c in all_configs() if c.shape.startswith("input_layernorm -> qkv_proj, no residual")
               and not c.constexprs["USE_DOT"] and c.constexprs["BLOCK_M"] == 1]  # fmt: skip
    assert {(c.dtype, c.constexprs["BLOCK_N"], c.constexprs["BLOCK_K"]) for c in layer_0 if not c.constexprs["USE_PDL"]} == {
        (dtype, c[0], c[1]) for c in fused_linear._GPU_CONFIGS["gemv"] for dtype in ("fp16", "bf16", "fp32")
    } - {("fp16", 4, 1024), ("bf16", 4, 1024)}
    assert layer_0 and not any(c.constexprs["HAS_RESIDUAL"] for c in layer_0)


def test_path_choice_by_rows():
    """One row, and up to GEMV_MAX_ROWS fp16/bf16 rows, stream the weight on the FMA units (the
    GEMV); more rows take the tensor-core tiles (wgmma where TMA can read the weight: swapped, the
    rows in the MMA's N, up to 32 rows), fp32 rows beyond one the fp32 tiles."""
    kind = fused_linear._launcher_kind
    assert fused_linear.GEMV_MAX_ROWS == 4 and fused_linear.SWAP_AB_MAX_ROWS == 32
    assert [kind(rows, torch.bfloat16, True) for rows in (1, 2, 3, 4, 5, 32, 33, 64)] == (
        ["gemv"] + ["gemv_rows"] * 3 + ["wgmma_swap_ab"] * 2 + ["wgmma"] * 2
    )
    assert [kind(rows, torch.float16, False) for rows in (4, 5)] == ["gemv_rows", "dot_half"]
    assert [kind(rows, torch.float32, False) for rows in (1, 2)] == ["gemv", "dot_fp32"]


def test_k_split_rule():
    """More rows than one take the tensor-core path, which splits K where its column blocks alone would
    leave SMs idle (down_proj's 24 blocks walked all of K = 8960), in whole multiples of every
    candidate's BLOCK_K; the parity tests above run split (K 300 in 256 + 44) and unsplit calls."""
    cpu = torch.device("cpu")  # the rule then assumes an H100's 132 SMs
    for kind, expected in {
        "wgmma": [(6, 256), (6, 256), (1, 1536), (18, 512), (18, 512), (1, 1536)],
        "wgmma_swap_ab": [(6, 256), (6, 256), (1, 1536), (18, 512), (18, 512), (1, 1536)],
        "dot_half": [(6, 256), (6, 256), (1, 1536), (9, 1024), (9, 1024), (1, 1536)],
    }.items():
        splits = [
            fused_linear.k_splits(k, n, 1, cpu, kind) for _, _, e, k, n, _, _ in fused_linear.MODEL_PROJECTIONS if e == "none"
        ]
        assert splits == expected, (kind, splits)
    assert fused_linear.k_splits(K, N, 1, cpu, "dot_half") == (2, 256)
    assert fused_linear.k_splits(K, 40_000, 1, cpu, "dot_half") == (1, K)  # a wave of column blocks: one split
    for kind in (*fused_linear.TMA_KINDS, "dot_half", "dot_fp32"):
        assert all(fused_linear.K_SPLIT_MULTIPLE % block_k == 0 for _, block_k, _, _ in fused_linear._GPU_CONFIGS[kind])


def test_wgmma_path_choice_and_parity(device, gen):
    """Decode batches of fp16/bf16 rows take the wgmma tiles where TMA can read the weight (rows 16
    bytes apart, an aligned start), the mma tiles where not: both give the reference's answer. 5 and
    17 rows take the swapped tiles (16 and 32 rows in the MMA's N), 65 rows two row blocks of 64; N
    100 leaves a partial column block, which TMA pads with zeros."""
    in_features = 512  # two K splits of 256 at N 100: each split's chunks and the split sum
    weight, bias = _weights(in_features, N, torch.bfloat16, device, gen)
    assert fused_linear.weight_tma_ok(weight)
    fused = randn((N, in_features + 4), torch.bfloat16, device, gen, scale=in_features**-0.5)[:, :in_features]
    assert not fused_linear.weight_tma_ok(fused)  # rows 1032 bytes apart
    assert not fused_linear.weight_tma_ok(weight.float())
    expanded = weight[:1].expand(N, in_features)  # every row the same memory: legal, not for TMA
    assert not fused_linear.weight_tma_ok(expanded)
    check_op(ak.linear, reference.linear, randn((5, in_features), torch.bfloat16, device, gen), expanded)
    norm_weight = randn((in_features,), torch.bfloat16, device, gen, scale=0.5, shift=1.0)
    for rows in (5, 17, 65):
        x, residual = (randn((rows, 1, in_features), torch.bfloat16, device, gen) for _ in range(2))
        for w in (weight, fused):
            check_op(ak.rms_norm_linear, reference.rms_norm_linear, x, norm_weight, w, bias, 1e-6, residual)
    gate_up = randn((8, 2 * in_features), torch.bfloat16, device, gen, scale=2.0)
    check_op(ak.silu_and_mul_linear, reference.silu_and_mul_linear, gate_up, weight)


@pytest.mark.parametrize("check", [check_compile, pytest.param(check_cuda_graph, marks=cuda_only)],
                         ids=["torch_compile", "cuda_graph"])  # fmt: skip
@pytest.mark.parametrize("rows", [1, 3, 8])  # the GEMV, its row blocks, the tensor-core tiles
def test_compiled_and_graph_captured(check, rows, device, gen):
    x, residual = (randn((rows, 1, 256), torch.bfloat16, device, gen) for _ in range(2))
    norm_weight = randn((256,), torch.bfloat16, device, gen, scale=0.5, shift=1.0)
    weight, bias = _weights(256, 96, torch.bfloat16, device, gen)
    args = (x, norm_weight, weight, bias, 1e-6, residual)
    expected = reference_in_float64(reference.rms_norm_linear, *args)[0]
    check(lambda *a: ak.rms_norm_linear(*a)[0], args, expected, torch.bfloat16, "rms_norm_linear")
    args = (x, weight, bias, randn((rows, 1, 96), torch.bfloat16, device, gen))  # o_proj's shape: one output
    check(ak.linear, args, reference_in_float64(reference.linear, *args), torch.bfloat16, "linear + residual")
