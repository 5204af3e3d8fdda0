"""`make bench`: what is meaningful on this machine.

CPU (no GPU; kernels under the Triton interpreter): parity of every op against its reference at
small shapes, the sm_90 compile report of every kernel config, and the roofline floors of every
benchmark case for the H100 at the model's real shapes. Kernel timings need a GPU, and this says so.

GPU: device facts and measured ceilings, then every case timed for ours, the eager reference,
torch.compile of the reference and the peers; JSON + Markdown under --results-dir.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from aurora_kernels._cli_arguments import output_directory, subset_of
from bench import harness
from bench.harness import OPS, interleave_ops, known_ops, load_cases

RESULTS_ROOT = os.path.join(os.path.dirname(__file__), "results")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cpu_parity(only: set[str] | None) -> int:
    """Each op against its float64 reference at small shapes, every dtype, bf16 rounded as the GPU
    rounds it (the interpreter alone truncates). Returns the failure count."""
    from aurora_kernels import testing

    testing.round_bf16_to_nearest_even_under_the_interpreter()
    testing.patch_the_language_once_a_launch_under_the_interpreter()

    print("## Parity against the float64 reference (small shapes, Triton interpreter)\n")
    print("| op | " + " | ".join(f"{str(d).replace('torch.', '')} (bound {testing.TOLERANCES[d]:.0e})" for d in DTYPES) + " |")
    print("| --- |" + " --- |" * len(DTYPES))
    failures = 0
    for op, entry in OPS.items():
        if only and op not in only:
            continue
        cells = []
        for i, dtype in enumerate(DTYPES):
            gen = testing.make_generator(1000 + i)
            args, kwargs = entry.small_inputs(dtype, torch.device("cpu"), gen)
            try:
                errors = testing.check_op(entry.public, entry.reference, *args, **kwargs)
                cells.append("ok " + ", ".join(f"{e:.1e}" for e in errors))
            except (AssertionError, ValueError) as exc:
                failures += 1
                cells.append(f"FAIL: {str(exc).splitlines()[0][:80]}")
        print(f"| {op} | " + " | ".join(cells) + " |")
    print()
    return failures


def compile_report(results_root: str, ops: set[str] | None = None) -> int:
    """The sm_90 report with the installed Triton (compile-sm90.md) and, where `make` installed it
    (AURORA_GPU_IMAGE_TRITON), with the GPU machines' Triton (compile-sm90-triton-<version>.md);
    `ops`: only theirs."""
    from aurora_kernels.compile_report import document, markdown, problems, run_report

    os.makedirs(results_root, exist_ok=True)
    failures = 0
    gpu_image_triton = os.environ.get("AURORA_GPU_IMAGE_TRITON")
    for triton_path in [None] + ([gpu_image_triton] if gpu_image_triton else []):
        report = run_report(triton_path=triton_path, ops=tuple(sorted(ops or ())))
        version = report["toolchain"]["triton"]
        name = f"compile-sm90-triton-{version}.md" if triton_path else "compile-sm90.md"
        path = os.path.join(results_root, name)
        with open(path, "w") as f:
            f.write(document(report))
        rows = report["rows"]
        print(f"## sm_90 compile report, triton {version} ({len(rows)} configs; written to {os.path.relpath(path)})\n")
        print(markdown(rows))
        failures += sum(1 for r in rows if problems(r))
    return failures


def floors(cases, results_root: str) -> None:
    table = harness.floors_markdown(cases)
    path = os.path.join(results_root, "roofline-floors-h100.md")
    with open(path, "w") as f:
        f.write("# Roofline floors of the benchmark cases (H100, the model's shapes)\n\n" + table)
    print(f"## Roofline floors at the model's shapes (written to {os.path.relpath(path)})\n")
    print(table)


def gpu_context(results_dir: str | None):
    """(device, facts, ceilings, results_dir) for a GPU run: device facts, then the measured ceilings.
    results_dir None: the device's record folder, bench/results/<device-name>/."""
    device = torch.device("cuda")
    facts = harness.device_facts()
    results_dir = results_dir or os.path.join(RESULTS_ROOT, harness.device_slug(facts["name"]))
    os.makedirs(results_dir, exist_ok=True)
    print(f"device: {facts}", flush=True)
    ceilings = harness.measure_ceilings(device)
    print(
        f"ceilings: copy {ceilings['copy_bandwidth'] / 1e12:.2f} TB/s, bf16 GEMM {ceilings['bf16_gemm'] / 1e12:.0f} TFLOP/s",
        flush=True,
    )
    return device, facts, ceilings, results_dir


