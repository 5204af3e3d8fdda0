"""Backend dispatch bookkeeping: which op ran on which backend.

Every public op calls `record_call(op, backend)` once per call, after validation. `count_calls()`
lets a test (or a user) see what a model really ran, so a silent fall back to the eager reference
shows up as a count on the wrong backend. Counters and output poisoning belong to the thread that
set them up: a counter counts its own thread's calls, never another's.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter
from typing import Callable

import torch

_this_thread = threading.local()  # .counters: the calling thread's active Counters; .poison: bool


def record_call(op: str, backend: str) -> None:
    for counter in getattr(_this_thread, "counters", ()):
        counter[(op, backend)] += 1


@contextlib.contextmanager
def count_calls():
    """Yields a Counter of (op, backend) -> calls made inside the block, by the calling thread."""
    counter: Counter = Counter()
    counters = _this_thread.__dict__.setdefault("counters", [])
    counters.append(counter)
    try:
        yield counter
    finally:
        counters.remove(counter)


# Output buffers. Launchers allocate through `new_output` so tests can poison every output with NaN
# (`poisoned_outputs()`) and an element the kernel forgets to write fails the parity check.


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if getattr(_this_thread, "poison", False):
        out.fill_(float("nan"))
    return out


@contextlib.contextmanager
def poisoned_outputs(enabled: bool = True):
    """Every output the calling thread's op calls allocate inside the block starts as NaN."""
    previous = getattr(_this_thread, "poison", False)
    _this_thread.poison = enabled
    try:
        yield
    finally:
        _this_thread.poison = previous


# Custom ops. Each op's launcher (typed; allocates the outputs, launches the kernels) is registered as
# torch.ops.<namespace>.<op> with a fake implementation that only computes output metadata, so
# torch.compile(fullgraph=True) sees one opaque node per op instead of a graph break at the Triton
# launch, and CUDA-graph capture of the compiled code works as for any aten op.
# The namespace is the name the package is imported under ("aurora_kernels" when pip-installed): a
# build that installs it under another name (the HF kernels Hub imports each build under an id of its
# own, hub_build.py) registers its ops apart, so two builds live in one process.
CUSTOM_OP_NAMESPACE = __name__.partition(".")[0]
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


# Inference only: the kernels have no backward. Without an autograd formula a gradient through an op
# would be dropped without a word (eager outputs came back detached, and a compiled graph's backward
# only warned), so a model trained through the ops would silently learn wrong. Each functional op's
# formula emits `no_backward` into the backward graph instead, which raises when (and only when) a
# backward runs: the forward still works in grad mode, and torch.compile still traces it. Ops that
# write their inputs (decode_attention's cache) cannot take a formula: they refuse grad mode outright.
_LIBRARY.define("no_backward(Tensor grad, str op) -> Tensor")


def _no_backward(grad: torch.Tensor, op: str) -> torch.Tensor:
    raise RuntimeError(
        f"{op}: aurora_kernels' Triton kernels have no backward (inference only); run inference under "
        "torch.no_grad() or torch.inference_mode(), or use backend='reference' (eager PyTorch) to train"
    )


for _dispatch_key in ("CPU", "CUDA"):
    _LIBRARY.impl("no_backward", _no_backward, _dispatch_key)
torch.library.register_fake(f"{CUSTOM_OP_NAMESPACE}::no_backward", lambda grad, op: grad.new_empty(()), lib=_LIBRARY)


def _needs_grad(args) -> bool:
    return torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def _register_no_backward(name: str) -> None:
    def setup_context(ctx, inputs, output):
        ctx.input_meta = [(t.shape, t.dtype) if isinstance(t, torch.Tensor) else None for t in inputs]

    def backward(ctx, *grads):
        # one grad per output; an op that returns Tensor[] gets them as one list
        flat = [g for grad in grads for g in (grad if isinstance(grad, (list, tuple)) else (grad,))]
        signal = getattr(torch.ops, CUSTOM_OP_NAMESPACE).no_backward(next(g for g in flat if g is not None), name)
        return tuple(signal.expand(meta[0]).to(meta[1]) if meta is not None and needed else None
                     for meta, needed in zip(ctx.input_meta, ctx.needs_input_grad))  # fmt: skip

    torch.library.register_autograd(f"{CUSTOM_OP_NAMESPACE}::{name}", backward, setup_context=setup_context, lib=_LIBRARY)


def kernel_op(name: str, fake: Callable, mutates_args: tuple[str, ...] = ()):
    """Decorator: register `launch` as torch.ops.<CUSTOM_OP_NAMESPACE>.<name> with `fake`.

    The returned function calls `launch` directly in eager mode (even a plain dispatcher round trip
    costs microseconds a call, which a decode step's ~250 launches would feel) and goes through the
    registered op while torch.compile traces, and in grad mode where an input requires grad (its
    autograd formula raises if a backward runs: inference only; see `no_backward`).
    """

    def register(launch: Callable) -> Callable:
        _LIBRARY.define(name + torch.library.infer_schema(launch, mutates_args=mutates_args))
        launch_on_device = on_first_tensors_device(launch)
        for dispatch_key in ("CPU", "CUDA"):
            _LIBRARY.impl(name, launch_on_device, dispatch_key)
        torch.library.register_fake(f"{CUSTOM_OP_NAMESPACE}::{name}", fake, lib=_LIBRARY)
        if not mutates_args:
            _register_no_backward(name)
        packet = getattr(getattr(torch.ops, CUSTOM_OP_NAMESPACE), name)

        @functools.wraps(launch)
        def call(*args):
            if _needs_grad(args):
                if mutates_args:
                    raise RuntimeError(
                        f"{name}: writes {', '.join(mutates_args)} in place and has no backward (inference only): "
                        "call it under torch.no_grad() or torch.inference_mode(), or detach the inputs that require grad"
                    )
                return packet(*args)
            if torch.compiler.is_compiling():
                return packet(*args)
            return launch_on_device(*args)

        call.custom_op = packet
        return call

    return register
