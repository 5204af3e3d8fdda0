"""`make gpu-check`: on a GPU machine (torch and triton preinstalled, nothing installable), run the
whole test suite on CUDA, then every benchmark, write everything under --results-dir, and print a
one-screen summary last. Budgets keep the whole run under the device's 10 minutes a command: tests
270 s at most (with AURORA_AUTOTUNE=0: each kernel's default config), op benchmarks what the tests
left of the run's 540 s (--run-budget) less 120 s kept for the model, 60 s for the sweep and 45 s
for pytest-benchmark, 150 s at least (cases interleaved over the ops, the rest listed as skipped),
then the fused_linear tile sweep (bench.sweep_fused_linear at B=1: every GEMV tile with cold weights,
against the autotuned op and cuBLAS), then tests/benchmarks through pytest-benchmark (each op's
smallest and largest case; its JSON kept with the record; the wheel comes from `make gpu-wheels`),
then transformers' Qwen2 at the LLM's shapes with and without patch_qwen2 (bench.transformers_e2e,
90 s), then the end-to-end model all that is left, 120 s at least. While the tests run, bench.warm
compiles what the benchmarks will run on the cores the tests leave free, and it is stopped before
the first timing, so the budgets go to timing rather than to compiling. `--phases tests`,
`--phases ops,sweep`, `--phases model` split it over several device calls when a run needs more;
`--ops`, `--model-runs`, `--model-batches` and `--model-compressors` narrow a call to the rows that
decide one question.

    PYTHONPATH=. python3 -m bench.gpu_check [--results-dir DIR] [--archive FILE.tar.gz]
        [--ops linear,attention] [--model-runs triton:cuda_graph,triton-fused-batched:cuda_graph]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

from aurora_kernels._cli_arguments import ints_at_least, output_directory, output_file, subset_of
from bench import harness, model_e2e
from bench.warm import usable_cores

TEST_TIMEOUT_S = 270
TEST_WORKERS = min(8, usable_cores())
# the compile warm-up (bench.warm) runs beside the tests and stops itself by then (less than their cap,
# so that with the ops and model budgets the whole run stays inside a device call's 10 minutes)
WARM_UP_DEADLINE_S = 240
# the phases' time together, inside a device call's 10 minutes with room for start-up, plots and the
# archive: the op benchmarks get what the tests and the model's budget leave, 150 s at least
RUN_BUDGET_S = 540
MIN_OPS_BUDGET_S = 150.0
# the model's share, reserved before the op benchmarks start; it then gets all the run has left
MIN_MODEL_BUDGET_S = 120.0
# the fused_linear tile sweep (bench.sweep_fused_linear, B=1, cold weights), reserved likewise
SWEEP_BUDGET_S = 60.0
# tests/benchmarks through pytest-benchmark (each op's ends, no torch.compile peers), reserved likewise
PYTEST_BENCHMARK_BUDGET_S = 45.0
# transformers' Qwen2 on SDPA, flash-attn and patch_qwen2 (bench.transformers_e2e), reserved likewise
TRANSFORMERS_BUDGET_S = 90.0


def _child_env(**extra) -> dict:
    """The environment of the test run and the warm-up: the tree first on the path, then whatever this
    run was given (carried wheels installed into a folder, say)."""
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, **extra)
    env.pop("TRITON_INTERPRET", None)
    return env


def start_warm_up(
    results_dir: str, phases: tuple[str, ...], beside_tests: bool, ops: tuple[str, ...] | None = None
) -> subprocess.Popen:
    """bench.warm in the background (its own process group), logging to warm-up.log: the compiles of
    the ops and model phases done ahead (of `ops` alone, if given), on the cores the tests leave free."""
    cores = usable_cores()
    workers = max(1, cores - TEST_WORKERS) if beside_tests else cores  # bench.warm caps it
    cmd = [sys.executable, "-m", "bench.warm", "--workers", str(workers), "--deadline-s", str(WARM_UP_DEADLINE_S),
           "--memory-fraction", "0.5" if beside_tests else "0.9"]  # fmt: skip
    cmd += ([f"--ops={','.join(ops)}"] if ops else []) if "ops" in phases else ["--no-ops"]
    cmd += [] if "model" in phases else ["--no-model"]
    with open(os.path.join(results_dir, "warm-up.log"), "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), start_new_session=True)


def finish_warm_up(proc: subprocess.Popen, results_dir: str, started_at: float) -> str:
    """Wait for the warm-up (it stops itself at its deadline), stop it if it overran, and return its
    summary line. No timing may start while it still uses the GPU."""
    try:
        proc.wait(timeout=max(1.0, WARM_UP_DEADLINE_S + 20 - (time.time() - started_at)))
    except subprocess.TimeoutExpired:
        pass
    try:  # its whole group, a worker that outlived it too
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # all of it gone already
        pass
    proc.wait()
    with open(os.path.join(results_dir, "warm-up.log")) as f:
        lines = [line.strip() for line in f if line.startswith("warm-up:")]
    return lines[-1] if lines else f"warm-up: no summary (exit {proc.returncode}); see warm-up.log"


OUTCOME = re.compile(r"\b(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def summarise_tests(output: str, stopped_after_s: float | None = None) -> str:
    """pytest's closing line; for a run stopped at its time limit (no closing line), the outcomes its
    verbose lines reported so far, with the ids of the tests that failed."""
    if stopped_after_s is None:
        return next((line for line in reversed(output.splitlines()) if re.search(r"\b(passed|failed|error)", line)), "").strip(
            "= "
        )
    counts: dict[str, int] = {}
    failed = []
    for line in output.splitlines():
        outcome, test_id = OUTCOME.search(line), re.search(r"tests/\S+::\S+", line)
        if outcome and test_id:
            counts[outcome.group(1)] = counts.get(outcome.group(1), 0) + 1
            if outcome.group(1) in ("FAILED", "ERROR"):
                failed.append(test_id.group(0))
    so_far = ", ".join(f"{n} {outcome.lower()}" for outcome, n in counts.items()) or "no test finished"
    return f"stopped after {stopped_after_s:.0f} s: {so_far} so far" + (f"; failed: {', '.join(failed)}" if failed else "")


def run_tests(results_dir: str) -> tuple[int, str]:
    # correctness run: each kernel's default config only (no autotuning: fewer compiles, less time)
    env = _child_env(AURORA_TEST_DEVICE="cuda", AURORA_AUTOTUNE="0")
    log_path = os.path.join(results_dir, "tests-cuda.log")
    # verbose: a line per test as it ends, so a run stopped at its limit still says what passed and failed
    # tests/vllm needs vLLM's own venv (make test-vllm); tests/benchmarks is the pytest-benchmark phase
    cmd = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "tests", "--ignore=tests/vllm", "--ignore=tests/benchmarks",
           f"--junitxml={os.path.join(results_dir, 'tests-cuda.xml')}"]  # fmt: skip
    if importlib.util.find_spec("xdist") is not None:
        # Triton's compiles are CPU-bound: spread them over the machine's cores (the GPU is shared)
        cmd += ["-n", str(TEST_WORKERS)]
    with open(log_path, "w") as log:
        # its own process group: at the time limit the xdist workers are stopped with it, and none
        # is left using the GPU while the benchmarks time
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code, stopped_after = proc.wait(timeout=TEST_TIMEOUT_S), None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code, stopped_after = 124, TEST_TIMEOUT_S
    with open(log_path) as f:
        output = f.read()
    return code, summarise_tests(output, stopped_after)


def archive(results_dir: str, path: str) -> None:
    """results_dir as a .tar.gz at `path`, replaced whole (never left half written under its name)."""
    partial = path + ".partial"
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(results_dir, arcname=os.path.basename(os.path.normpath(results_dir)),
                filter=lambda info: None if info.name.endswith((".tar.gz", ".partial")) else info)  # fmt: skip
    os.replace(partial, path)


def summarise(rows: list[dict]) -> list[str]:
    """A line per op: the best peer over ours (eager clock, and the device clock where both were
    replayed), cases where a peer wins listed first; then our variants' device times."""
    from bench.harness import speedups as row_speedups

    losses = [
        f"{r['op']} [{r['shape']}] {clock} {x:.2f}x" for r in rows for clock, x in row_speedups(r["impls"]).items() if x < 1
    ]
    lines = [f"  a peer beats ours: {'; '.join(losses)}"] if losses else []
    by_op: dict[str, list[dict]] = {}
    for row in rows:
        by_op.setdefault(row["op"], []).append(row)
    for op, op_rows in by_op.items():
        timed = [r for r in op_rows if "ms" in r["impls"].get("ours", {})]
        if not timed:
            lines.append(f"  {op:20s} ours failed in all {len(op_rows)} cases: see results.md")
            continue
        speedups = [row_speedups(r["impls"])["ms"] for r in timed if "ms" in row_speedups(r["impls"])]
        device = [row_speedups(r["impls"])["graph_ms"] for r in timed if "graph_ms" in row_speedups(r["impls"])]
        floor_fracs = [r["impls"]["ours"]["frac_floor"] for r in timed]
        graph_fracs = [r["impls"]["ours"]["graph_frac_floor"] for r in timed if "graph_frac_floor" in r["impls"]["ours"]]
        graphed = f"; graph replay {100 * min(graph_fracs):.0f}..{100 * max(graph_fracs):.0f}%" if graph_fracs else ""
        host = [r["impls"]["ours"]["host_us"] for r in timed if "host_us" in r["impls"]["ours"]]
        host_cost = f"; host {min(host):.0f}..{max(host):.0f} us a call" if host else ""
        lines.append(
            f"  {op:20s} {len(timed)} cases; vs best peer {min(speedups, default=0):.2f}x..{max(speedups, default=0):.2f}x"
            + (f" (device clock {min(device):.2f}x..{max(device):.2f}x)" if device else "")
            + "; "
            f"% of roofline floor {100 * min(floor_fracs):.0f}..{100 * max(floor_fracs):.0f}%{graphed}{host_cost}"
        )
    return lines + variant_lines(rows)


