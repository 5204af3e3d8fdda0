"""The launchers' host-side layout helpers (ops/_layout.py): the fast paths agree with the general ones."""

import random

import torch
import triton

from aurora_kernels.ops._layout import cdiv, collapse_rows, collapse_strided_rows, pow2_at_least


def test_contiguous_fast_path_describes_rows_as_the_general_path_does():
    """collapse_rows answers a contiguous tensor without walking its strides; a contiguous tensor may
    still carry any stride on a dim of size 1 (a view's unsqueeze, as_strided), which must not leak."""
    rng = random.Random(0)
    checked = 0
    for _ in range(3000):
        t = torch.empty([rng.choice([1, 1, 2, 3, 5]) for _ in range(rng.randint(1, 5))])
        if rng.random() < 0.5:
            t = t.unsqueeze(rng.randint(0, t.ndim))
        if rng.random() < 0.5:
            strides = [rng.choice([1, 7, 999]) if size == 1 else stride for size, stride in zip(t.shape, t.stride())]
            t = t.as_strided(t.shape, strides)
        for trailing in (1, 2)[: t.ndim]:
            assert t.is_contiguous()
            assert collapse_rows(t, trailing) == (t, collapse_strided_rows(t, trailing)), (t.shape, t.stride())
            checked += 1
    assert checked > 3000


def test_host_arithmetic_matches_triton():
    for n in range(0, 4100):
        assert pow2_at_least(n) == triton.next_power_of_2(max(n, 1))
        assert pow2_at_least(n, 16) == max(triton.next_power_of_2(max(n, 1)), 16)
        for divisor in (1, 3, 16, 64):
            assert cdiv(n, divisor) == triton.cdiv(n, divisor)


def test_rows_that_need_three_groups_are_copied_once():
    """Two leading dims transposed over a third need three strided groups, which no RowLayout holds:
    collapse_rows hands back a contiguous copy and its layout (and any layout of two groups, the
    tensor itself)."""
    t = torch.randn(3, 2, 5, 16).transpose(0, 1)  # [2, 3, 5, 16], strides (80, 160, 16, 1)
    assert collapse_strided_rows(t) is None
    copy, layout = collapse_rows(t)
    assert copy.is_contiguous() and torch.equal(copy, t) and copy.data_ptr() != t.data_ptr()
    assert layout == (30, 16, 1, 0)
    sliced = torch.randn(4, 6, 32)[:, 1:5]  # rows of a slice: two groups, no copy
    assert collapse_rows(sliced)[0] is sliced
    empty = torch.empty(0, 3, 5, 16).transpose(0, 1)
    assert collapse_rows(empty)[1].num_rows == 0
