import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import check_op, randn, strided_view
from tests.catalogue import DTYPE_IDS, DTYPES, MODEL_WIDTHS, ODD_WIDTHS, far_apart


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("width", MODEL_WIDTHS + ODD_WIDTHS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_parity(dtype, width, with_residual, device, gen):
    rows = (3, 7)
    x = randn((*rows, width), dtype, device, gen)
    weight = randn((width,), dtype, device, gen, scale=0.5, shift=1.0)
    residual = randn((*rows, width), dtype, device, gen) if with_residual else None
    check_op(ak.rms_norm, reference.rms_norm, x, weight, 1e-6, residual=residual)


@pytest.mark.parametrize("num_rows", [1, 33])
def test_row_counts(num_rows, device, gen):
    x = randn((num_rows, 1536), torch.bfloat16, device, gen)
    weight = randn((1536,), torch.float32, device, gen)  # fp32 weight with bf16 activations
    check_op(ak.rms_norm, reference.rms_norm, x, weight)


def test_strided_rows_and_per_head_slice(device, gen):
    x = strided_view((4, 5, 128), torch.float32, device, gen)
    residual = strided_view((4, 5, 128), torch.float32, device, gen, pad=3)
    weight = randn((128,), torch.float32, device, gen)
    check_op(ak.rms_norm, reference.rms_norm, x, weight, 1e-5, residual=residual)
    # per-head norm of q sliced out of a fused qkv projection: rows (B*L, Hq) with two strides
    qkv = randn((2, 9, 16 * 128), torch.bfloat16, device, gen)
    q = qkv[..., : 12 * 128].unflatten(-1, (12, 128))
    check_op(ak.rms_norm, reference.rms_norm, q, weight.bfloat16())


def test_empty_rows(device, gen):
    x = randn((0, 64), torch.float16, device, gen)
    out, h = ak.rms_norm(x, randn((64,), torch.float16, device, gen), residual=x)
    assert out.shape == h.shape == (0, 64)


def test_module_matches_function(device, gen):
    norm = ak.RMSNorm(256, eps=1e-5, device=device, dtype=torch.float32)
    with torch.no_grad():
        norm.weight.copy_(randn((256,), torch.float32, device, gen))
    x = randn((6, 256), torch.float32, device, gen)
    torch.testing.assert_close(norm(x), ak.rms_norm(x, norm.weight, 1e-5, backend="reference"), rtol=1e-5, atol=1e-5)


def test_bad_inputs(device, gen):
    x = randn((4, 64), torch.float32, device, gen)
    with pytest.raises(ValueError, match="weight: expected shape \\[64\\]"):
        ak.rms_norm(x, randn((32,), torch.float32, device, gen))
    with pytest.raises(TypeError, match="residual: expected dtype torch.float32"):
        ak.rms_norm(x, x[0], residual=x.half())
    with pytest.raises(ValueError, match="x: expected the last dim to be contiguous"):
        ak.rms_norm(x.t(), x[:, 0])
    with pytest.raises(ValueError, match="eps"):
        ak.rms_norm(x, x[0], eps=-1.0)


def test_int64_offsets(device, gen):
    x = far_apart((3, 64), torch.float16, device, gen)
    residual = randn((3, 64), torch.float16, device, gen)
    check_op(ak.rms_norm, reference.rms_norm, x, randn((64,), torch.float16, device, gen), residual=residual)