def variant_lines(rows: list[dict]) -> list[str]:
    """A line per case that times our own variants (a fixed split count, the unfused pair) replayed from a CUDA graph: each one's device time beside ours, the data for
    choosing the default. Eager times of these small cases measure the host."""
    lines = []
    for r in rows:
        graphed = {name: impl["graph_ms"] for name, impl in r["impls"].items() if name.startswith("ours") and "graph_ms" in impl}
        if len(graphed) > 1:
            cells = ", ".join(f"{name} {ms * 1e3:.1f}" for name, ms in graphed.items())
            lines.append(f"  {r['op']} [{r['shape']}] graph replay us: {cells}; fastest: {min(graphed, key=graphed.get)}")
    return lines


def summarise_model(results_dir: str) -> list[str]:
    """Per compressor and batch: decode tokens/s of each triton mode over the eager reference, and how
    close the CUDA-graphed step comes to its floor."""
    import json

    from bench.model_e2e import (
        BATCHED_RUNS,
        ONE_SEQUENCE_RUNS,
        REQUEST_KEYS,
        batch_label,
        compressor_speedups,
        kernel_notes,
        launches_per_step,  # fmt: skip
        prefill_line,
    )

    path = os.path.join(results_dir, "model-e2e.json")
    if not os.path.exists(path):
        return ["  model end to end: no results"]
    with open(path) as f:
        rows = json.load(f)
    lines = []
    group_of = lambda r: (r["compressor"], r["batch"], r.get("prompt", "ragged"))  # noqa: E731
    for key in sorted({group_of(r) for r in rows}):
        group = {(r["backend"], r["decode"]): r for r in rows if group_of(r) == key}
        base = group.get(("reference", "eager"), {}).get("tokens_per_s")
        cells = []
        # the runs beside the defaults (without PDL; the fused runs, B=1 and B>1), where the record has them
        others = [run for run in (("triton-no-pdl", "cuda_graph"), ("triton-encoder-graph", "cuda_graph"), *ONE_SEQUENCE_RUNS,
                                  *BATCHED_RUNS) if run in group]  # fmt: skip
        for backend, mode in [("triton", "eager"), ("triton", "compile"), ("triton", "cuda_graph"), *others]:
            r = group.get((backend, mode), {})
            label = mode if backend == "triton" else f"{mode} {backend}"
            if "tokens_per_s" in r:
                ratio = f" ({r['tokens_per_s'] / base:.1f}x ref)" if base else ""
                cells.append(f"{label} {r['tokens_per_s']:.0f} tok/s{ratio}, {r['frac_floor']:.0%} floor")
            else:
                cells.append(f"{label} {r.get('skipped') or r.get('error') or 'missing'}")
        label = batch_label({"batch": key[1], "prompt": key[2]})
        lines.append(f"  model {key[0]:4s} B={label:>2s}: " + "; ".join(cells))
        for run in (("triton", "cuda_graph"), *ONE_SEQUENCE_RUNS, *BATCHED_RUNS):  # request times against their floors
            r = group.get(run, {})
            if "tpot_ms" in r:
                times = ", ".join(
                    f"{k} {r[f'{k}_ms']:.2f} ({r[f'{k}_ms'] / r[f'{k}_floor_ms']:.2f}x floor)" for k in REQUEST_KEYS
                )
                lines.append(f"    requests, {run[0]} {run[1]}, median of {r['requests']}: {times}")
        prefill = [f"{backend} {mode} {group[(backend, mode)]['prefill_ms_median']:.1f}" for backend, mode in
                   (("triton", "cuda_graph"), ("triton-encoder-graph", "cuda_graph"))
                   if "prefill_ms_median" in group.get((backend, mode), {})]  # fmt: skip
        if prefill:
            lines.append("    prefill ms (median of its repeats): " + ", ".join(prefill))
    vit_path = os.path.join(results_dir, "model-vit.json")
    if os.path.exists(vit_path):
        with open(vit_path) as f:
            vit = json.load(f)
        lines.append("  ViT alone: " + ", ".join(f"B={v['batch']} {v['images_per_s']:.0f} images/s" for v in vit))
    speedups = [f"B={b} {backend} {decode} {x:.2f}x" for b, backend, decode, x in compressor_speedups(rows)]
    lines.append("  mlp vs none, whole request: " + (", ".join(speedups) or "not measured"))
    for r in rows:
        groups = r.get("profile", {}).get("us_per_step_by_group")
        if groups:
            parts = ", ".join(f"{g} {us / 1e3:.3f}" for g, us in sorted(groups.items()))
            lines.append(f"  decode step B={r['batch']} ({r['compressor']}, {r['backend']}): device kernels {sum(groups.values()) / 1e3:.3f} ms "
                         f"({parts}) in {launches_per_step(r['profile']):g} launches vs floor {r['floor_ms_per_step']:.3f} ms")  # fmt: skip
            lines += [f"    {note}" for note in kernel_notes(r["profile"])]
            if "prefill" in r["profile"]:
                lines.append(f"    {prefill_line(r)}")
    return lines


