"""The autotuned launchers of the compute-bound kernels (attention, token_mlp_compress).

With autotuning off (`autotuning(False)` for the calling thread inside a block,
`set_autotuning(False)` for the process; AURORA_AUTOTUNE=0 in the environment makes off the process
default, which is how the GPU test run in `make gpu-check` starts its pytest), a key's first call
takes its kernel's default config (each list's first candidate) without timing anything: one compile
instead of several and no device sync. The tuner keeps what a key got, so a key first seen with
autotuning off keeps the default config in this process. Benchmarks and users keep the autotuner.
Under the Triton interpreter nothing is autotuned: the launchers pick large blocks themselves.

A key's first call times its candidates, and timing synchronizes the device: inside a CUDA graph
capture that ends the capture with an error from deep inside Triton. So the launchers refuse it
there with an error that says what to do (one call of those shapes before the capture, as
`AuroraEdgeV.generate` makes its first decode step eagerly); a key already tuned launches as usual.
"""

from __future__ import annotations

import os
import threading

import torch
import triton

from aurora_kernels._settings import ThreadSetting, a_bool


def _triton_interprets() -> bool:
    """Whether Triton's own @jit functions (tl.standard's) were built for its interpreter, which
    happens only where TRITON_INTERPRET=1 was set before triton was imported."""
    import triton.language as tl

    return type(tl.standard.cdiv).__name__ == "InterpretedFunction"


# The kernels run under the interpreter only if it was on before triton and this package were
# imported: both decorate their kernels at import.
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1" and _triton_interprets()


def _autotune_from_environment() -> bool:
    value = os.environ.get("AURORA_AUTOTUNE", "1")
    if value not in ("0", "1"):  # "off" or "false" must not leave it on without a word
        raise ValueError(f"AURORA_AUTOTUNE: expected 0 or 1 in the environment, got {value!r}")
    return value == "1"


_AUTOTUNING = ThreadSetting(_autotune_from_environment(), a_bool)


def set_autotuning(enabled: bool) -> None:
    """Autotune new keys (True) or give them their kernel's default config (False): the process
    default (a thread inside `autotuning(...)` keeps its own setting)."""
    _AUTOTUNING.set_default(enabled)


def autotuning_enabled() -> bool:
    """The setting in force in the calling thread."""
    return _AUTOTUNING.get()


def autotuning(enabled: bool):
    """Autotuning on or off for the calling thread only, inside the block."""
    return _AUTOTUNING.within(enabled)


def _default_config_unless_autotuning(configs, named_args, **kwargs):
    """The autotuners' early prune: every candidate, or with autotuning off the default alone."""
    return configs if autotuning_enabled() else configs[:1]


def power_of_4_class(value: int, smallest: int, largest: int) -> int:
    """An autotune size class: the smallest power-of-4 multiple of `smallest` that holds `value`, at
    most `largest`. A kernel takes it as an argument it does not use, named in its autotuner's key:
    sizes whose best tiles differ (by how many programs fill the GPU) get tuned apart, while a new
    length or batch inside a class reuses the class's config instead of tuning again (a serving loop
    sees a new prompt length at almost every call)."""
    size_class = smallest
    while size_class < value and size_class < largest:
        size_class *= 4
    return size_class


# "kernel[kind]" -> its triton Autotuner, for `chosen_configs`
_AUTOTUNERS: dict = {}


def _triton_benchmarker():
    return triton.runtime.driver.active.get_benchmarker()


def benchmark_outside_capture(kernel_name: str):
    """The autotuner's benchmark for `kernel_name`'s launchers: Triton's own, refused (before it
    touches the device) while the current stream is capturing a CUDA graph."""

    def benchmark(kernel_call, quantiles):
        if not autotuning_enabled():  # one config left (Triton 3.6 still times it): nothing to compare
            return [0.0] * len(quantiles)
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                f"{kernel_name}: these shapes (a new autotune key) are first seen inside a CUDA graph capture, "
                "where timing the candidate configs would end the capture; call the op once with the same "
                "shapes before capturing (or run it inside `aurora_kernels.autotuning(False)` for each kernel's "
                "default config)"
            )
        return _triton_benchmarker()(kernel_call, quantiles=quantiles)

    return benchmark


class OneCallAtATime:
    """`launcher[grid](*args)` for a triton Autotuner, one call at a time. The Autotuner keeps a
    call's arguments and its pick on itself while it runs (nargs, best_config), and a new key's
    benchmark times its candidates on the device: two threads calling at once could launch with the
    other's arguments or time each other's kernels. The lock costs a fraction of a microsecond a
    call, next to the launch's tens."""

    def __init__(self, autotuner):
        self.autotuner = autotuner
        self._lock = threading.Lock()

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with self._lock:
                return self.autotuner[grid](*args, **kwargs)

        return launch


def _early_prune(kind: str, fits):
    """An autotuner's early prune: the candidates that `fits` lets take the call (every one without
    it), then `_default_config_unless_autotuning`."""

    def prune(configs, named_args, **kwargs):
        if fits is not None:
            configs = [c for c in configs if fits(kind, c, {**named_args, **kwargs})]
        return _default_config_unless_autotuning(configs, named_args)

    return prune


def autotuned_launchers(kernel, candidates_by_kind: dict, to_config, key: list[str], fits=None) -> dict:
    """kind -> triton.autotune(kernel) over `to_config(kind, candidate)` for each candidate of that kind,
    called one at a time ({} under the interpreter). fits(kind, triton.Config, the call's arguments by
    name): whether a candidate may take a call, where one may not take them all; what it reads of
    the call must be in `key` (a tensor's dtype always is), so that a tuned key never meets a call
    it was not pruned for."""
    if INTERPRETER:
        return {}
    tuners = {
        kind: triton.autotune(
            configs=[to_config(kind, c) for c in candidates],
            key=key,
            prune_configs_by={"early_config_prune": _early_prune(kind, fits)},
            do_bench=benchmark_outside_capture(kernel.__name__),
        )(kernel)  # fmt: skip
        for kind, candidates in candidates_by_kind.items()
    }
    _AUTOTUNERS.update({f"{kernel.__name__}[{kind}]": tuner for kind, tuner in tuners.items()})
    return {kind: OneCallAtATime(tuner) for kind, tuner in tuners.items()}


def chosen_configs() -> dict[str, dict[str, str]]:
    """What each autotuner has picked in this process: "kernel[kind]" -> {its key (the key arguments'
    values and the tensors' dtypes): the config}. A benchmark run records it beside its timings: a
    key holds no exact lengths, so the first call of a key decides for the shapes after it."""
    return {
        name: {", ".join(map(str, key)): str(config) for key, config in tuner.cache.items()}
        for name, tuner in _AUTOTUNERS.items()
        if tuner.cache
    }
