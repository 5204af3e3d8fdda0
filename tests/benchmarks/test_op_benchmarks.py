"""The op benchmarks through pytest-benchmark, for users who keep their numbers in its JSON:

    pytest tests/benchmarks --benchmark-only -p no:xdist [--benchmark-json FILE]

The cases and peers are the benchmark registry's (bench/bench_<op>.py, importable from the checkout;
`bench.harness.load_cases()` lists them for a harness of one's own). With AURORA_TEST_DEVICE=cuda:
each case, ours and each peer that loads, every round one call then torch.cuda.synchronize()
(pytest-benchmark's clock is the host's, so the sync makes a round the call's whole time);
AURORA_BENCH_CASES=ends keeps each op's smallest and largest case, as `make gpu-check` runs it, and
torch.compile peers (minutes of compiling) run only with AURORA_BENCH_COMPILE=1. On a CPU the Triton
kernels would time the interpreter, not a kernel: the CPU mode times the eager references at each
op's smallest case, a few rounds, and each benchmark's extra_info says so. `make bench`'s harness
(bench/run.py) is the record of a GPU run; this suite is the same cases in pytest-benchmark's format.
"""

import os

import pytest
import torch

from bench import harness

DEVICE = torch.device(os.environ.get("AURORA_TEST_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
CPU_NOTE = "CPU mode: the eager reference only; the Triton kernels need a GPU (AURORA_TEST_DEVICE=cuda)"


def _selected() -> list[tuple[harness.Case, str]]:
    cases = harness.load_cases()
    by_op: dict[str, list[harness.Case]] = {}
    for case in cases:
        by_op.setdefault(case.op, []).append(case)
    chosen = []
    for op, op_cases in by_op.items():
        ordered = sorted(op_cases, key=lambda c: c.bytes)
        if not ON_GPU:
            chosen.append((ordered[0], harness.REFERENCE))
            continue
        picked = ordered if os.environ.get("AURORA_BENCH_CASES") != "ends" else ordered[:1] + ordered[1:][-1:]
        for case in picked:
            names = ["ours", *(p for p in case.peers if os.environ.get("AURORA_BENCH_COMPILE") == "1" or "compile" not in p)]
            chosen += [(case, name) for name in names]
    return chosen


SELECTED = _selected()


def _implementation(case: harness.Case, name: str) -> harness.Peer:
    return harness.implementations(case)[name] if name in ("ours", harness.REFERENCE) else case.peers[name]()


@pytest.mark.parametrize("case, name", SELECTED, ids=[f"{c.op}[{c.name}]-{n}" for c, n in SELECTED])
def test_op(benchmark, case, name):
    peer = _implementation(case, name)
    if peer.fn is None:
        pytest.skip(peer.missing)
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    [(args, kwargs)] = harness.prepared_inputs(peer, [case.build(DEVICE, generator)])

    def call():
        peer.fn(*args, **kwargs)
        if ON_GPU:
            torch.cuda.synchronize()

    benchmark.extra_info.update(op=case.op, shape=case.name, dtype=str(case.dtype).replace("torch.", ""),
                                implementation=name, bytes=case.bytes, flops=case.flops, device=str(DEVICE))  # fmt: skip
    if not ON_GPU:
        benchmark.extra_info["note"] = CPU_NOTE
    benchmark.pedantic(call, rounds=20 if ON_GPU else 3, warmup_rounds=3 if ON_GPU else 1)
