"""The test suite's two changes to Triton's interpreter (aurora_kernels.testing): it rounds fp32 ->
bf16 as the GPU does (to nearest even, torch's rounding), where the interpreter alone truncates; and
it patches the language once a launch, where the interpreter patched it again in every call of a
helper."""

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime import interpreter

from tests.conftest import TEST_DEVICE

pytestmark = pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the interpreter's changes (a GPU runs no interpreter)")


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


@triton.jit
def _add_one(x):
    return x + 1


@triton.jit
def _add_three_in_helpers_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i)
    for _ in tl.static_range(3):
        x = _add_one(x)
    tl.store(out_ptr + i, x)


@triton.jit
def _add_three_kernel(x_ptr, out_ptr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + i, tl.load(x_ptr + i) + 3)


@triton.jit
def _failing_kernel(x_ptr, BLOCK: tl.constexpr):
    tl.static_assert(BLOCK < 0, "refused")


def test_the_language_is_patched_once_a_launch_and_restored_after_it(monkeypatch):
    """Four programs calling a helper three times each patch the language as often as a kernel with no
    helper (the interpreter alone: 13 times as often), compute the same, and leave the builtins as
    they were, after a launch that raised too."""
    patches = []
    patch_builtin = interpreter._patch_builtin
    monkeypatch.setattr(interpreter, "_patch_builtin", lambda *args: patches.append(1) or patch_builtin(*args))
    load = tl.load
    x = torch.randint(-1000, 1000, (64,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    counts = []
    for kernel in (_add_three_kernel, _add_three_in_helpers_kernel):
        out = torch.full_like(x, -(2**31))
        patches.clear()
        kernel[(4,)](x, out, BLOCK=16)
        counts.append(len(patches))
        assert torch.equal(out, x + 3), kernel
        assert tl.load is load
    assert counts[1] == counts[0] > 0
    with pytest.raises(Exception, match="refused"):
        _failing_kernel[(2,)](x, BLOCK=16)
    assert tl.load is load
    patches.clear()
    _add_three_in_helpers_kernel[(4,)](x, out, BLOCK=16)
    assert len(patches) == counts[0]
