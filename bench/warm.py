"""Compile before timing (GPU): run every benchmark case's compiled implementations once, and the
end-to-end model's kernel and torch.compile runs once, in parallel worker processes, so that the
timed process finds them in Triton's and Inductor's on-disk caches.

Why: compiling is CPU-bound and serial within a process. The timed run is one process on an idle GPU,
and it used to compile as it went: every case's Triton kernels (ours with all of its autotune
candidates, liger's), one Inductor compile of the torch.compile peer per case, and the model's Triton
kernels and compiled decode steps. That ate the ops and model budgets of `make gpu-check`. Here the
same compiles are spread over the machine's cores; `make gpu-check` runs this beside the CUDA test
run, and stops it before any timing starts, so that no timing shares the GPU with it. Nothing here is
timed, and the autotuners' choices are made again in the timed process (they are not stored on disk).

    PYTHONPATH=. python3 -m bench.warm [--device cuda] [--ops rms_norm,...] [--no-model] [--workers N] [--deadline-s S]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import queue
import sys
import time

import torch

from aurora_kernels._cli_arguments import int_at_least, ints_at_least, subset_of
from bench import harness, model_e2e

MODEL_TASK = "model"
# each worker holds a CUDA context and a torch import (GBs of host memory): a bound, whatever the core
# count claims (os.cpu_count() in a container can be the host's)
MAX_WORKERS = 8
# the end-to-end runs that compile something: the Triton kernels at every shape the model meets (the
# eager triton run launches the same ones) and the compiled decode steps; the reference compiles nothing
MODEL_RUNS = (("triton", "cuda_graph"), *model_e2e.ONE_SEQUENCE_RUNS, *model_e2e.BATCHED_RUNS, ("triton", "compile"))
# of the GPU's memory: the full preset's bf16 weights (4.4 GB), its caches and activations at B=32
MODEL_MEMORY_FRACTION = 0.15


def usable_cores() -> int:
    """The cores this process may run on (its affinity, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_count(requested: int, tasks: list) -> int:
    """The workers a warm-up really starts: no more than its tasks, nor MAX_WORKERS."""
    return max(1, min(requested, len(tasks), MAX_WORKERS))


def warm_case(case: harness.Case, device: torch.device) -> list[str]:
    """Every implementation of `case` that compiles (all but the eager reference) called once on one
    input set built as the timed run builds them; returns the failures (the timed run reports them)."""
    torch._dynamo.reset()  # as the timed run does per case: the peer is compiled afresh, so its graph is cached
    inputs = [case.build(device, torch.Generator(device=device).manual_seed(0))]
    failures = []
    for name, peer in harness.implementations(case).items():
        if name == "eager" or peer.fn is None:
            continue
        try:
            [(args, kwargs)] = harness.prepared_inputs(peer, inputs)
            peer.fn(*args, **kwargs)
        except Exception as exc:
            failures.append(f"{name}: {harness.error_text(exc)}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return failures


def warm_model(device: torch.device, **overrides) -> list[str]:
    """bench.model_e2e's runs that compile, untimed, in the timed run's order (`overrides` let the CPU
    tests use the tiny preset)."""

    torch._dynamo.reset()
    rows = model_e2e.run(device, {"copy_bandwidth": harness.H100_COPY_BANDWIDTH}, math.inf, runs=MODEL_RUNS,
                         timed=False, **overrides)  # fmt: skip
    return [
        f"{r['compressor']} B={model_e2e.batch_label(r)} {r['backend']} {r['decode']}: {r['error']}" for r in rows if "error" in r
    ]


def _worker(device_name: str, memory_fraction: float, tasks, results) -> None:
    import torch._inductor.config

    # one compile at a time per worker: the workers already fill the cores, and a pool of compile
    # processes in each of them would only compete for memory
    torch._inductor.config.compile_threads = 1
    device = torch.device(device_name)
    cases = harness.load_cases()
    while (task := tasks.get()) is not None:
        start = time.time()
        try:
            if device.type == "cuda":
                # the GPU is shared with the CUDA test run: a case too big for this share fails here
                # (logged; the timed run compiles it), never a test; the model needs more
                share = max(memory_fraction, MODEL_MEMORY_FRACTION) if task == MODEL_TASK else memory_fraction
                torch.cuda.set_per_process_memory_fraction(
                    share
                )  # the current device: torch 2.11 refuses a device without an index
            failures = warm_model(device) if task == MODEL_TASK else warm_case(cases[task], device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as exc:
            failures = [harness.error_text(exc)]
        results.put((task, time.time() - start, failures))


def describe(task, cases: list[harness.Case]) -> str:
    if task == MODEL_TASK:
        return "model end to end"
    case = cases[task]
    return f"{case.op} [{case.name}] {str(case.dtype).replace('torch.', '')}"


def warm_up(tasks: list, device_name: str, workers: int, deadline_s: float, memory_fraction: float = 0.5,
            log=print) -> list[tuple]:  # fmt: skip
    """Run `tasks` (MODEL_TASK or indices into harness.load_cases()) on `workers` spawned processes until
    all are done or `deadline_s` has passed; then the workers are stopped (what they compiled stays
    cached). The workers together use at most `memory_fraction` of the GPU's memory (the model task
    a little more). Returns (task, seconds, failures) for each task that finished."""
    if not tasks:
        return []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    task_queue, results = context.Queue(), context.Queue()
    workers = worker_count(workers, tasks)
    for task in [*tasks, *[None] * workers]:
        task_queue.put(task)
    worker_args = (device_name, memory_fraction / workers, task_queue, results)
    processes = [context.Process(target=_worker, args=worker_args) for _ in range(workers)]
    for process in processes:
        process.start()
    cases = harness.load_cases()
    finished, end = [], time.time() + deadline_s
    while len(finished) < len(tasks) and time.time() < end:
        try:
            item = results.get(timeout=min(1.0, max(end - time.time(), 0.01)))
        except queue.Empty:
            if not any(p.is_alive() for p in processes) and results.empty():
                log("every worker has exited: nothing more will come")  # a crash, say
                break
            continue
        finished.append(item)
        task, seconds, failures = item
        log(f"{describe(task, cases)}: {seconds:.1f} s" + (f"; failed: {'; '.join(failures)}" if failures else ", compiled"))
    if len(finished) < len(tasks) and time.time() >= end:
        log(f"deadline of {deadline_s:.0f} s reached: stopping the workers")
    for process in processes:
        if process.is_alive():
            process.terminate()
        process.join(10)
    return finished


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--ops", type=subset_of(harness.known_ops(), "ops"), help="comma-separated ops whose cases to warm (default: all)"
    )
    parser.add_argument("--cases", type=ints_at_least(0), help="comma-separated indices into the case list instead of --ops")
    parser.add_argument("--no-ops", action="store_true", help="no op cases, only the model")
    parser.add_argument("--no-model", action="store_true", help="no end-to-end model")
    parser.add_argument("--workers", type=int_at_least(1), default=usable_cores(), help=f"at most {MAX_WORKERS}")
    parser.add_argument("--deadline-s", type=float, default=300.0)
    parser.add_argument(
        "--memory-fraction",
        type=float,
        default=0.5,
        help="of the GPU's memory, for all workers together (the rest is left to a test run beside)",
    )
    args = parser.parse_args(argv)
    if args.cases:
        count = len(harness.load_cases())
        if max(args.cases) >= count:
            parser.error(f"--cases: expected indices below {count} (the case list's length), got {max(args.cases)}")
        tasks = ([] if args.no_model else [MODEL_TASK]) + list(args.cases)
    else:
        only = set() if args.no_ops else set(args.ops) if args.ops else None
        tasks = timed_run_tasks(only, model=not args.no_model)
    run_and_report(tasks, args.device, args.workers, args.deadline_s, args.memory_fraction)
    return 0


def timed_run_tasks(only: set[str] | None = None, model: bool = True) -> list:
    """The tasks of a timed run: the model first (its one task is the longest), then the cases of
    the ops in `only` (all if None) in the timed run's order, so a deadline leaves warm the cases it
    times first."""
    cases = harness.load_cases()
    index = {id(case): i for i, case in enumerate(cases)}
    chosen = [c for c in cases if only is None or c.op in only]
    return ([MODEL_TASK] if model else []) + [index[id(c)] for c in harness.interleave_ops(chosen)]


def run_and_report(tasks: list, device_name: str, workers: int, deadline_s: float, memory_fraction: float) -> str:
    """warm_up with a line per task and a closing summary (returned too) on stdout."""
    start = time.time()
    finished = warm_up(tasks, device_name, workers, deadline_s, memory_fraction, log=lambda line: print(line, flush=True))
    failed = sum(bool(failures) for _, _, failures in finished)
    workers = worker_count(workers, tasks)
    summary = (f"warm-up: {len(finished)} of {len(tasks)} tasks in {time.time() - start:.0f} s on {workers} "
               f"worker{'s' if workers != 1 else ''}{f', {failed} with failures' if failed else ''}"
               f"{f', {len(tasks) - len(finished)} not finished' if len(finished) < len(tasks) else ''}")  # fmt: skip
    print(summary, flush=True)
    return summary


if __name__ == "__main__":
    sys.exit(main())
