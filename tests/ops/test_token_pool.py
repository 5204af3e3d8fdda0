import math

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import check_op, randn, strided_view
from tests.catalogue import DTYPE_IDS, DTYPES, far_apart


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("grid,kernel_size", [((16, 16), 2), ((6, 9), 3), ((4, 4), 4), ((5, 5), 1), ((8, 2), 2)])
def test_parity(dtype, mode, grid, kernel_size, device, gen):
    x = randn((3, grid[0] * grid[1], 100), dtype, device, gen)  # C = 100: not a multiple of the block
    check_op(ak.token_pool, reference.token_pool, x, grid, kernel_size, mode)


@pytest.mark.parametrize("channels", [1, 1536])
def test_batch_one_and_model_width(channels, device, gen):
    x = randn((1, 256, channels), torch.bfloat16, device, gen)
    check_op(ak.token_pool, reference.token_pool, x, (16, 16), 2, "avg")


def test_strided_tokens(device, gen):
    # a token stride that is not C, and a batch stride that is not N*C
    x = strided_view((2, 64, 40), torch.float32, device, gen)
    check_op(ak.token_pool, reference.token_pool, x, (8, 8), 2, "max")
    # visual tokens sliced out of a longer sequence [B, 1 + 256, C] (a class token first)
    seq = randn((2, 1 + 16, 24), torch.float16, device, gen)
    check_op(ak.token_pool, reference.token_pool, seq[:, 1:], (4, 4), 2, "avg")


def test_max_propagates_nan(device, gen):
    x = randn((2, 16, 40), torch.float32, device, gen)
    x[0, 5, 3] = math.nan  # token (1, 1) of image 0: window 0, channel 3
    out = ak.token_pool(x, (4, 4), 2, "max")
    assert out[0, 0, 3].isnan()
    assert out.isnan().sum() == 1


def test_empty_batch(device, gen):
    assert ak.token_pool(randn((0, 16, 8), torch.float32, device, gen), (4, 4)).shape == (0, 4, 8)


def test_bad_inputs(device, gen):
    x = randn((1, 16, 8), torch.float32, device, gen)
    with pytest.raises(ValueError, match="grid_size\\[0\\]: expected a multiple of kernel_size \\(3\\), got 4"):
        ak.token_pool(x, (4, 4), 3)
    with pytest.raises(TypeError, match="grid_size: expected a pair"):
        ak.token_pool(x, 16)
    with pytest.raises(TypeError, match="kernel_size: expected an int"):
        ak.token_pool(x, (4, 4), 2.0)
    with pytest.raises(ValueError, match="x: expected 3 dims \\[B, H\\*W, C\\]"):
        ak.token_pool(x[0], (4, 4))


def test_int64_offsets(device, gen):
    check_op(ak.token_pool, reference.token_pool, far_apart((3, 16, 8), torch.float16, device, gen), (4, 4), 2, "avg")
