"""End-to-end model benchmark (GPU): the full preset in bf16, batches of 1, 8 and 32 requests with
ragged prompts of 32..512 tokens (and one 512-token prompt at B=1), 128 new tokens each. Per
configuration, medians (with min and max) of REQUEST_REPEATS requests after a warm-up one: time to
first token (vision, compressor, fusion, LLM prefill, first logits), the second token after the first,
the time per output token after that, and the whole request; for backend triton vs reference, decode
eager / torch.compile'd / CUDA-graphed, compressor mlp (64 visual tokens) vs none (256). Each is set
against its floor from the cost model: FLOPs over the measured GEMM rate or bytes over the measured
copy bandwidth, whichever is longer (model-e2e.json: ttft_ms, second_token_ms, tpot_ms, request_ms
and each one's *_floor_ms). Also the ViT alone, images/s at B=1, 8 and 32 (model-vit.json).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pkgutil
import re
import statistics
import time
from typing import Callable

import torch

from aurora_kernels._dispatch import count_calls
from aurora_kernels.generate import random_requests, timed_generation
from aurora_kernels.model import AuroraEdgeV, RunOptions, preset
from aurora_kernels.model.cost import kv_cache_bytes, part_parameters, projection_weight_bytes, stage_costs
from aurora_kernels.ops._pdl import using_programmatic_dependent_launch
from bench.harness import error_text, median_wall_ms

BATCHES = (1, 8, 32)
NEW_TOKENS = 128
# (backend, decode mode), the most telling first in case the time budget runs out; the eager reference
# reads cache lengths on the host, so it runs eager only; compile goes last (its first trace is slow).
# "triton": the kernels with the model's defaults but cuBLAS projections, which is what batched
# steps run; "triton-fused": the model's defaults (RunOptions.fuse_decode_projections: a one-sequence
# step's projections as fused_linear GEMVs instead of cuBLAS plus a norm or activation kernel),
# timed at B=1 alone (ONE_SEQUENCE_RUNS). Both launch with programmatic dependent launch
# (RunOptions.programmatic_dependent_launch, on by default; "-no-pdl" without it; the records before
# 2026-12 named those rows "triton" and "triton-fused"). "triton-encoder-graph": "triton" with an
# eager prefill's image encoder replayed from a CUDA graph (RunOptions.encoder_cuda_graphs, off by
# default): read its "prefill ms" against "triton"'s (the runtime's captured prefill, which
# generate's graphed runs take, holds the encoder anyway).
# a run's backend -> (the model's backend, its RunOptions)
BACKENDS = {
    "triton": ("triton", RunOptions(fuse_decode_projections=False)),
    "triton-no-pdl": ("triton", RunOptions(fuse_decode_projections=False, programmatic_dependent_launch=False)),
    "triton-encoder-graph": ("triton", RunOptions(fuse_decode_projections=False, encoder_cuda_graphs=True)),
    "triton-fused": ("triton", RunOptions()),
    "triton-fused-no-pdl": ("triton", RunOptions(programmatic_dependent_launch=False)),
    "triton-fused-batched": ("triton", RunOptions(fuse_batched_projections=True)),
    "triton-fused-batched-activation-in-gate-up": (
        "triton",
        RunOptions(fuse_batched_projections=True, activation_in_gate_up=True),
    ),
    "triton-fused-prefetch": ("triton", RunOptions(weight_prefetch=True)),
    "triton-fused-activation-in-gate-up": ("triton", RunOptions(activation_in_gate_up=True)),
    "triton-fused-residual-in-epilogue": ("triton", RunOptions(residual_in_epilogue=True)),
    "reference": ("reference", RunOptions(fuse_decode_projections=False, programmatic_dependent_launch=False)),
}
# "triton-fused-prefetch": "triton-fused" with RunOptions.weight_prefetch (each GEMV asks the L2 for
# its weight rows before its PDL wait), B=1 alone: its rows against "triton-fused"'s decide that
# option's default; "triton-fused-activation-in-gate-up" (SwiGLU in gate_up's epilogue, down_proj a
# plain GEMV) and "triton-fused-residual-in-epilogue" (the residual stream's adds in o_proj's and
# down_proj's epilogues) likewise
ONE_SEQUENCE_RUNS = (
    ("triton-fused", "cuda_graph"),
    ("triton-fused-prefetch", "cuda_graph"),
    ("triton-fused-activation-in-gate-up", "cuda_graph"),
    ("triton-fused-residual-in-epilogue", "cuda_graph"),
    ("triton-fused-no-pdl", "cuda_graph"),
)
# "triton-fused-batched": the defaults with RunOptions.fuse_batched_projections (a batched step's
# projections as the fused ops: the GEMV's row blocks up to 4 sequences, the tensor-core tiles
# beyond, wgmma on sm_90), timed at B > 1 alone: its rows against "triton"'s decide that option's
# default; "triton-fused-batched-activation-in-gate-up" (with RunOptions.activation_in_gate_up) against
# "triton-fused-batched"'s, that option's for batched steps
BATCHED_RUNS = (("triton-fused-batched", "cuda_graph"), ("triton-fused-batched-activation-in-gate-up", "cuda_graph"))
RUNS = (("triton", "cuda_graph"), *BATCHED_RUNS, ("triton-no-pdl", "cuda_graph"), ("triton-encoder-graph", "cuda_graph"), *ONE_SEQUENCE_RUNS,
        ("triton", "eager"), ("reference", "eager"), ("triton", "compile"))  # fmt: skip
# run after every batch's other runs: the compiled step is the least telling and the slowest to
# warm, and run early it has cost the B=32 rows their place in the model's time budget
LAST_RUNS = (("triton", "compile"),)
COMPRESSORS = ("mlp", "none")
# where a decode step's device time goes: profiled for these batches and runs (compressor mlp; the
# profile itself times eager steps of the run's model)
PROFILED_BATCHES = (1, 8)
PROFILED_RUNS = (("triton", "eager"), ("triton-fused", "cuda_graph"))  # the latter at B=1 alone
PREFILL_REPEATS = 5  # prefills timed apart, per configuration of the kernels: their median
# whole requests timed per configuration of the CUDA-graphed runs (the targets are theirs); the
# eager and compiled triton runs take EAGER_REQUEST_REPEATS (host-bound: a B=32 request is seconds),
# the eager reference one (a B=32 request of it is a minute)
REQUEST_REPEATS, EAGER_REQUEST_REPEATS = 5, 2
# at B=1, the runs that also take one long prompt (the model's defaults at one sequence)
LONG_PROMPT, LONG_PROMPT_RUNS = 512, (("triton-fused", "cuda_graph"),)
VIT_BATCHES = (1, 8, 32)
PROFILE_STEPS = 8
GEMM_KERNEL = re.compile(r"gemm|gemv|nvjet|xmma|cutlass|cublas", re.IGNORECASE)


def prompt_lengths(batch: int, prompt: str = "ragged") -> list[int]:
    """ "ragged": 32..512 spread over the batch (32 at B=1); "long": LONG_PROMPT each."""
    if prompt == "long":
        return [LONG_PROMPT] * batch
    return [32 + (512 - 32) * b // max(batch - 1, 1) for b in range(batch)]


def request_floors_ms(model, lengths: list[int], ceilings: dict, dtype_bytes: int = 2, new_tokens: int = NEW_TOKENS) -> dict:
    """The floors of a request's times from the cost model (stage_costs at the prompts' mean length):
    each stage's FLOPs over the GEMM rate or its bytes over the copy bandwidth, whichever is longer.
    ttft: vision through prefill; second_token: the first decode step; tpot: the mean decode step
    (decode_floor_s: weights and KV cache over the copy bandwidth); request: all of them."""
    bandwidth, gemm = ceilings["copy_bandwidth"], ceilings.get("bf16_gemm")
    costs = stage_costs(model.config, batch=len(lengths), prompt_len=round(statistics.mean(lengths)), dtype_bytes=dtype_bytes)
    floor = lambda c: max(c.bytes / bandwidth, c.flops / gemm if gemm else 0.0)  # noqa: E731
    ttft = sum(floor(c) for c in costs if c.stage != "decode step")
    second = floor(next(c for c in costs if c.stage == "decode step"))
    tpot = decode_floor_s(model, lengths, bandwidth, dtype_bytes, new_tokens)
    return {"ttft_floor_ms": ttft * 1e3, "second_token_floor_ms": second * 1e3, "tpot_floor_ms": tpot * 1e3,
            "request_floor_ms": (ttft + second + (new_tokens - 2) * tpot) * 1e3}  # fmt: skip


def request_times_ms(stats: dict) -> dict:
    """One request's times from generate's stats: to the first token, the second after it, per token
    after that (the steps after the first: a captured step's first run holds its capture), the whole."""
    steps, first = stats["decode_steps"], stats.get("first_step_s", 0.0)
    tpot = (stats["decode_s"] - first) / (steps - 1) if steps > 1 else first
    return {"ttft_ms": stats["prefill_s"] * 1e3, "second_token_ms": first * 1e3, "tpot_ms": tpot * 1e3,
            "request_ms": (stats["prefill_s"] + stats["decode_s"]) * 1e3}  # fmt: skip


def medians(samples: list[dict]) -> dict:
    """Each key's median over the samples, with its min and max (key_min, key_max) and the count."""
    out = {"requests": len(samples)}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out.update({key: statistics.median(values), f"{key}_min": min(values), f"{key}_max": max(values)})
    return out


def decode_floor_s(model, lengths: list[int], copy_bandwidth: float, dtype_bytes: int = 2, new_tokens: int = NEW_TOKENS) -> float:
    """Mean over the decode steps of (LLM weights + every request's KV cache) / copy bandwidth."""
    llm = model.config.llm
    weights = part_parameters(model.config)["llm"] * dtype_bytes
    visual = model.config.visual_tokens
    mean_context = [visual + n + new_tokens / 2 for n in lengths]
    kv = sum(kv_cache_bytes(llm, round(c), dtype_bytes) for c in mean_context)
    return (weights + kv) / copy_bandwidth


@functools.lru_cache(maxsize=None)
def kernel_names() -> frozenset[str]:
    """The names of this package's Triton kernels (as a profiler shows them)."""
    import triton

    import aurora_kernels.ops

    names = set()
    for module in pkgutil.iter_modules(aurora_kernels.ops.__path__):
        attrs = vars(importlib.import_module(f"aurora_kernels.ops.{module.name}"))
        names |= {name for name, obj in attrs.items() if isinstance(obj, triton.runtime.KernelInterface)}
    return frozenset(names)


def kernel_group(name: str) -> str:
    if name in kernel_names():
        return "aurora"
    return "gemm" if GEMM_KERNEL.search(name) else "other"


def _device_kernels(prof, calls_per: int = 1) -> list[dict]:
    """Each device kernel in a torch.profiler trace: time and launches per step (of `calls_per`
    steps), this package's Triton kernels ("aurora"), GEMMs and the rest told apart, slowest first."""
    from torch.autograd import DeviceType

    return sorted(
        ({"name": e.key, "group": kernel_group(e.key), "us_per_step": e.device_time_total / calls_per,
          "launches_per_step": e.count / calls_per}
         for e in prof.key_averages() if e.device_type == DeviceType.CUDA),
        key=lambda k: -k["us_per_step"],
    )  # fmt: skip


def profile_decode(model, pixel_values, prompts, steps: int = PROFILE_STEPS) -> dict:
    """Where an eager decode step's time goes, from torch.profiler over `steps` steps after a warm-up
    step: each device kernel's time and launches per step, grouped into this package's Triton
    kernels ("aurora"), GEMMs (cuBLAS/CUTLASS: the weights' reads) and the rest; and how many calls
    of each of this package's ops a step makes, per backend (host side, any device). Also the
    prefill of the same requests ("prefill"): its device kernels' time and launches, and its op
    calls, to set against the measured time to first token (what the kernels do not account for is
    the host's). Without programmatic dependent launch, whatever the model's setting: a kernel
    launched early would count its wait for the one before as its own time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if model.device.type == "cuda" else [])
    with profile(activities=activities) as prof, count_calls() as prefill_calls:
        logits, kv = model.prefill(pixel_values, prompts, steps + 2)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
    prefill_kernels = _device_kernels(prof)
    prefill = {"device_ms": sum(k["us_per_step"] for k in prefill_kernels) / 1e3,
               "launches": sum(k["launches_per_step"] for k in prefill_kernels),
               "op_calls": {f"{op} ({backend})": n for (op, backend), n in sorted(prefill_calls.items())}}  # fmt: skip
    with torch.no_grad(), using_programmatic_dependent_launch(False):
        logits = model.decode_step(logits.argmax(-1), kv)  # kernels compiled, caches warm
        with profile(activities=activities) as prof, count_calls() as calls:
            for _ in range(steps):
                logits = model.decode_step(logits.argmax(-1), kv)
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)
    kernels = _device_kernels(prof, steps)
    groups = {}
    for k in kernels:
        groups[k["group"]] = groups.get(k["group"], 0.0) + k["us_per_step"]
    ops = {f"{op} ({backend})": n / steps for (op, backend), n in sorted(calls.items())}
    return {"steps": steps, "kernels": kernels, "us_per_step_by_group": groups, "op_calls_per_step": ops, "prefill": prefill}


def median_prefill_ms(model, pixel_values, prompts, new_tokens: int, repeats: int) -> float:
    """Median of `repeats` prefills of the requests, each timed alone (device synchronised before and
    after): time to first token of an eager prefill (the encoder graphs apply there), which is
    what comparing prefill paths needs."""
    times = []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        start = time.perf_counter()
        model.prefill(pixel_values, prompts, new_tokens)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def run(device: torch.device, ceilings: dict, budget_s: float = 240.0, *, preset_name: str = "aurora-edge-v-2b",
        batches=BATCHES, runs=RUNS, compressors=COMPRESSORS, new_tokens: int = NEW_TOKENS, dtype=torch.bfloat16,
        timed: bool = True, checkpoint: Callable[[list[dict]], None] | None = None,
        prefill_repeats: int = PREFILL_REPEATS, request_repeats: int = REQUEST_REPEATS) -> list[dict]:  # fmt: skip
    """Every configuration until the time budget is spent; the rest are listed as skipped. (The
    keyword arguments let the CPU tests run the same code on the tiny preset.) timed=False runs only
    each configuration's warm-up: what bench.warm does in other processes to fill the compile caches,
    in the order of the timed run (a compiled step's recompiles depend on the order of its shapes).
    checkpoint(rows so far) runs after each timed configuration: a run stopped at a device call's
    limit keeps what it measured."""
    start = time.time()
    with torch.device(device):
        model = AuroraEdgeV(preset(preset_name, compressor="mlp"), backend="triton")
    model = model.to(dtype).eval()
    rows, requests_of, dtype_bytes = [], None, torch.finfo(dtype).bits // 8
    for batch, prompt, compressor, (backend, decode) in schedule(batches, runs, compressors):
        if requests_of != (batch, prompt, compressor):
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if compressor != model.config.compressor.kind:
                model.replace_compressor(compressor)
            lengths = prompt_lengths(batch, prompt)
            pixel_values, prompts = random_requests(model, batch, 512, lengths=lengths)
            floor = decode_floor_s(model, lengths, ceilings["copy_bandwidth"], dtype_bytes, new_tokens)
            floors = request_floors_ms(model, lengths, ceilings, dtype_bytes, new_tokens)
            requests_of = (batch, prompt, compressor)
        row = {"compressor": compressor, "visual_tokens": model.config.visual_tokens, "batch": batch, "prompt": prompt,
               "prompt_tokens": lengths, "backend": backend, "decode": decode, "floor_ms_per_step": floor * 1e3, **floors}  # fmt: skip
        rows.append(row)
        # the table's order, whatever the schedule's
        rows.sort(key=lambda r: (batches.index(r["batch"]), r["prompt"] == "long", compressors.index(r["compressor"]),
                                 runs.index((r["backend"], r["decode"]))))  # fmt: skip
        if time.time() - start > budget_s:
            row["skipped"] = f"time budget of {budget_s:.0f} s spent"
            continue
        model_backend, options = BACKENDS[backend]
        model.set_backend(model_backend).set_options(options)
        try:
            # the warm-up runs at the timed run's shapes (same prompts, same cache capacity): a
            # compiled step guarded on other shapes would recompile inside the timing, and
            # kernels specialised on other cache sizes would JIT-compile (or autotune) there. The
            # eager reference compiles nothing: two steps warm it (its B=32 run alone takes a minute)
            warm_up_tokens = new_tokens if model_backend == "triton" else min(new_tokens, 2)
            model.generate(pixel_values, prompts, warm_up_tokens, decode=decode)
            if not timed:
                continue
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            samples = []
            repeats = (
                1
                if model_backend != "triton"
                else request_repeats
                if decode == "cuda_graph"
                else min(request_repeats, EAGER_REQUEST_REPEATS)
            )
            for _ in range(repeats):
                _, stats = timed_generation(model, pixel_values, prompts, new_tokens, decode=decode)
                samples.append(stats)
            if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
                raise RuntimeError("torch.compile compiled a graph inside the timed run")
        except Exception as exc:  # reported in the row; one failing configuration does not stop the run
            row["error"] = error_text(exc)
            continue
        row.update(medians([request_times_ms(stats) for stats in samples]))
        per_step = row["tpot_ms"] / 1e3
        row.update(ms_per_step=row["tpot_ms"], tokens_per_s=batch / per_step, frac_floor=floor / per_step)
        setups = [stats["graph_setup_s"] for stats in samples if "graph_setup_s" in stats]  # a capture inside the timing
        if setups:
            row["graph_setup_ms"] = max(setups) * 1e3
        if model_backend == "triton":  # the eager reference's prefill takes up to 0.7 s (B=32): spared
            row["prefill_ms_median"] = median_prefill_ms(model, pixel_values, prompts, new_tokens, prefill_repeats)
        print(f"model {compressor:4s} B={batch:2d} {backend:9s} {decode:10s} TTFT {row['ttft_ms']:8.1f} ms  "
              f"step {row['ms_per_step']:7.2f} ms ({row['frac_floor']:.0%} of floor)  {row['tokens_per_s']:8.1f} tok/s",
              flush=True)  # fmt: skip
        if (backend, decode) in PROFILED_RUNS and compressor == "mlp" and batch in PROFILED_BATCHES:
            try:
                row["profile"] = profile_decode(model, pixel_values, prompts)
                row["profile"].update(projection_weight_bytes=projection_weight_bytes(model.config.llm, torch.finfo(dtype).bits // 8),
                                      copy_bandwidth=ceilings["copy_bandwidth"])  # fmt: skip
            except Exception as exc:  # the timing stands without it
                row["profile"] = {"error": error_text(exc)}
        if checkpoint is not None:
            checkpoint(rows)
    return rows


def schedule(batches, runs, compressors=COMPRESSORS) -> list[tuple[int, str, str, tuple[str, str]]]:
    """(batch, prompt, compressor, (backend, decode)) in the order they run: for each batch both
    compressors side by side (a spent budget never leaves one without the other), every run but
    LAST_RUNS, and at B=1 the LONG_PROMPT_RUNS again with the long prompt; then LAST_RUNS for every
    batch. ONE_SEQUENCE_RUNS run at B=1 alone, BATCHED_RUNS at B > 1 alone."""
    passes = ([r for r in runs if r not in LAST_RUNS], [r for r in runs if r in LAST_RUNS])
    order = []
    for pass_runs in passes:
        for batch in batches:
            order += [(batch, "ragged", compressor, run) for compressor in compressors for run in pass_runs
                      if run not in (BATCHED_RUNS if batch == 1 else ONE_SEQUENCE_RUNS)]  # fmt: skip
            if batch == 1:
                order += [
                    (1, "long", compressor, run) for compressor in compressors for run in pass_runs if run in LONG_PROMPT_RUNS
                ]
    return order


def markdown(rows: list[dict]) -> str:
    lines = [
        "## End to end: full preset, bf16, prompts 32..512 tokens, 128 new tokens",
        "",
        "Decode ms / step and tokens/s: for cuda_graph the graph's replays alone; its first step (run eagerly) and "
        "the capture are the graph set-up, counted in the whole request. Floor: LLM weights + KV cache read per "
        "step over the measured copy bandwidth.",
        "",
        f"Prefill ms: the median of {PREFILL_REPEATS} prefills of the same requests timed apart (TTFT is the one "
        "request's), the figure to compare prefill paths by.",
        "",
        "| compressor | B | backend | decode | TTFT ms | prefill ms | ms / step | floor ms / step | % of floor | tokens/s | "
        "whole request ms | graph set-up ms |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        head = f"| {r['compressor']} ({r['visual_tokens']}) | {batch_label(r)} | {r['backend']} | {r['decode']} |"
        if "ms_per_step" not in r:
            lines.append(f"{head} {r.get('skipped') or r.get('error')} | | | {r['floor_ms_per_step']:.2f} | | | | |")
            continue
        setup = f"{r['graph_setup_ms']:.1f}" if "graph_setup_ms" in r else "-"
        prefill = f"{r['prefill_ms_median']:.1f}" if "prefill_ms_median" in r else "-"
        lines.append(f"{head} {r['ttft_ms']:.1f} | {prefill} | {r['ms_per_step']:.2f} | {r['floor_ms_per_step']:.2f} | "
                     f"{r['frac_floor']:.0%} | {r['tokens_per_s']:.1f} | {r['request_ms']:.0f} | {setup} |")  # fmt: skip
    lines += request_markdown(rows)
    lines += ["", "Compressor mlp (64 visual tokens) against none (256), whole request (prefill + 127 decode steps):", ""]
    for batch, backend, decode, speedup in compressor_speedups(rows):
        lines.append(f"- B={batch}, {backend} {decode}: {speedup:.2f}x")
    for r in rows:
        if "profile" in r:
            lines += profile_markdown(r, rows)
    return "\n".join(lines) + "\n"


def batch_label(row: dict) -> str:
    """B, and the prompt where it is the long one."""
    return f"{row['batch']} ({LONG_PROMPT}-token prompt)" if row.get("prompt") == "long" else str(row["batch"])


REQUEST_KEYS = ("ttft", "second_token", "tpot", "request")


def request_markdown(rows: list[dict]) -> list[str]:
    """Each timed row's request times, median (min..max) of its requests, beside their floors."""
    timed = [r for r in rows if "tpot_ms" in r]
    if not timed:
        return []
    lines = ["", "Requests: median (min..max) over each configuration's requests, ms; floor from the cost model.", "",
             "| compressor | B | backend | decode | requests | TTFT (floor) | 2nd token (floor) | per token after (floor) | "
             "whole request (floor) |", "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in timed:
        cells = [
            f"{r[f'{k}_ms']:.2f} ({r[f'{k}_ms_min']:.2f}..{r[f'{k}_ms_max']:.2f}) ({r[f'{k}_floor_ms']:.2f})"
            for k in REQUEST_KEYS
        ]
        lines.append(f"| {r['compressor']} ({r['visual_tokens']}) | {batch_label(r)} | {r['backend']} | {r['decode']} | "
                     f"{r['requests']} | " + " | ".join(cells) + " |")  # fmt: skip
    return lines


def vit_images_per_s(device: torch.device, dtype=torch.bfloat16, batches=VIT_BATCHES, repeats: int = REQUEST_REPEATS,
                     preset_name: str = "aurora-edge-v-2b") -> list[dict]:  # fmt: skip
    """The ViT alone (the vision tower, Triton kernels) per batch: the median of `repeats` calls, each
    a CUDA-graph replay on a GPU (device time), an eager call elsewhere; images/s."""
    from aurora_kernels._cuda_graphs import Graphed, graphs_supported, run_on_side_stream
    from aurora_kernels.model.vision import VisionTower

    vision = preset(preset_name).vision
    with torch.device(device):
        tower = VisionTower(vision, "triton")
    tower = tower.to(dtype).eval()
    rows = []
    for batch in batches:
        pixels = torch.randn((batch, vision.num_channels, vision.image_size, vision.image_size), device=device, dtype=dtype)
        with torch.no_grad():
            if graphs_supported(device):
                run_on_side_stream(tower, pixels)
                graphed = Graphed(tower, pixels)
                call = graphed.replay
            else:
                call = functools.partial(tower, pixels)
            ms = median_wall_ms(call, repeats, device)
        rows.append({"batch": batch, "ms": ms, "images_per_s": batch / ms * 1e3, "graph_replay": graphs_supported(device)})
    return rows


def launches_per_step(profile: dict) -> float:
    """Kernel launches per decode step: at B=1 each costs a few microseconds of a step that the
    weights' floor puts near 1 ms, even inside a CUDA graph."""
    return sum(k["launches_per_step"] for k in profile["kernels"])


def kernel_notes(profile: dict) -> list[str]:
    """The kernels a batch-1 step is judged by: the projections' GEMV against the bytes of weights it
    streams (achieved TB/s and the fraction of the measured copy bandwidth), and decode attention's
    time per call (latency: a few hundred cached tokens a call)."""
    by_name = {k["name"]: k for k in profile.get("kernels", [])}
    notes = []
    gemv, weight_bytes, bandwidth = (
        by_name.get("_fused_linear_kernel"),
        profile.get("projection_weight_bytes"),
        profile.get("copy_bandwidth"),
    )
    if gemv and weight_bytes and bandwidth:
        rate = weight_bytes / (gemv["us_per_step"] * 1e-6)
        notes.append(f"_fused_linear_kernel: {gemv['us_per_step']:.1f} us a step for {weight_bytes / 1e6:.0f} MB of layer weights, "
                     f"{rate / 1e12:.2f} TB/s, {rate / bandwidth:.0%} of the copy bandwidth")  # fmt: skip
    for name in ("_decode_split_kernel", "_decode_merge_kernel"):
        if name in by_name:
            notes.append(f"{name}: {by_name[name]['us_per_step'] / by_name[name]['launches_per_step']:.2f} us a call")
    return notes


def profile_markdown(row: dict, rows: list[dict], top: int = 12) -> list[str]:
    """A profiled row's breakdown: device time per step by kernel group and the top kernels, set
    against the measured step times (what the kernels do not account for is launch gaps and host time)."""
    profile = row["profile"]
    lines = ["", f"### Where a decode step's time goes: compressor {row['compressor']}, B={row['batch']}, "
             f"eager {row['backend']} steps under torch.profiler", ""]  # fmt: skip
    if "error" in profile:
        return lines + [f"profile failed: {profile['error']}"]
    steps = {r["decode"]: r["ms_per_step"] for r in rows if "ms_per_step" in r and r["backend"] == row["backend"]
             and (r["compressor"], r["batch"]) == (row["compressor"], row["batch"])}  # fmt: skip
    groups = profile["us_per_step_by_group"]
    measured = ", ".join(f"{mode} {ms:.3f} ms" for mode, ms in steps.items())
    lines.append(
        f"Device kernels: {sum(groups.values()) / 1e3:.3f} ms per step ("
        + (", ".join(f"{g} {us / 1e3:.3f} ms" for g, us in sorted(groups.items())) or "none recorded: no GPU")
        + f"), {launches_per_step(profile):g} launches; measured step: {measured or 'not timed'}; "
        f"floor {row['floor_ms_per_step']:.3f} ms."
    )
    calls = ", ".join(f"{op} {n:g}" for op, n in profile["op_calls_per_step"].items())
    lines.append(f"Calls of this package's ops per step: {calls}.")
    if "prefill" in profile:
        lines.append(prefill_line(row))
    lines += [f"- {note}." for note in kernel_notes(profile)] + [""]
    if profile["kernels"]:
        lines += ["| kernel | group | us / step | launches / step |", "| --- | --- | ---: | ---: |"]
        lines += [f"| {k['name'][:80]} | {k['group']} | {k['us_per_step']:.1f} | {k['launches_per_step']:g} |"
                  for k in profile["kernels"][:top]]  # fmt: skip
    return lines


def prefill_line(row: dict) -> str:
    """The profiled prefill's device time and launches against the row's measured time to first token."""
    prefill = row["profile"]["prefill"]
    ttft = f"{row['ttft_ms']:.1f} ms" if "ttft_ms" in row else "not timed"
    return (
        f"Prefill of the same requests: device kernels {prefill['device_ms']:.3f} ms in {prefill['launches']:g} "
        f"launches, {sum(prefill['op_calls'].values()):g} calls of this package's ops; measured time to first token {ttft}."
    )


def compressor_speedups(rows: list[dict]) -> list[tuple]:
    """(batch label, backend, decode, none's request time over mlp's) wherever both ran."""
    timed = {(batch_label(r), r["backend"], r["decode"], r["compressor"]): r["request_ms"] for r in rows if "request_ms" in r}
    return [
        (b, backend, decode, timed[(b, backend, decode, "none")] / ms)
        for (b, backend, decode, kind), ms in timed.items()
        if kind == "mlp" and (b, backend, decode, "none") in timed
    ]


def write_vit(results_dir: str, rows: list[dict]) -> None:
    with open(os.path.join(results_dir, "model-vit.json"), "w") as f:
        json.dump(rows, f, indent=1)


def write(results_dir: str, rows: list[dict]) -> None:
    with open(os.path.join(results_dir, "model-e2e.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(results_dir, "model-e2e.md"), "w") as f:
        f.write(markdown(rows))