def run_sweep(results_dir: str) -> list[str]:
    """The fused_linear tile sweep at B=1 into fused-linear-sweep.json; the summary's lines for it."""
    from bench import sweep_fused_linear

    try:
        results = sweep_fused_linear.sweep([1], budget_s=SWEEP_BUDGET_S)
    except Exception as exc:  # the rest of the record stands
        return [f"  fused_linear tile sweep failed: {harness.error_text(exc)}"]
    with open(os.path.join(results_dir, "fused-linear-sweep.json"), "w") as f:
        json.dump(results, f, indent=1)
    return ["  fused_linear tile sweep (B=1, cold weights, graph replay):",
            *[f"    {line}" for line in sweep_fused_linear.summary_lines(results)]]  # fmt: skip


def run_pytest_benchmark(results_dir: str) -> str:
    """tests/benchmarks through pytest-benchmark on CUDA (each op's smallest and largest case, ours
    and the peers but torch.compile's) into pytest-benchmark.json, within PYTEST_BENCHMARK_BUDGET_S;
    the summary's line for it."""
    out = os.path.join(results_dir, "pytest-benchmark.json")
    cmd = [sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only", "-p", "no:xdist", "-p", "no:cacheprovider",
           "-q", f"--benchmark-json={out}"]  # fmt: skip
    env = _child_env(AURORA_TEST_DEVICE="cuda", AURORA_BENCH_CASES="ends")
    with open(os.path.join(results_dir, "pytest-benchmark.log"), "w") as log:
        try:
            code = subprocess.run(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=PYTEST_BENCHMARK_BUDGET_S
            ).returncode
        except subprocess.TimeoutExpired:
            return (
                f"  pytest-benchmark: stopped at its {PYTEST_BENCHMARK_BUDGET_S:.0f} s budget (no JSON); see pytest-benchmark.log"
            )
    if not os.path.exists(out):
        return f"  pytest-benchmark: exit {code}, no JSON; see pytest-benchmark.log"
    with open(out) as f:
        count = len(json.load(f)["benchmarks"])
    return f"  pytest-benchmark: {count} benchmarks (exit {code}) in pytest-benchmark.json"


