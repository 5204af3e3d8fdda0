"""End-to-end model benchmark (GPU): the full preset in bf16, batches of 1, 8 and 32 requests with
ragged prompts of 32..512 tokens, 128 new tokens each. Per configuration: time to first token
(vision, compressor, fusion, LLM prefill, first logits) and decode tokens/s, for backend triton vs
reference, decode eager / torch.compile'd / CUDA-graphed, compressor mlp (64 visual tokens) vs none
(256). The decode step is set against its floor: the LLM weights plus the KV cache it must read,
over the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import os
import time

import torch

from aurora_kernels.generate import random_requests, timed_generation
from aurora_kernels.model import AuroraEdgeV, preset
from aurora_kernels.model.cost import kv_cache_bytes, part_parameters
from bench.harness import error_text

BATCHES = (1, 8, 32)
NEW_TOKENS = 128
# (backend, decode mode), the most telling first in case the time budget runs out; the eager reference
# reads cache lengths on the host, so it runs eager only; compile goes last (its first trace is slow)
RUNS = (("triton", "cuda_graph"), ("triton", "eager"), ("reference", "eager"), ("triton", "compile"))
COMPRESSORS = ("mlp", "none")


def prompt_lengths(batch: int) -> list[int]:
    return [32 + (512 - 32) * b // max(batch - 1, 1) for b in range(batch)]


def decode_floor_s(model, lengths: list[int], copy_bandwidth: float, dtype_bytes: int = 2, new_tokens: int = NEW_TOKENS) -> float:
    """Mean over the decode steps of (LLM weights + every request's KV cache) / copy bandwidth."""
    llm = model.config.llm
    weights = part_parameters(model.config)["llm"] * dtype_bytes
    visual = model.config.visual_tokens
    mean_context = [visual + n + new_tokens / 2 for n in lengths]
    kv = sum(kv_cache_bytes(llm, round(c), dtype_bytes) for c in mean_context)
    return (weights + kv) / copy_bandwidth


def run(device: torch.device, ceilings: dict, budget_s: float = 240.0, *, preset_name: str = "aurora-edge-v-2b",
        batches=BATCHES, runs=RUNS, new_tokens: int = NEW_TOKENS, dtype=torch.bfloat16, timed: bool = True) -> list[dict]:  # fmt: skip
    """Every configuration until the time budget is spent; the rest are listed as skipped. (The
    keyword arguments let the CPU tests run the same code on the tiny preset.) timed=False runs only
    each configuration's warm-up: what bench.warm does in other processes to fill the compile caches,
    in the order of the timed run (a compiled step's recompiles depend on the order of its shapes)."""
    start = time.time()
    with torch.device(device):
        model = AuroraEdgeV(preset(preset_name, compressor="mlp"), backend="triton")
    model = model.to(dtype).eval()
    rows = []
    for batch in batches:
        for compressor in COMPRESSORS:  # side by side, so a spent budget never leaves one without the other
            if compressor != model.config.compressor.kind:
                model.replace_compressor(compressor)
            lengths = prompt_lengths(batch)
            pixel_values, prompts = random_requests(model, batch, 512, lengths=lengths)
            floor = decode_floor_s(model, lengths, ceilings["copy_bandwidth"], torch.finfo(dtype).bits // 8, new_tokens)
            for backend, decode in runs:
                row = {"compressor": compressor, "visual_tokens": model.config.visual_tokens, "batch": batch,
                       "backend": backend, "decode": decode, "floor_ms_per_step": floor * 1e3}  # fmt: skip
                rows.append(row)
                if time.time() - start > budget_s:
                    row["skipped"] = f"time budget of {budget_s:.0f} s spent"
                    continue
                model.set_backend(backend)
                try:
                    # the warm-up runs at the timed run's shapes (same prompts, same cache capacity): a
                    # compiled step guarded on other shapes would recompile inside the timing, and
                    # kernels specialised on other cache sizes would JIT-compile there
                    model.generate(pixel_values, prompts, new_tokens, decode=decode)
                    if not timed:
                        continue
                    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
                    _, stats = timed_generation(model, pixel_values, prompts, new_tokens, decode=decode)
                    if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
                        raise RuntimeError("torch.compile compiled a graph inside the timed run")
                except Exception as exc:  # reported in the row; one failing configuration does not stop the run
                    row["error"] = error_text(exc)
                    continue
                per_step = stats["decode_s"] / stats["decode_steps"]
                row.update(ttft_ms=stats["prefill_s"] * 1e3, ms_per_step=per_step * 1e3,
                           request_ms=(stats["prefill_s"] + stats["decode_s"]) * 1e3,
                           tokens_per_s=stats["decode_tokens_per_s"], frac_floor=floor / per_step)  # fmt: skip
                print(f"model {compressor:4s} B={batch:2d} {backend:9s} {decode:10s} TTFT {row['ttft_ms']:8.1f} ms  "
                      f"step {row['ms_per_step']:7.2f} ms ({row['frac_floor']:.0%} of floor)  {row['tokens_per_s']:8.1f} tok/s",
                      flush=True)  # fmt: skip
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "## End to end: full preset, bf16, prompts 32..512 tokens, 128 new tokens",
        "",
        "Decode ms/step includes, for cuda_graph, the one capture after the first step. Floor: LLM weights + KV cache "
        "read per step over the measured copy bandwidth.",
        "",
        "| compressor | B | backend | decode | TTFT ms | ms / step | floor ms / step | % of floor | tokens/s | whole request ms |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        head = f"| {r['compressor']} ({r['visual_tokens']}) | {r['batch']} | {r['backend']} | {r['decode']} |"
        if "ms_per_step" not in r:
            lines.append(f"{head} {r.get('skipped') or r.get('error')} | | {r['floor_ms_per_step']:.2f} | | | |")
            continue
        lines.append(f"{head} {r['ttft_ms']:.1f} | {r['ms_per_step']:.2f} | {r['floor_ms_per_step']:.2f} | "
                     f"{r['frac_floor']:.0%} | {r['tokens_per_s']:.1f} | {r['request_ms']:.0f} |")  # fmt: skip
    lines += ["", "Compressor mlp (64 visual tokens) against none (256), whole request (prefill + 127 decode steps):", ""]
    for batch, backend, decode, speedup in compressor_speedups(rows):
        lines.append(f"- B={batch}, {backend} {decode}: {speedup:.2f}x")
    return "\n".join(lines) + "\n"


def compressor_speedups(rows: list[dict]) -> list[tuple]:
    """(batch, backend, decode, none's request time over mlp's) wherever both ran."""
    timed = {(r["batch"], r["backend"], r["decode"], r["compressor"]): r["request_ms"] for r in rows if "request_ms" in r}
    return [(b, backend, decode, timed[(b, backend, decode, "none")] / ms)
            for (b, backend, decode, kind), ms in timed.items() if kind == "mlp" and (b, backend, decode, "none") in timed]


def write(results_dir: str, rows: list[dict]) -> None:
    import json

    with open(os.path.join(results_dir, "model-e2e.json"), "w") as f:
        json.dump(rows, f, indent=1)
    with open(os.path.join(results_dir, "model-e2e.md"), "w") as f:
        f.write(markdown(rows))
