import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import check_op, randn, strided_view
from tests.catalogue import DTYPE_IDS, DTYPES, far_apart


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
# (2, 1536) and (64, 4304) are walked as rows of 1024 (FLAT_COLS); the others over their own rows
@pytest.mark.parametrize("shape", [(1,), (7, 100), (2, 3, 4304), (2, 1536), (64, 4304)])
def test_parity(dtype, shape, device, gen):
    # scale 4 reaches both saturated ends of the tanh
    check_op(ak.gelu_tanh, reference.gelu_tanh, randn(shape, dtype, device, gen, scale=4.0))


def test_contiguous_inputs_are_walked_in_full_tiles_where_their_size_allows(device, gen, monkeypatch):
    """The tile config is asked for FLAT_COLS columns for a contiguous input of a multiple of
    FLAT_COLS elements, for its own row width otherwise (a strided input, or another size)."""
    from aurora_kernels.ops import _layout

    widths, tile_config = [], _layout.elementwise_tile_config
    monkeypatch.setattr(_layout, "elementwise_tile_config", lambda num_cols: widths.append(num_cols) or tile_config(num_cols))
    for x in (randn((64, 4304), torch.bfloat16, device, gen), randn((3, 4304), torch.bfloat16, device, gen),
              strided_view((64, 2, 512), torch.bfloat16, device, gen)):  # fmt: skip
        check_op(ak.gelu_tanh, reference.gelu_tanh, x)
    assert widths == [_layout.FLAT_COLS, 4304, 512] and _layout.FLAT_COLS == 1024


def test_strided_rows(device, gen):
    check_op(ak.gelu_tanh, reference.gelu_tanh, strided_view((5, 2, 300), torch.bfloat16, device, gen))


def test_extreme_values_stay_finite(device):
    x = torch.tensor([-1e4, -30.0, 0.0, 30.0, 1e4], dtype=torch.float32, device=device)
    out = ak.gelu_tanh(x)
    torch.testing.assert_close(out.cpu(), torch.tensor([0.0, 0.0, 0.0, 30.0, 1e4]), rtol=1e-6, atol=1e-6)


def test_bad_inputs(device, gen):
    with pytest.raises(ValueError, match="x: expected the last dim to be contiguous"):
        ak.gelu_tanh(randn((8, 8), torch.float32, device, gen).t())


def test_int64_offsets(device, gen):
    check_op(ak.gelu_tanh, reference.gelu_tanh, far_apart((3, 100), torch.bfloat16, device, gen))
