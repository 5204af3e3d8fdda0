"""The autotuned launchers inside CUDA graph capture: a key's first call times its candidates, which
would end a capture; it is refused with an error that says what to do, and a tuned key launches."""

import threading
import time

import pytest
import torch
import triton
import triton.language as tl

from aurora_kernels.ops import _autotune
from tests.catalogue import cuda_only


@triton.jit
def _scale_kernel(x_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * scale, mask=mask)


def _scale_launchers(monkeypatch):
    """A two-candidate launcher built as the ops build theirs, outside the interpreter, with
    autotuning on whatever the environment says (the GPU test run sets AURORA_AUTOTUNE=0)."""
    monkeypatch.setattr(_autotune, "INTERPRETER", False)
    monkeypatch.setattr(_autotune._AUTOTUNING, "_default", True)
    monkeypatch.setattr(_autotune, "_AUTOTUNERS", {})
    return _autotune.autotuned_launchers(
        _scale_kernel, {"any": (64, 128)}, lambda kind, block: triton.Config({"BLOCK": block}, num_warps=1), key=["n"]
    )


def test_the_benchmark_is_refused_while_capturing(monkeypatch):
    timed = []
    monkeypatch.setattr(_autotune, "_triton_benchmarker", lambda: lambda call, quantiles: timed.append(quantiles) or [1.0])
    benchmark = _autotune.benchmark_outside_capture("_fused_linear_kernel")

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match=r"_fused_linear_kernel: .* inside a CUDA graph capture.*call the op once"):
        benchmark(lambda: None, quantiles=(0.5,))
    assert timed == []

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert benchmark(lambda: None, quantiles=(0.5,)) == [1.0]
    assert timed == [(0.5,)]


def test_every_autotuned_launcher_benchmarks_through_the_guard(monkeypatch):
    tuner = _scale_launchers(monkeypatch)["any"].autotuner
    assert len(tuner.configs) == 2
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="_scale_kernel: .* inside a CUDA graph capture"):
        tuner.do_bench(lambda: None, quantiles=(0.5,))


def test_autotuning_off_takes_the_default_config_and_times_nothing(monkeypatch):
    tuner = _scale_launchers(monkeypatch)["any"].autotuner
    tuner.nargs = {}  # what a call sets before pruning
    monkeypatch.setattr(_autotune, "_triton_benchmarker", lambda: pytest.fail("timed with autotuning off"))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)  # even inside a capture
    with _autotune.autotuning(False):
        assert [c.kwargs["BLOCK"] for c in tuner.prune_configs({})] == [64]
        assert tuner.do_bench(lambda: None, quantiles=(0.5, 0.2, 0.8)) == [0.0, 0.0, 0.0]
        seen = []
        other = threading.Thread(target=lambda: seen.append(_autotune.autotuning_enabled()))
        other.start()
        other.join()
    assert seen == [True]  # another thread kept the process default
    assert [c.kwargs["BLOCK"] for c in tuner.prune_configs({})] == [64, 128]
    _autotune.set_autotuning(False)
    try:
        assert not _autotune.autotuning_enabled()
        with _autotune.autotuning(True):
            assert _autotune.autotuning_enabled()
    finally:
        _autotune.set_autotuning(True)


def test_autotuned_launchers_take_one_call_at_a_time():
    """Two threads calling one launcher: the second waits for the first (an Autotuner keeps a call's
    arguments on itself, and a new key's benchmark must not time the other thread's kernels)."""
    active, most, gate = [0], [0], threading.Barrier(2)

    class SlowTuner:
        def __getitem__(self, grid):
            def run(*args):
                active[0] += 1
                most[0] = max(most[0], active[0])
                time.sleep(0.05)
                active[0] -= 1
                return args

            return run

    launcher = _autotune.OneCallAtATime(SlowTuner())

    def call(i):
        gate.wait(10)
        assert launcher[(1,)](i) == (i,)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 1


@cuda_only
def test_new_keys_tuned_from_two_threads_at_once(monkeypatch, device, gen):
    launchers = _scale_launchers(monkeypatch)
    inputs = [torch.randn(n, device=device, generator=gen) for n in (1000, 3000)]
    outs = [torch.full_like(x, float("nan")) for x in inputs]
    gate = threading.Barrier(2)

    def call(x, out):
        gate.wait(10)
        launchers["any"][lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, out, x.numel(), 3.0)

    threads = [threading.Thread(target=call, args=pair) for pair in zip(inputs, outs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    torch.cuda.synchronize()
    for x, out in zip(inputs, outs):
        torch.testing.assert_close(out, x * 3.0)


@cuda_only
def test_a_new_key_inside_a_capture_is_refused_and_a_tuned_one_replays(monkeypatch, device, gen):
    launcher = _scale_launchers(monkeypatch)["any"]
    x = torch.randn(1000, device=device, generator=gen)
    out = torch.full_like(x, float("nan"))

    def call():
        launcher[lambda meta: (triton.cdiv(x.numel(), meta["BLOCK"]),)](x, out, x.numel(), 3.0)

    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="before capturing"):
        with torch.cuda.graph(graph):
            call()

    call()  # tunes the key outside the capture
    out.fill_(float("nan"))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, x * 3.0)