def run_transformers(results_dir: str) -> list[str]:
    """transformers' Qwen2 (the LLM's shapes, bf16) on each attention implementation and patched,
    padded batches, into transformers-e2e.json within TRANSFORMERS_BUDGET_S; the summary's lines."""
    import torch

    from bench import transformers_e2e

    try:
        rows = transformers_e2e.run(torch.device("cuda"), budget_s=TRANSFORMERS_BUDGET_S)
    except Exception as exc:  # the rest of the record stands
        return [f"  transformers Qwen2 failed: {harness.error_text(exc)}"]
    with open(os.path.join(results_dir, "transformers-e2e.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return ["  transformers Qwen2 (the LLM's shapes, random weights, bf16), left-padded prompts, greedy generate:",
            *[f"    {line}" for line in transformers_e2e.summary_lines(rows)]]  # fmt: skip


PHASES = ("tests", "ops", "sweep", "pytest-benchmark", "transformers", "model")


def _model_runs(text: str) -> tuple[tuple[str, str], ...]:
    """--model-runs: comma-separated backend:decode pairs among bench.model_e2e.RUNS, in its order."""
    pairs = subset_of((f"{backend}:{decode}" for backend, decode in model_e2e.RUNS), "backend:decode pairs")(text)
    return tuple(tuple(pair.split(":", 1)) for pair in pairs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--results-dir", type=output_directory, help="default bench/results/<device-name>/")
    parser.add_argument(
        "--phases",
        type=subset_of(PHASES, "phases"),
        default=PHASES,
        help=f"comma-separated subset of {','.join(PHASES)} (one device call each fits its 10 minutes)",
    )
    parser.add_argument(
        "--run-budget",
        type=float,
        default=RUN_BUDGET_S,
        help="seconds for all the phases together (a device call's limit less start-up and archive)",
    )
    parser.add_argument(
        "--ops-budget",
        type=float,
        help=f"seconds for the op benchmarks (default: what is left of "
        f"the run budget after the tests and {MIN_MODEL_BUDGET_S:.0f} s for the model, "
        f"{MIN_OPS_BUDGET_S:.0f} s at least)",
    )
    parser.add_argument(
        "--model-budget",
        type=float,
        help=f"seconds for the end-to-end model runs (default: what is "
        f"left of the run budget, {MIN_MODEL_BUDGET_S:.0f} s at least)",
    )
    parser.add_argument(
        "--ops",
        type=subset_of(harness.known_ops(), "ops"),
        help="comma-separated ops whose cases the ops phase times (default: every op)",
    )
    parser.add_argument(
        "--model-runs",
        type=_model_runs,
        help="comma-separated backend:decode pairs the model phase times, in bench.model_e2e.RUNS's order "
        "(default: all of them), e.g. triton:cuda_graph,triton-fused-batched:cuda_graph",
    )
    parser.add_argument(
        "--model-batches",
        type=ints_at_least(1),
        help="comma-separated decode batch sizes the model phase times (default: bench.model_e2e.BATCHES), e.g. 4",
    )
    parser.add_argument(
        "--model-compressors",
        type=subset_of(model_e2e.COMPRESSORS, "compressors"),
        help="comma-separated compressors the model phase runs (default: bench.model_e2e.COMPRESSORS), e.g. mlp: "
        "the kernels' decisions need one, which halves the phase",
    )
    parser.add_argument(
        "--archive",
        type=output_file,
        help="also pack the results directory into this .tar.gz after each phase "
        "(a device call returns few files, and a call stopped at its limit keeps the phases done)",
    )
    args = parser.parse_args(argv)
    phases, ops, model_runs = args.phases, args.ops, args.model_runs
    import torch

    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA device; on a CPU machine use `make test` and `make bench`", file=sys.stderr)
        return 2
    from bench import run

    results_dir = args.results_dir or os.path.join(
        run.RESULTS_ROOT, harness.device_slug(torch.cuda.get_device_properties(0).name)
    )
    os.makedirs(results_dir, exist_ok=True)
    start = time.time()

    def save_archive():
        if args.archive:
            archive(results_dir, args.archive)

    timing = bool({"ops", "sweep", "pytest-benchmark", "transformers", "model"} & set(phases))
    warm_up = start_warm_up(results_dir, phases, beside_tests="tests" in phases, ops=ops) if timing else None
    test_code, test_summary = 0, "not run (--phases)"
    if "tests" in phases:
        test_code, test_summary = run_tests(results_dir)
        print(f"tests on CUDA: {test_summary} ({time.time() - start:.0f} s); log in {results_dir}/tests-cuda.log", flush=True)
        save_archive()
    warm_up_summary = "not run (no timing phase)"
    if warm_up is not None:
        warm_up_summary = finish_warm_up(warm_up, results_dir, start)
        print(f"{warm_up_summary} ({time.time() - start:.0f} s); log in {results_dir}/warm-up.log", flush=True)
    rows, model_error, sweep_lines = [], None, []
    if timing:
        device, facts, ceilings, results_dir = run.gpu_context(results_dir)
        if "ops" in phases:
            ops_budget = args.ops_budget
            if ops_budget is None:
                model_budget = (args.model_budget or MIN_MODEL_BUDGET_S) if "model" in phases else 0.0
                sweep_budget = SWEEP_BUDGET_S if "sweep" in phases else 0.0
                sweep_budget += PYTEST_BENCHMARK_BUDGET_S if "pytest-benchmark" in phases else 0.0
                sweep_budget += TRANSFORMERS_BUDGET_S if "transformers" in phases else 0.0
                ops_budget = max(MIN_OPS_BUDGET_S, args.run_budget - (time.time() - start) - model_budget - sweep_budget)
            print(f"op benchmarks: {ops_budget:.0f} s budget", flush=True)
            cases = [case for case in harness.load_cases() if ops is None or case.op in ops]
            rows = run.run_gpu_ops(cases, device, facts, ceilings, results_dir, ops_budget)
            save_archive()
        if "sweep" in phases:
            print(f"fused_linear tile sweep: {SWEEP_BUDGET_S:.0f} s budget", flush=True)
            sweep_lines = run_sweep(results_dir)
            print("\n".join(sweep_lines), flush=True)
            save_archive()
        if "pytest-benchmark" in phases:
            sweep_lines.append(run_pytest_benchmark(results_dir))
            print(sweep_lines[-1], flush=True)
            save_archive()
        if "transformers" in phases:
            print(f"transformers Qwen2: {TRANSFORMERS_BUDGET_S:.0f} s budget", flush=True)
            transformers_lines = run_transformers(results_dir)
            print("\n".join(transformers_lines), flush=True)
            sweep_lines += transformers_lines
            save_archive()
        if "model" in phases:
            model_budget = args.model_budget or max(MIN_MODEL_BUDGET_S, args.run_budget - (time.time() - start))
            print(f"model end to end: {model_budget:.0f} s budget", flush=True)
            try:
                run.run_gpu_model(device, ceilings, results_dir, model_budget, after_each=save_archive, runs=model_runs,
                                  batches=args.model_batches, compressors=args.model_compressors)  # fmt: skip
            except Exception as exc:  # the model could not even be built: the rest of the record stands
                model_error = harness.error_text(exc)
                print(f"model end to end failed: {model_error}", flush=True)
            save_archive()
    try:
        from bench import plots

        plot_note = f"plots: {len(plots.plot_results_dir(results_dir))} PNG files"
    except ImportError as exc:  # matplotlib missing
        plot_note = f"plots: not drawn here ({exc}); run `python -m bench.plots {results_dir}` where matplotlib is installed"
    except Exception as exc:  # the plots are extras: never lose the summary and the archive to them
        plot_note = f"plots: failed ({harness.error_text(exc)}); the JSON results stand"
    lines = [
        f"gpu-check summary ({time.time() - start:.0f} s total) -> {results_dir}",
        f"  tests on CUDA: {test_summary} (exit {test_code})",
        f"  compile {warm_up_summary}",
        f"  {plot_note}",
        *summarise([r for r in rows if "skipped" not in r]),
    ]
    skipped = sum("skipped" in r for r in rows)
    if skipped:
        lines.append(f"  {skipped} op cases not timed (time budget, or an error building them): see results.md")
    lines += sweep_lines
    lines += [f"  model end to end failed: {model_error}"] if model_error else summarise_model(results_dir)
    with open(os.path.join(results_dir, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    save_archive()
    print("\n" + "=" * 100 + "\n" + "\n".join(lines) + "\n" + "=" * 100)
    return test_code


if __name__ == "__main__":
    sys.exit(main())
