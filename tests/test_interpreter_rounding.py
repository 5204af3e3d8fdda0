"""The test suite's interpreter rounds fp32 -> bf16 as the GPU does (to nearest even, torch's
rounding), where Triton's interpreter alone truncates (aurora_kernels.testing)."""

import pytest
import torch
import triton
import triton.language as tl

from tests.conftest import TEST_DEVICE

pytestmark = pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the interpreter's rounding (a GPU rounds in hardware)")


@triton.jit
def _to_bf16_kernel(x_ptr, out_ptr, truncated_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n)
    tl.store(out_ptr + i, x.to(tl.bfloat16), mask=i < n)
    tl.store(truncated_ptr + i, x.to(tl.bfloat16, fp_downcast_rounding="rtz"), mask=i < n)


def test_fp32_to_bf16_rounds_to_nearest_even_bit_for_bit_as_torch():
    special = [float("nan"), float("inf"), -float("inf"), 3.3895e38, 1e-40, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8]
    x = torch.cat([torch.tensor(special), torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3])
    out, truncated = (torch.empty(x.shape, dtype=torch.bfloat16) for _ in range(2))
    _to_bf16_kernel[(1,)](x, out, truncated, x.numel(), BLOCK=1024)
    assert torch.equal(out.view(torch.int16), x.bfloat16().view(torch.int16))
    # a cast that asks for truncation keeps it: toward zero, never larger in magnitude (checked on the
    # normal values: the interpreter's own conversion mishandles subnormals)
    normal = slice(len(special), None)
    assert (truncated[normal].float().abs() <= x[normal].abs()).all() and not torch.equal(truncated, out)
