"""The host's share of a request, measured where there is no GPU: the model's Python, our launchers and
torch's dispatcher per prefill and per eager decode step, with every Triton launch stubbed out.

On a GPU an eager step of the model is host-bound (docs/performance-log.md): the device finishes each
kernel before the host has issued the next. What the host spends does not depend on the widths, so
this runs the model at the full preset's depth (28 LLM layers, 27 vision layers) with the tiny
preset's widths, on CPU tensors, under the interpreter with each Triton kernel's launch replaced by
nothing: what remains is the host's work. Torch's own ops still run (on tiny tensors: microseconds
each, as their host side costs on a GPU). Value checks are off, as on CUDA. Counted: the Triton
launches and the torch ops that would launch a kernel (views excluded) per prefill and per step.
CPU figures: they bound what a GPU run's host side costs, they are not GPU times.

    TRITON_INTERPRET=1 python -m bench.model_host
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import aurora_kernels as ak
from bench.harness import markdown_report, median_wall_ms, write_report

REPEATS = 7
# short prompts: the ops per prefill do not depend on them, the CPU compute that blurs the host time does
PROMPT_LENGTHS = {1: [32], 8: [8] * 8}
CPU = torch.device("cpu")  # the host clock alone: no device to wait for


class CountOps(TorchDispatchMode):
    """Counts the torch ops that would launch a device kernel: not views, not allocations (empty*,
    which only take memory from the caching allocator)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and not func.name().startswith("aten::empty"):
            self.ops += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def stubbed_triton_launches():
    """Every Triton kernel launch does nothing (and is counted); yields the count, a one-item list."""
    from triton.runtime.interpreter import InterpretedFunction

    launches = [0]
    run = InterpretedFunction.run

    def no_launch(self, *args, **kwargs):
        launches[0] += 1

    InterpretedFunction.run = no_launch
    try:
        yield launches
    finally:
        InterpretedFunction.run = run


def deep_tiny_model():
    """The tiny preset's widths at the full preset's depth, triton backend, fp32."""
    from aurora_kernels.model import AuroraEdgeV, preset

    torch.manual_seed(0)
    config = preset("tiny", compressor="mlp", vision={"num_layers": 27}, llm={"num_layers": 28})
    return AuroraEdgeV(config, backend="triton").eval()


def host_costs(repeats: int = REPEATS, prompt_lengths: dict = PROMPT_LENGTHS) -> list[dict]:
    """Per batch: host microseconds of one prefill and of one eager decode step (medians of
    `repeats`), and their Triton launches and kernel-launching torch ops."""
    model = deep_tiny_model()
    vision, rows = model.config.vision, []
    for batch, lengths in prompt_lengths.items():
        gen = torch.Generator().manual_seed(batch)
        pixel_values = torch.randn((batch, 3, vision.image_size, vision.image_size), generator=gen)
        prompts = [torch.randint(0, model.config.llm.vocab_size, (n,), generator=gen) for n in lengths]
        with torch.no_grad(), ak.value_checks("never"), stubbed_triton_launches() as launches:
            logits, kv = model.prefill(pixel_values, prompts, 2 * repeats + 2)
            tokens = torch.zeros(batch, dtype=torch.int64)
            prefill_us = median_wall_ms(lambda: model.prefill(pixel_values, prompts, 2 * repeats + 2), repeats, CPU) * 1e3
            step_us = median_wall_ms(lambda: model.decode_step(tokens, kv), repeats, CPU) * 1e3
            counts = {}
            for name, fn in (
                ("prefill", lambda: model.prefill(pixel_values, prompts, 2)),
                ("step", lambda: model.decode_step(tokens, kv)),
            ):
                launches[0] = 0
                with CountOps() as ops:
                    fn()
                counts[name] = (launches[0], ops.ops)
        rows.append({"batch": batch, "prompt_tokens": sum(lengths), "prefill_host_us": prefill_us, "step_host_us": step_us,
                     "prefill_triton_launches": counts["prefill"][0], "prefill_torch_ops": counts["prefill"][1],
                     "step_triton_launches": counts["step"][0], "step_torch_ops": counts["step"][1]})  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    return markdown_report(
        "Host cost of a request, Triton launches stubbed (CPU)",
        f"The full preset's depth at the tiny preset's widths, fp32, value checks off; {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}. Medians of {REPEATS}. CPU figures: what the host spends, not GPU times.",
        ["B", "prompt tokens", "prefill host us", "Triton launches", "torch ops", "eager step host us", "Triton launches",
         "torch ops"],
        [[r["batch"], r["prompt_tokens"], f"{r['prefill_host_us']:,.0f}", r["prefill_triton_launches"], r["prefill_torch_ops"],
          f"{r['step_host_us']:,.0f}", r["step_triton_launches"], r["step_torch_ops"]] for r in rows],
    )  # fmt: skip


def report(results_root: str) -> str:
    return write_report(results_root, "model-host-cpu.md", markdown(host_costs()))


if __name__ == "__main__":
    print(markdown(host_costs()))
