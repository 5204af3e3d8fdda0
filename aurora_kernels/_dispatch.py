"""Backend dispatch bookkeeping: which op ran on which backend.

Every public op calls `record_call(op, backend)` once per call, after validation. `count_calls()`
lets a test (or a user) see what a model really ran, so a silent fall back to the eager reference
shows up as a count on the wrong backend.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch

_active_counters: list[Counter] = []


def record_call(op: str, backend: str) -> None:
    for counter in _active_counters:
        counter[(op, backend)] += 1


@contextlib.contextmanager
def count_calls():
    """Yields a Counter of (op, backend) -> calls made inside the block."""
    counter: Counter = Counter()
    _active_counters.append(counter)
    try:
        yield counter
    finally:
        _active_counters.remove(counter)


# Output buffers. Launchers allocate through `new_output` so tests can poison every output with NaN
# (`poisoned_outputs()`) and an element the kernel forgets to write fails the parity check.
_poison_outputs = False


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison_outputs:
        out.fill_(float("nan"))
    return out


@contextlib.contextmanager
def poisoned_outputs(enabled: bool = True):
    global _poison_outputs
    previous = _poison_outputs
    _poison_outputs = enabled
    try:
        yield
    finally:
        _poison_outputs = previous
