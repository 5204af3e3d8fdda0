"""Benchmark harness: one registry of cases, the roofline floor of each, timing, device facts, results.

A case is one op at one of the model's real shapes (SPEC) in one dtype, with the bytes it must move
(each input read once, each output written once) and the FLOPs it must do. Those give its floor:
max(bytes / copy bandwidth, FLOPs / bf16 GEMM rate), the time no implementation can beat by much.
On a GPU each implementation (ours, the eager reference, torch.compile of the reference, and the
peers a case names: SDPA, liger-kernel, flash-attn) is timed with `triton.testing.do_bench` (median
of repeated runs after warm-up, L2 flushed between runs, inputs rotated over several copies), and
reported beside its achieved GB/s and TFLOP/s as fractions of the ceilings measured in the same run.
A peer that is not installed is reported as missing, never dropped.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import time
from typing import Callable

import torch

# Ceilings seen on an H100 (SPEC, Environments) until a run measures its own.
H100_COPY_BANDWIDTH = 3.0e12  # bytes/s, read + write
H100_BF16_GEMM = 800e12  # FLOP/s
# The second denominator: each device's datasheet figures (HBM bandwidth, dense bf16 tensor-core
# rate), by a word of its name. A result is reported against the measured ceilings and these.
SPEC_CEILINGS = {
    "H100": {"copy_bandwidth": 3.35e12, "bf16_gemm": 989e12},
    "H200": {"copy_bandwidth": 4.8e12, "bf16_gemm": 989e12},
}
# The implementation named so is our own eager reference: timed beside the others, never a peer.
REFERENCE = "eager"


def spec_ceilings(device_name: str) -> dict | None:
    """The datasheet ceilings of the device whose name holds a key of SPEC_CEILINGS, else None."""
    return next((spec for word, spec in SPEC_CEILINGS.items() if word in device_name), None)


@dataclasses.dataclass
class Peer:
    """Another implementation of a case: fn(*args, **kwargs), or missing with the reason why."""

    fn: Callable | None
    missing: str | None = None
    # called with the case's args and kwargs; returns this peer's own (args, kwargs) (padding a packed
    # batch, say), outside the timing
    prepare: Callable[..., tuple[tuple, dict]] | None = None


@dataclasses.dataclass
class Case:
    op: str
    name: str  # the shape, as a person reads it
    dtype: torch.dtype
    build: Callable[[torch.device, torch.Generator], tuple[tuple, dict]]  # model-shape inputs
    bytes: int
    flops: int
    peers: dict[str, Callable[[], Peer]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class OpEntry:
    """An op in the benchmark suite: its public function, reference and small CPU-parity inputs."""

    op: str
    public: Callable
    reference: Callable
    small_inputs: Callable[[torch.dtype, torch.device, torch.Generator], tuple[tuple, dict]]


OPS: dict[str, OpEntry] = {}
CASES: list[Case] = []


def register_op(op: str, public: Callable, reference: Callable, small_inputs) -> None:
    OPS[op] = OpEntry(op, public, reference, small_inputs)


def register_case(case: Case) -> None:
    CASES.append(case)


def load_cases(only: set[str] | None = None) -> list[Case]:
    """Every benchmark case (importing the bench_<op> modules registers them), or `only` these ops'."""
    import importlib
    import pkgutil

    import bench

    for module in pkgutil.iter_modules(bench.__path__):
        if module.name.startswith("bench_"):
            importlib.import_module(f"bench.{module.name}")
    return [c for c in CASES if not only or c.op in only]


def known_ops() -> list[str]:
    """The ops that have benchmark cases, sorted: what --ops may name."""
    return sorted({case.op for case in load_cases()})


def interleave_ops(cases) -> list:
    """Cases round-robin over the ops (every op's first case, then every op's second, ...), so a time
    budget that runs out leaves each op measured at least at its first shapes."""
    by_op: dict[str, list] = {}
    for case in cases:
        by_op.setdefault(case.op, []).append(case)
    rounds = max((len(v) for v in by_op.values()), default=0)
    return [op_cases[i] for i in range(rounds) for op_cases in by_op.values() if i < len(op_cases)]


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ----------------------------------------------------------------------------- roofline


def floor_seconds(case: Case, copy_bandwidth: float, gemm_rate: float) -> tuple[float, str]:
    memory, compute = case.bytes / copy_bandwidth, case.flops / gemm_rate
    return max(memory, compute), ("memory" if memory >= compute else "compute")


