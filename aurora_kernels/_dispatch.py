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
# Registered through a plain Library (schema inferred from the launcher's annotations, the launcher as
# the CPU and CUDA kernel) rather than torch.library.custom_op: the graph Inductor generates calls
# every op through the dispatcher, and custom_op's Python wrapper costs tens of microseconds a call
# there (measured on a CPU: 20-45 us against 0-5 us), which a compiled decode step pays ~110 times.
_LIBRARY = torch.library.Library(CUSTOM_OP_NAMESPACE, "DEF")


def on_first_tensors_device(launch: Callable) -> Callable:
    """launch(*args) with args[0]'s CUDA device current. Triton launches on the current device (and
    its current stream), whatever device the tensors are on: inputs on cuda:1 while cuda:0 is current
    would be handed to a kernel on cuda:0. Switching costs microseconds, so it is done only when the
    devices differ."""

    @functools.wraps(launch)
    def launch_on_device(*args):
        device = args[0].device
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            with torch.cuda.device(device):
                return launch(*args)
        return launch(*args)

    return launch_on_device


def kernel_op(name: str, fake: Callable, mutates_args: tuple[str, ...] = ()):
    """Decorator: register `launch` as torch.ops.aurora_kernels.<name> with `fake`.

    The returned function calls `launch` directly in eager mode (even a plain dispatcher round trip
    costs microseconds a call, which a decode step's ~250 launches would feel) and goes through the
    registered op while torch.compile traces. The ops have no autograd formula: inference only.
    """

    def register(launch: Callable) -> Callable:
        _LIBRARY.define(name + torch.library.infer_schema(launch, mutates_args=mutates_args))
        launch_on_device = on_first_tensors_device(launch)
        for dispatch_key in ("CPU", "CUDA"):
            _LIBRARY.impl(name, launch_on_device, dispatch_key)
        torch.library.register_fake(f"{CUSTOM_OP_NAMESPACE}::{name}", fake, lib=_LIBRARY)
        packet = getattr(getattr(torch.ops, CUSTOM_OP_NAMESPACE), name)

        @functools.wraps(launch)
        def call(*args):
            if torch.compiler.is_compiling():
                return packet(*args)
            return launch_on_device(*args)

        call.custom_op = packet
        return call

    return register