def run_gpu_ops(cases, device, facts, ceilings, results_dir: str, budget_s: float = 150.0) -> list[dict]:
    """Every case (interleaved over ops) until the budget is spent; results are rewritten after each
    case, so a run that is stopped keeps what it measured."""
    start = time.time()
    rows = []
    for case in interleave_ops(cases):
        if time.time() - start > budget_s:
            rows.append(harness.skipped_row(case, f"time budget of {budget_s:.0f} s spent"))
            continue
        torch._dynamo.reset()  # a fresh compile per case: dynamo's recompile limit would fall back to eager
        try:
            row = harness.time_case(case, harness.implementations(case), ceilings, device, graph_timer=harness.graph_replay_ms,
                                    host_timer=harness.host_us_per_call)  # fmt: skip
        except Exception as exc:  # its inputs could not be built (out of memory, say): the row says so
            row = harness.skipped_row(case, f"error: {harness.error_text(exc)}")
        rows.append(row)
        ours_ms = row["impls"].get("ours", {}).get("ms")
        print(f"{case.op:20s} {case.name:60s} ours {ours_ms if ours_ms is None else round(ours_ms, 4)} ms", flush=True)
        harness.write_results(results_dir, facts, ceilings, rows)
        torch.cuda.empty_cache()
    harness.write_results(results_dir, facts, ceilings, rows)
    print(f"results written to {results_dir}")
    return rows


def run_gpu_model(device, ceilings, results_dir: str, budget_s: float = 120.0, after_each=None, runs=None,
                  batches=None, compressors=None) -> list[dict]:  # fmt: skip
    """The end-to-end model benchmark (`runs`: those of bench.model_e2e.RUNS, default all; `batches`:
    default bench.model_e2e.BATCHES; `compressors`: default bench.model_e2e.COMPRESSORS); its results are written after every configuration, and then
    after_each() runs (gpu_check's archive), so a run cut short keeps what it measured."""
    from bench import model_e2e

    def checkpoint(rows):
        model_e2e.write(results_dir, rows)
        if after_each is not None:
            after_each()

    narrowed = {**({"runs": runs} if runs else {}), **({"batches": batches} if batches else {}),
                **({"compressors": compressors} if compressors else {})}  # fmt: skip
    model_rows = model_e2e.run(device, ceilings, budget_s, checkpoint=checkpoint, **narrowed)
    model_e2e.write(results_dir, model_rows)
    print(model_e2e.markdown(model_rows))
    try:
        vit = model_e2e.vit_images_per_s(device)
        model_e2e.write_vit(results_dir, vit)
        print("ViT alone: " + ", ".join(f"B={v['batch']} {v['images_per_s']:.0f} images/s" for v in vit), flush=True)
    except Exception as exc:  # the model's rows stand without it
        print(f"ViT alone failed: {harness.error_text(exc)}", flush=True)
    return model_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--results-dir",
        type=output_directory,
        help="results go here (default: a full run, the committed bench/results/ "
        "(GPU: bench/results/<device-name>/); a partial one (--ops), a temporary folder)",
    )
    parser.add_argument("--ops", type=subset_of(known_ops(), "ops"), help="comma-separated ops to run (default: all)")
    args = parser.parse_args(argv)
    # a partial run never writes over the committed records: they hold every op's rows
    results_dir = args.results_dir or (tempfile.mkdtemp(prefix="aurora-bench-") if args.ops else None)
    if results_dir:
        print(f"results go to {results_dir}", flush=True)
    only = set(args.ops) if args.ops else None
    cases = load_cases(only)
    if torch.cuda.is_available():
        from bench import warm

        # the compiles first, over every core (the timing is one process on an idle GPU)
        warm.run_and_report(warm.timed_run_tasks(only, model=not only), "cuda", warm.usable_cores(), 240.0, 0.9)
        device, facts, ceilings, results_dir = gpu_context(results_dir)
        run_gpu_ops(cases, device, facts, ceilings, results_dir)
        if not only:
            run_gpu_model(device, ceilings, results_dir)
        return 0
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("no GPU and TRITON_INTERPRET is not 1: run `make bench` (it sets the interpreter)", file=sys.stderr)
        return 2
    results_root = results_dir or RESULTS_ROOT
    parity_failures = cpu_parity(only)
    compile_failures = compile_report(results_root, only)
    floors(cases, results_root)
    if not only:
        from bench import model_cpu, model_host, transformers_e2e

        print(model_cpu.cost_report(results_root))
        print(model_cpu.cpu_timings(results_root))
        print(model_host.report(results_root))
        print(transformers_e2e.host_report(results_root))
    print("Kernel timings need a GPU: this machine has none, so no time was measured here. "
          "On a GPU machine run `make gpu-check` (tests on CUDA, then every benchmark).")  # fmt: skip
    if parity_failures or compile_failures:
        print(f"FAILED: {parity_failures} parity failures, {compile_failures} compile-report problems")
        return 1
    return 0