def floors_markdown(cases: list[Case], copy_bandwidth=H100_COPY_BANDWIDTH, gemm_rate=H100_BF16_GEMM) -> str:
    lines = [
        f"Floors at {copy_bandwidth / 1e12:.1f} TB/s copy bandwidth and {gemm_rate / 1e12:.0f} TFLOP/s bf16 GEMM "
        "(the H100 ceilings seen so far; a GPU run measures its own).",
        "",
        "| op | shape | dtype | MB moved | GFLOP | floor (us) | bound by |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cases:
        seconds, bound = floor_seconds(c, copy_bandwidth, gemm_rate)
        lines.append(
            f"| {c.op} | {c.name} | {str(c.dtype).replace('torch.', '')} | {c.bytes / 1e6:.2f} | "
            f"{c.flops / 1e9:.3f} | {seconds * 1e6:.2f} | {bound} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- timing (GPU)


def source_commit() -> str:
    """The commit the timed code came from: AURORA_COMMIT when set (a device machine's copy of the
    tree may carry stale git metadata: one here reported the session's first commit for a later
    tree), else git's HEAD, marked "-dirty" when tracked files differ from it."""
    if os.environ.get("AURORA_COMMIT"):
        return os.environ["AURORA_COMMIT"]
    try:
        head = _git("rev-parse", "--short", "HEAD")
        return head + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def device_facts() -> dict:
    facts = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "host": platform.node(),
    }
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        pass
    facts["commit"] = source_commit()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(
            name=props.name,
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
            cuda=torch.version.cuda,
        )
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            facts.update(
                driver=pynvml.nvmlSystemGetDriverVersion(),
                sm_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                sm_clock_max_mhz=pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
                memory_clock_mhz=pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
                memory_clock_max_mhz=pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM),
                power_limit_w=pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000,
            )
        except Exception as exc:  # nvidia-ml-py missing or NVML unavailable: say so in the record
            facts["nvml"] = f"unavailable: {type(exc).__name__}: {exc}"
    return facts


def device_slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-").replace("--", "-")


def bench_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


# Calls captured back to back in one CUDA graph for the device clock.
GRAPH_CALLS = 16


