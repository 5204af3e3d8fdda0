"""Backend dispatch bookkeeping: which op ran on which backend.

Every public op calls `record_call(op, backend)` once per call, after validation. `count_calls()`
lets a test (or a user) see what a model really ran, so a silent fall back to the eager reference
shows up as a count on the wrong backend.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from typing import Callable

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


# Custom ops. Each op's launcher (typed; allocates the outputs, launches the kernels) is registered as
# torch.ops.aurora_kernels.<op> with a fake implementation that only computes output metadata, so
# torch.compile(fullgraph=True) sees one opaque node per op instead of a graph break at the Triton
# launch, and CUDA-graph capture of the compiled code works as for any aten op.
CUSTOM_OP_NAMESPACE = "aurora_kernels"


def kernel_op(name: str, fake: Callable, mutates_args: tuple[str, ...] = ()):
    """Decorator: register `launch` as torch.ops.aurora_kernels.<name> with `fake`.

    The returned function calls `launch` directly in eager mode (the dispatcher's round trip for a
    Python custom op costs microseconds a call, which a decode step's ~250 launches would feel) and
    goes through the registered op while torch.compile traces.
    """

    def register(launch: Callable) -> Callable:
        op = torch.library.custom_op(f"{CUSTOM_OP_NAMESPACE}::{name}", launch, mutates_args=mutates_args)
        op.register_fake(fake)
        packet = getattr(getattr(torch.ops, CUSTOM_OP_NAMESPACE), name)

        @functools.wraps(launch)
        def call(*args):
            if torch.compiler.is_compiling():
                return packet(*args)
            return launch(*args)

        call.custom_op = packet
        return call

    return register
