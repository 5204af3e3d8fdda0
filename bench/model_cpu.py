"""The model on this machine's CPU (`make bench` without a GPU): the cost model of the full preset
(compressor mlp / pool vs none) and wall-clock timings of the eager model (backend "reference"),
tiny and full preset, compressor mlp vs none. CPU figures only: they say nothing about a GPU."""

from __future__ import annotations

import os
import time

import torch

from aurora_kernels.generate import random_requests, timed_generation
from aurora_kernels.model import AuroraEdgeV, preset
from aurora_kernels.model.cost import comparison_markdown

PROMPT_LEN = 32


def cost_report(results_root: str) -> str:
    text = "# Cost model (analytic, from the config)\n\n" + "\n".join(
        comparison_markdown("aurora-edge-v-2b", batch, PROMPT_LEN) for batch in (1, 32)
    )
    with open(os.path.join(results_root, "cost-model.md"), "w") as f:
        f.write(text)
    return text


def _time_model(name: str, max_new_tokens: int, warmup: bool) -> list[dict]:
    """One prefill and a few decode steps, fp32, batch 1, compressor mlp then none (the same weights
    otherwise: only the compressor is swapped). warmup: one untimed generation first (the tiny
    preset's times are otherwise mostly first-call overhead)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    model = AuroraEdgeV(preset(name, compressor="mlp"), backend="reference").eval()
    build_s = time.perf_counter() - start
    rows = []
    for kind in ("mlp", "none"):
        if kind != model.config.compressor.kind:
            model.replace_compressor(kind)
        pixel_values, prompts = random_requests(model, 1, PROMPT_LEN)
        if warmup:
            model.generate(pixel_values, prompts, 2)
        _, stats = timed_generation(model, pixel_values, prompts, max_new_tokens)
        rows.append({"preset": name, "compressor": kind, "visual": model.config.visual_tokens, "build_s": build_s, **stats})
    return rows


def cpu_timings(results_root: str) -> str:
    rows = _time_model("tiny", 16, warmup=True) + _time_model("aurora-edge-v-2b", 4, warmup=False)
    lines = [
        "# Eager model on this CPU (backend reference, fp32, batch 1, 32-token prompt)",
        "",
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads. CPU figures only.",
        "",
        "| preset | compressor | visual tokens into the LLM | prefill ms | decode steps | decode ms / step | tokens/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        per_step = r["decode_s"] / r["decode_steps"] * 1e3
        lines.append(f"| {r['preset']} | {r['compressor']} | {r['visual']} | {r['prefill_s'] * 1e3:,.0f} | {r['decode_steps']} "
                     f"| {per_step:,.1f} | {r['decode_tokens_per_s']:.2f} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    with open(os.path.join(results_root, "model-cpu.md"), "w") as f:
        f.write(text)
    return text