def graph_replay_ms(fn: Callable[[], object], calls: int = GRAPH_CALLS) -> float:
    """Device time of one call: `calls` calls of fn captured back to back in one CUDA graph (fn
    rotates over input sets that overflow L2, so each call reads its inputs from memory), the
    graph's replays timed like bench_ms, divided by `calls`. A small op called eagerly is timed at
    its host cost (Python, checks, the launch: tens of microseconds), which hides the kernel; a
    single call replayed after an L2 flush adds the graph launch and a cold start to a kernel of a
    few microseconds; back to back, each call pays what it would in a graphed model. Only for code
    that captures: no host sync."""
    import triton.testing

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compiled, autotuned and allocated outside the capture
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return float(triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")) / calls


def host_us_per_call(fn: Callable[[], object], calls: int = 100) -> float:
    """The host's cost of issuing one call, in us (Python, argument checks, allocation, the launch):
    `calls` calls back to back without a sync, on the host clock, after one call and a sync. The
    device runs behind and its queue holds far more than these launches, so for a case whose kernels
    are shorter than the host's issue time this is what an eager caller pays per call whatever the
    kernel. (Eager medians of such cases swing: do_bench's L2 flush between calls hides part of it.)"""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def median_wall_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """The median of `repeats` calls of fn on the host's clock, in ms, each between two syncs on a
    CUDA device: whole-program timings (a request, a model's forward), not a kernel's."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def markdown_report(title: str, intro: str, header: list[str], rows: list[list], text_columns: int = 0) -> str:
    """A CPU report: "# title", the intro, then a table of `header` and `rows` (each cell as str()),
    its first `text_columns` columns left-aligned and the rest (numbers) right-aligned."""
    aligns = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = [f"# {title}", "", intro, "", "| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(results_root: str, file_name: str, text: str) -> str:
    """text into results_root/file_name; returns text (a CPU report printed and kept)."""
    with open(os.path.join(results_root, file_name), "w") as f:
        f.write(text)
    return text


def measure_ceilings(device: torch.device) -> dict:
    """Copy bandwidth (bytes read + written) and bf16 GEMM rate, measured once per run."""
    src = torch.empty(2**28, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    copy_ms = bench_ms(lambda: dst.copy_(src))
    n = 8192
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device=device) for _ in range(2))
    gemm_ms = bench_ms(lambda: a @ b)
    src = dst = a = b = None  # free the buffers (assigned, not deleted: the lambdas above refer to them)
    return {"copy_bandwidth": 2 * 2**28 * 2 / (copy_ms * 1e-3), "bf16_gemm": 2 * n**3 / (gemm_ms * 1e-3)}


def _input_sets(case: Case, device: torch.device, generator: torch.Generator, l2_bytes: int):
    """Enough copies of the inputs that one pass over them overflows L2 twice (at most 4)."""
    copies = max(1, min(4, math.ceil(2 * l2_bytes / max(case.bytes, 1))))
    return [case.build(device, generator) for _ in range(copies)]


def error_text(exc: BaseException) -> str:
    """An exception as one line of a report: its type and the first line of its message."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def skipped_row(case: Case, reason: str) -> dict:
    """The row of a case that was not timed, and why."""
    return {"op": case.op, "shape": case.name, "dtype": str(case.dtype).replace("torch.", ""), "bytes": case.bytes,
            "flops": case.flops, "impls": {}, "skipped": reason}  # fmt: skip


def implementations(case: Case) -> dict[str, Peer]:
    """What a case times: ours, the eager reference, then the peers it names (loaded now)."""
    entry = OPS[case.op]
    impls = {"ours": Peer(entry.public), "eager": Peer(entry.reference)}
    impls.update({name: load() for name, load in case.peers.items()})
    return impls


def prepared_inputs(peer: Peer, sets: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """Each input set as `peer` takes it."""
    if peer.prepare is None:
        return sets
    return [peer.prepare(*args, **kwargs) for args, kwargs in sets]


# host_us_per_call makes 101 calls: only where a call's eager median is under this, the cases where
# the host's cost is what a caller pays (and the eager reference's 10 to 50 ms calls are spared)
HOST_TIMED_BELOW_MS = 0.1


def time_case(case: Case, impls: dict[str, Peer], ceilings: dict, device: torch.device, timer=bench_ms,
              graph_timer=None, host_timer=None, host_timed_below_ms: float = HOST_TIMED_BELOW_MS) -> dict:  # fmt: skip
    """One result row: every implementation timed by `timer` (median ms of a callable) over rotating
    input sets; a missing or failing peer is recorded as such. With graph_timer (`graph_replay_ms` on
    a GPU), ours, our variants and every peer are also timed replayed from a CUDA graph ("graph_ms",
    the device clock; one that does not capture records "graph_error"), so the speed-ups are
    reported on both clocks; the eager reference (REFERENCE, not a peer, and it syncs) is not. With
    host_timer (`host_us_per_call` on a GPU), the host's cost a call ("host_us") of every
    implementation whose median is under host_timed_below_ms."""
    generator = torch.Generator(device=device).manual_seed(0)
    l2_bytes = 50 * 2**20
    if device.type == "cuda":
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", l2_bytes)
    sets = _input_sets(case, device, generator, l2_bytes)
    floor_s, bound = floor_seconds(case, ceilings["copy_bandwidth"], ceilings["bf16_gemm"])
    row = {
        "op": case.op,
        "shape": case.name,
        "dtype": str(case.dtype).replace("torch.", ""),
        "bytes": case.bytes,
        "flops": case.flops,
        "floor_ms": floor_s * 1e3,
        "bound": bound,
        "impls": {},
    }
    for name, peer in impls.items():
        if peer.fn is None:
            row["impls"][name] = {"missing": peer.missing}
            continue
        cycle = itertools.cycle(prepared_inputs(peer, sets))

        def call(fn=peer.fn):
            args, kwargs = next(cycle)
            return fn(*args, **kwargs)

        try:
            ms = timer(call)
        except Exception as exc:  # reported in the row; one failing peer does not stop the run
            row["impls"][name] = {"error": error_text(exc)}
            continue
        seconds = ms * 1e-3
        row["impls"][name] = {
            "ms": ms,
            "gbps": case.bytes / seconds / 1e9,
            "tflops": case.flops / seconds / 1e12,
            "frac_copy_bw": case.bytes / seconds / ceilings["copy_bandwidth"],
            "frac_gemm": case.flops / seconds / ceilings["bf16_gemm"],
            "frac_floor": floor_s / seconds,
        }
        if host_timer is not None and ms < host_timed_below_ms:
            try:
                row["impls"][name]["host_us"] = host_timer(call)
            except Exception as exc:  # reported beside the eager timing, which stands
                row["impls"][name]["host_error"] = error_text(exc)
        if graph_timer is not None and name != REFERENCE:
            try:
                graph_ms = graph_timer(call)
            except Exception as exc:  # reported beside the eager timing, which stands
                row["impls"][name]["graph_error"] = error_text(exc)
                continue
            row["impls"][name].update(graph_ms=graph_ms, graph_frac_floor=floor_s / (graph_ms * 1e-3))
    return row


def peer_times(impls: dict, clock: str = "ms") -> list[float]:
    """A row's peers' times on `clock` ("ms": eager medians; "graph_ms": the device clock): every
    implementation but ours, our own variants (named "ours ...": a fixed split count, the unfused
    pair) and our eager reference, which are reported beside them but are not what "the best peer"
    means."""
    return [v[clock] for name, v in impls.items() if not name.startswith("ours") and name != REFERENCE and clock in v]


def speedups(impls: dict) -> dict[str, float]:
    """The best peer's time over ours, on each clock where both were timed."""
    ours = impls.get("ours", {})
    out = {}
    for clock in ("ms", "graph_ms"):
        peers = peer_times(impls, clock)
        if clock in ours and peers:
            out[clock] = min(peers) / ours[clock]
    return out


def results_markdown(facts: dict, ceilings: dict, rows: list[dict]) -> str:
    header = [
        f"# Benchmark results: {facts.get('name', 'cpu')}",
        "",
        f"commit {facts.get('commit')} · {facts.get('date')} · torch {facts.get('torch')} · triton {facts.get('triton')}",
        "",
        "Device: " + ", ".join(f"{k}={v}" for k, v in facts.items() if k not in ("date", "commit", "torch", "triton")),
        "",
        f"Measured ceilings: copy {ceilings['copy_bandwidth'] / 1e12:.2f} TB/s (read + write), "
        f"bf16 GEMM {ceilings['bf16_gemm'] / 1e12:.0f} TFLOP/s.",
        "",
        "Times are medians in ms of eager calls, host cost included. `speed-up` is the best peer's time over ours "
        '(our own variants, named "ours ...", and our eager reference are listed but not counted as peers), on '
        "the eager clock and on the device clock (every implementation replayed from a CUDA graph, where it "
        "captures). `% floor` is the roofline floor over our time (100% = at the ceiling). `ours, graph "
        f"replay` is ours on the device clock: {GRAPH_CALLS} calls back to back in one CUDA graph over rotated "
        "inputs that overflow L2, per call: the kernel's device time without the host's share, which decides "
        "small cases (tens of microseconds of Python and launch a call) and is what a CUDA-graphed model pays. "
        "`% spec BW` / `% spec GEMM`: ours against the device's datasheet figures (the second denominator). `host us / call`: what issuing one call costs the host (ours; the "
        "implementation that costs least), which is what an eager caller pays a call in the small cases.",
        "",
        "| op | shape | dtype | ours | ours, graph replay | eager | torch.compile | other peers | speed-up | "
        "speed-up, device clock | GB/s | % copy BW | TFLOP/s | % GEMM | % floor | % spec BW | % spec GEMM | host us / call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    spec = spec_ceilings(facts.get("name", ""))

    def cell(result):
        if result is None:
            return "-"
        if "missing" in result:
            return f"missing ({result['missing']})"
        if "error" in result:
            return f"error ({result['error'][:60]})"
        return f"{result['ms']:.4f}"

    def peer_cell(result):  # a peer's eager time and, where it captured, its device time
        return cell(result) + (f" (graph {result['graph_ms']:.4f})" if "graph_ms" in result else "")

    def graph_cell(result):
        if "graph_ms" in result:
            return f"{result['graph_ms']:.4f} ({100 * result['graph_frac_floor']:.0f}% floor)"
        return f"error ({result['graph_error'][:60]})" if "graph_error" in result else "-"

    def host_cell(impls):
        peers = {k: v["host_us"] for k, v in impls.items() if not k.startswith("ours") and "host_us" in v}
        if "host_us" not in impls.get("ours", {}):
            return "-"
        least = min(peers, key=peers.get) if peers else None
        return f"{impls['ours']['host_us']:.1f}" + (f"; {least} {peers[least]:.1f}" if least else "")

    for r in rows:
        if "skipped" in r:
            header.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | skipped: {r['skipped']} |" + " |" * 14)
            continue
        impls = r["impls"]
        ours = impls.get("ours", {})
        others = {k: v for k, v in impls.items() if k not in ("ours", "eager", "torch.compile")}
        ups = speedups(impls)
        speedup = f"{ups['ms']:.2f}x" if "ms" in ups else "-"
        device_speedup = f"{ups['graph_ms']:.2f}x" if "graph_ms" in ups else "-"
        metrics = (
            f"{ours['gbps']:.0f} | {100 * ours['frac_copy_bw']:.0f}% | {ours['tflops']:.1f} | "
            f"{100 * ours['frac_gemm']:.0f}% | {100 * ours['frac_floor']:.0f}%"
            if "ms" in ours
            else "- | - | - | - | -"
        )
        fast = ours.get("graph_ms", ours.get("ms"))  # the device clock where there is one
        spec_cells = (
            f"{100 * r['bytes'] / (fast * 1e-3) / spec['copy_bandwidth']:.0f}% | {100 * r['flops'] / (fast * 1e-3) / spec['bf16_gemm']:.0f}%"
            if spec and fast
            else "- | -"
        )
        other = "; ".join(f"{k} {peer_cell(v)}" for k, v in others.items()) or "-"
        header.append(
            f"| {r['op']} | {r['shape']} | {r['dtype']} | {cell(impls.get('ours'))} | {graph_cell(ours)} | {cell(impls.get('eager'))} | "
            f"{peer_cell(impls['torch.compile']) if 'torch.compile' in impls else '-'} | {other} | {speedup} | {device_speedup} | {metrics} | {spec_cells} | {host_cell(impls)} |"
        )
    return "\n".join(header) + "\n"


# Liger-Kernel's benchmark CSV (benchmark/data/all_benchmark_data.csv): one row per implementation,
# case and metric, so its visualiser and the tables people keep of it read ours as they read Liger's.
LIGER_CSV_COLUMNS = ("kernel_name", "kernel_provider", "kernel_operation_mode", "metric_name", "metric_unit", "x_name",
                     "x_label", "x_value", "y_value_50", "y_value_20", "y_value_80", "extra_benchmark_config_str",
                     "gpu_name", "timestamp", "liger_version")  # fmt: skip


def liger_csv_rows(facts: dict, rows: list[dict]) -> list[dict]:
    """The rows of a results table in Liger's layout: speed (ms) of every implementation that ran on
    each clock ("forward": eager medians; "forward, graph replay": the device clock); quantiles
    other than the median are not kept, so y_value_20/80 are empty."""
    out = []
    for r in rows:
        for provider, result in r["impls"].items():
            for mode, key in (("forward", "ms"), ("forward, graph replay", "graph_ms")):
                if key in result:
                    out.append({"kernel_name": r["op"], "kernel_provider": provider, "kernel_operation_mode": mode,
                                "metric_name": "speed", "metric_unit": "ms", "x_name": "shape", "x_label": "model shape",
                                "x_value": r["shape"], "y_value_50": result[key], "y_value_20": "", "y_value_80": "",
                                "extra_benchmark_config_str": json.dumps({"dtype": r["dtype"], "bytes": r["bytes"], "flops": r["flops"]}),
                                "gpu_name": facts.get("name", ""), "timestamp": facts.get("date", ""),
                                "liger_version": facts.get("liger_version", "")})  # fmt: skip
    return out


def write_liger_csv(path: str, facts: dict, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LIGER_CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(liger_csv_rows(facts, rows))


def autotune_markdown(choices: dict[str, dict[str, str]]) -> str:
    lines = [
        "",
        "## Autotuner choices",
        "",
        "What each autotuned kernel picked, per autotune key (first call of a key decides).",
        "",
    ]
    lines += [f"- `{name}` {key}: {config}" for name, by_key in choices.items() for key, config in by_key.items()]
    return "\n".join(lines) + "\n" if choices else ""


def write_results(results_dir: str, facts: dict, ceilings: dict, rows: list[dict]) -> None:
    from aurora_kernels.ops._autotune import chosen_configs

    choices = chosen_configs()
    os.makedirs(results_dir, exist_ok=True)
    with open(os.path.join(results_dir, "results.json"), "w") as f:
        json.dump({"device": facts, "ceilings": ceilings, "spec_ceilings": spec_ceilings(facts.get("name", "")), "rows": rows,
                   "autotune": choices}, f, indent=1)  # fmt: skip
    write_liger_csv(os.path.join(results_dir, "results.csv"), facts, rows)
    with open(os.path.join(results_dir, "results.md"), "w") as f:
        f.write(results_markdown(facts, ceilings, rows) + autotune_markdown(choices))
