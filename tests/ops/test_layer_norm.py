import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import assert_parity, check_op, randn, strided_view
from tests.catalogue import DTYPE_IDS, DTYPES, MODEL_WIDTHS, ODD_WIDTHS, far_apart


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("width", MODEL_WIDTHS + ODD_WIDTHS)
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_parity(dtype, width, with_residual, device, gen):
    # a shifted mean makes the centring matter
    x = randn((3, 5, width), dtype, device, gen, scale=2.0, shift=3.0)
    weight = randn((width,), dtype, device, gen, scale=0.5, shift=1.0)
    bias = randn((width,), dtype, device, gen)
    residual = randn((3, 5, width), dtype, device, gen, shift=-1.0) if with_residual else None
    check_op(ak.layer_norm, reference.layer_norm, x, weight, bias, 1e-6, residual=residual)


def test_residual_form_is_the_add_then_the_norm(device, gen):
    """(layer_norm(x + residual), x + residual), against torch's own add and F.layer_norm in float64,
    and strided rows for both inputs."""
    x = strided_view((4, 6, 1152), torch.float32, device, gen)
    residual = strided_view((4, 6, 1152), torch.float32, device, gen, pad=3)
    weight, bias = randn((1152,), torch.float32, device, gen), randn((1152,), torch.float32, device, gen)
    normed, h = ak.layer_norm(x, weight, bias, 1e-6, residual=residual)
    want_h = x.double() + residual.double()
    want = torch.nn.functional.layer_norm(want_h, (1152,), weight.double(), bias.double(), 1e-6)
    assert_parity(h, want_h, torch.float32, "x + residual")
    assert_parity(normed, want, torch.float32, "layer_norm(x + residual)")
    with pytest.raises(ValueError, match=r"residual: expected shape \[4, 6, 1152\]"):
        ak.layer_norm(x, weight, bias, residual=residual[:, :3])
    with pytest.raises(TypeError, match="residual: expected dtype torch.float32"):
        ak.layer_norm(x, weight, bias, residual=residual.half())


def test_strided_and_single_row(device, gen):
    weight, bias = randn((1152,), torch.float32, device, gen), randn((1152,), torch.float32, device, gen)
    check_op(ak.layer_norm, reference.layer_norm, strided_view((3, 4, 1152), torch.float32, device, gen), weight, bias)
    check_op(ak.layer_norm, reference.layer_norm, randn((1, 1152), torch.bfloat16, device, gen), weight, bias)


def test_empty_rows(device, gen):
    x = randn((2, 0, 32), torch.float32, device, gen)
    assert ak.layer_norm(x, x.new_ones(32), x.new_zeros(32)).shape == (2, 0, 32)


def test_bad_inputs(device, gen):
    x = randn((4, 64), torch.float32, device, gen)
    with pytest.raises(ValueError, match="bias: expected shape \\[64\\]"):
        ak.layer_norm(x, x[0], x[0, :10])
    with pytest.raises(TypeError, match="x: expected dtype"):
        ak.layer_norm(x.double(), x[0], x[0])
    with pytest.raises(TypeError, match="weight: expected a torch.Tensor"):
        ak.layer_norm(x, None, x[0])


def test_int64_offsets(device, gen):
    weight, bias = randn((64,), torch.float16, device, gen), randn((64,), torch.float16, device, gen)
    check_op(ak.layer_norm, reference.layer_norm, far_apart((3, 64), torch.float16, device, gen), weight, bias)
