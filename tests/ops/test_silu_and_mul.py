import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import check_op, randn, strided_view
from tests.catalogue import DTYPE_IDS, DTYPES, far_apart


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("intermediate", [1, 100, 1300, 8960])
def test_parity(dtype, intermediate, device, gen):
    rows = (2, 3) if intermediate > 1000 else (5, 7)
    x = randn((*rows, 2 * intermediate), dtype, device, gen, scale=2.0)
    check_op(ak.silu_and_mul, reference.silu_and_mul, x)


def test_strided_rows(device, gen):
    check_op(ak.silu_and_mul, reference.silu_and_mul, strided_view((4, 3, 2 * 300), torch.float16, device, gen))


def test_bad_inputs(device, gen):
    with pytest.raises(ValueError, match="x: expected an even last dim"):
        ak.silu_and_mul(randn((4, 33), torch.float32, device, gen))
    with pytest.raises(ValueError, match="x: expected at least 1 dim"):
        ak.silu_and_mul(randn((), torch.float32, device, gen))


def test_int64_offsets(device, gen):
    check_op(ak.silu_and_mul, reference.silu_and_mul, far_apart((3, 2 * 48), torch.bfloat16, device, gen))
