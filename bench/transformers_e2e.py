"""transformers' Qwen2ForCausalLM at the model's LLM shapes (Qwen2.5-1.5B, random weights) as its
users run it: a left-padded batch of ragged prompts through a prefill forward and a greedy
`generate`, on transformers' SDPA attention, on flash-attn's "flash_attention_2" where flash-attn
is installed (else reported missing), and under `patch_qwen2` ("aurora"): one model, one clock.

Per batch size: the prefill forward's milliseconds (no cache), the whole generate's for NEW_TOKENS
new tokens (dynamic cache, every request generating all of them), medians of `repeats` after a
warm-up, and the relative error of each implementation's last-position logits against SDPA's
(reported, not asserted: a benchmark). The GPU's phase "transformers" of `make gpu-check` writes
transformers-e2e.json; the tests run it on CPU at tiny widths, where its times mean nothing.

On a CPU (`make bench`, `host_rows`): what the host spends on the patched model, as bench.model_host
measures our own model: 28 layers at tiny widths, Triton launches stubbed, value checks off as on
CUDA. Per forward (a padded prefill; a decode step of a padded and of an unpadded batch): the
host's microseconds, Triton launches, kernel-launching torch ops and the host reads torch's
dispatcher sees (item, nonzero, equal: each a sync on a GPU), beside the unpatched model's host
microseconds, ops and reads (SDPA on the same weights, not stubbed; the two take turns).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import statistics
import time

import torch

import aurora_kernels as ak
from aurora_kernels.model.config import LLMConfig
from aurora_kernels.testing import rel_error
from bench.harness import error_text, markdown_report, median_wall_ms, write_report
from bench.model_host import CPU, CountOps, stubbed_triton_launches

BATCHES = (1, 8)
NEW_TOKENS = 64
PROMPT_TOKENS = (32, 512)  # the ragged prompts' shortest and longest
IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "aurora")


def qwen2_config(llm: LLMConfig):
    """transformers' Qwen2Config of our LLMConfig (the same architecture)."""
    import transformers

    return transformers.Qwen2Config(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads, num_key_value_heads=llm.num_kv_heads,
        rms_norm_eps=llm.rms_norm_eps, rope_theta=llm.rope_theta, max_position_embeddings=llm.max_position_embeddings,
        tie_word_embeddings=llm.tie_word_embeddings,
    )  # fmt: skip


def padded_prompts(batch: int, vocab_size: int, prompt_tokens: tuple[int, int], seed: int = 0):
    """(input_ids, attention_mask) [B, longest]: ragged prompts, left-padded with id 0, as a
    tokenizer with padding_side="left" gives them for generation."""
    gen = torch.Generator().manual_seed(seed)
    shortest, longest = prompt_tokens
    lengths = [longest] + torch.randint(shortest, longest + 1, (batch - 1,), generator=gen).tolist()
    ids = torch.zeros(batch, longest, dtype=torch.int64)
    mask = torch.zeros(batch, longest, dtype=torch.int64)
    for b, n in enumerate(lengths):
        ids[b, longest - n :] = torch.randint(1, vocab_size, (n,), generator=gen)
        mask[b, longest - n :] = 1
    return ids, mask


def _missing(implementation: str) -> str | None:
    if implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed"
    return None


@contextlib.contextmanager
def _running_on(model, implementation: str):
    """The model on `implementation` inside the block, as it was after."""
    from aurora_kernels.integrations import patched

    if implementation == "aurora":
        with patched(model):
            yield
        return
    previous = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def run(device: torch.device, dtype: torch.dtype = torch.bfloat16, llm: LLMConfig = LLMConfig(), batches=BATCHES,
        new_tokens: int = NEW_TOKENS, prompt_tokens: tuple[int, int] = PROMPT_TOKENS, repeats: int = 3,
        budget_s: float = float("inf")) -> list[dict]:  # fmt: skip
    """One row per (batch, implementation): prefill_ms, generate_ms, new_tokens_per_s (the batch's
    new tokens over the whole generate's time, prefill included), logits_rel_error against SDPA's;
    or "missing" / "skipped" (the budget ran out) with the reason."""
    import transformers

    start = time.time()
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: 1.5B parameters' random init on a CPU takes a while
        model = transformers.Qwen2ForCausalLM(qwen2_config(llm)).to(dtype).eval()
    rows = []
    for batch in batches:
        ids, mask = (t.to(device) for t in padded_prompts(batch, llm.vocab_size, prompt_tokens, seed=batch))
        settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
        last_logits = {}
        for implementation in IMPLEMENTATIONS:
            row = {"batch": batch, "implementation": implementation, "prompt_tokens": int(mask.sum()), "new_tokens": new_tokens}
            missing = _missing(implementation)
            if missing or time.time() - start > budget_s:
                rows.append({**row, "missing" if missing else "skipped": missing or "the phase's time budget ran out"})
                continue
            try:
                with torch.no_grad(), _running_on(model, implementation):
                    logits = model(ids, attention_mask=mask, use_cache=False).logits[:, -1]  # the warm-up
                    model.generate(ids, attention_mask=mask, **settings)
                    prefill_ms = median_wall_ms(lambda: model(ids, attention_mask=mask, use_cache=False), repeats, device)
                    generate_ms = median_wall_ms(lambda: model.generate(ids, attention_mask=mask, **settings), repeats, device)
            except Exception as exc:  # the other implementations' rows stand
                rows.append({**row, "missing": f"failed: {error_text(exc)}"})
                continue
            last_logits[implementation] = logits.float()
            rows.append({**row, "prefill_ms": prefill_ms, "generate_ms": generate_ms,
                         "new_tokens_per_s": batch * new_tokens / (generate_ms / 1e3),
                         "logits_rel_error": rel_error(logits, last_logits["sdpa"]) if "sdpa" in last_logits else None})  # fmt: skip
    return rows


def summary_lines(rows: list[dict]) -> list[str]:
    """One line per batch: each implementation's generate and prefill times, and its speed-up over SDPA."""
    lines = []
    for batch in sorted({r["batch"] for r in rows}):
        sdpa = next((r for r in rows if r["batch"] == batch and r["implementation"] == "sdpa" and "generate_ms" in r), None)
        parts = []
        for r in (r for r in rows if r["batch"] == batch):
            if "generate_ms" not in r:
                parts.append(f"{r['implementation']} {r.get('missing') or r.get('skipped')}")
                continue
            speedup = f" ({sdpa['generate_ms'] / r['generate_ms']:.2f}x SDPA)" if sdpa and r is not sdpa else ""
            parts.append(f"{r['implementation']} generate {r['generate_ms']:.1f} ms{speedup}, prefill {r['prefill_ms']:.2f} ms")
        first = rows[[r["batch"] for r in rows].index(batch)]
        lines.append(f"B={batch} ({first['prompt_tokens']} prompt tokens, {first['new_tokens']} new each): " + "; ".join(parts))
    return lines


# the host's share (CPU): the LLM's depth at tiny widths, a padded batch of 3 short prompts
HOST_LLM = LLMConfig(vocab_size=500, hidden_size=128, num_layers=28, num_heads=4, num_kv_heads=2, head_dim=32,
                     intermediate_size=256, max_position_embeddings=256)  # fmt: skip
HOST_REPEATS = 7
# the ops that read a tensor's contents on the host, as torch's dispatcher sees them (.tolist() it does not)
HOST_READS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::equal")


class CountOpsAndReads(CountOps):
    """CountOps, and the host reads among the ops (HOST_READS)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func.name() in HOST_READS
        return super().__torch_dispatch__(func, types, args, kwargs)


def host_rows(llm: LLMConfig = HOST_LLM, repeats: int = HOST_REPEATS) -> list[dict]:
    """Per forward (prefill of a left-padded batch of 3; a decode step of that batch; a decode step
    of an unpadded batch of 3): the patched model's host us (median of `repeats`), Triton launches,
    torch ops and host reads, and the unpatched model's host us, torch ops and host reads. The two
    models hold the same weights and take turns, call by call, so that this CPU's drift between
    runs falls on both alike."""
    import copy

    import transformers

    from aurora_kernels.integrations import patch_qwen2, unpatch

    torch.manual_seed(0)
    unpatched_model = transformers.Qwen2ForCausalLM(qwen2_config(llm)).eval()
    model = copy.deepcopy(unpatched_model)
    ids, mask = padded_prompts(3, llm.vocab_size, (4, 12), seed=3)
    unpadded_ids, unpadded_mask = ids[:, -4:], torch.ones(3, 4, dtype=torch.int64)
    next_ids = torch.ones(3, 1, dtype=torch.int64)

    def forwards(model):
        """(name, call) pairs; each decode step runs on a cache it crops back afterwards."""
        calls = [("padded prefill", lambda: model(ids, attention_mask=mask, use_cache=False))]
        for name, prompt, prompt_mask in (("padded", ids, mask), ("unpadded", unpadded_ids, unpadded_mask)):
            cache = model(prompt, attention_mask=prompt_mask).past_key_values
            step_mask = torch.cat([prompt_mask, torch.ones(3, 1, dtype=torch.int64)], 1)

            def step(cache=cache, step_mask=step_mask):
                model(next_ids, attention_mask=step_mask, past_key_values=cache)
                cache.crop(-1)  # the step's token out again (a negative count: 4.x and 5 alike)

            calls.append((f"{name} decode step", step))
        return calls

    def counted(call, launches):
        launches[0], counting = 0, CountOpsAndReads()
        with counting:
            call()
        return launches[0], counting

    rows = []
    with torch.no_grad(), ak.value_checks("never"), stubbed_triton_launches() as launches:
        patch_qwen2(model)
        try:
            for (name, unpatched_call), (_, call) in zip(forwards(unpatched_model), forwards(model)):
                unpatched_call()
                call()  # the first call fuses gate_up and makes the unpadding plan's thread state
                times = {unpatched_call: [], call: []}
                for _ in range(repeats):
                    for fn in times:
                        times[fn].append(median_wall_ms(fn, 1, CPU) * 1e3)
                _, unpatched = counted(unpatched_call, launches)
                triton_launches, counting = counted(call, launches)
                rows.append({"forward": name, "repeats": repeats, "host_us": statistics.median(times[call]),
                             "triton_launches": triton_launches, "torch_ops": counting.ops, "host_reads": counting.reads,
                             "unpatched_host_us": statistics.median(times[unpatched_call]),
                             "unpatched_torch_ops": unpatched.ops, "unpatched_host_reads": unpatched.reads})  # fmt: skip
        finally:
            unpatch(model)
    return rows


def host_markdown(rows: list[dict], llm: LLMConfig = HOST_LLM) -> str:
    return markdown_report(
        "transformers' Qwen2, patched: the host's share of a forward, Triton launches stubbed (CPU)",
        f"{llm.num_layers} layers at hidden size {llm.hidden_size}, a left-padded batch of 3 prompts of 4..12 tokens, fp32, "
        f"value checks off; {os.cpu_count()} CPU cores, torch {torch.__version__}. Medians of {rows[0]['repeats']}, the "
        "two models taking turns. Host reads: the reads of tensor contents torch's dispatcher sees (each a sync on a GPU; "
        "transformers' own included). CPU figures: what the host spends, not GPU times. Unpatched: transformers' SDPA "
        "on the same weights, not stubbed (its ops compute, on tensors this small in microseconds); the patched "
        "model's Triton launches cost nothing here, where on a GPU Triton's launcher adds its own time to each.",
        ["forward", "host us", "Triton launches", "torch ops", "host reads", "unpatched host us", "unpatched torch ops",
         "unpatched host reads"],
        [[r["forward"], f"{r['host_us']:,.0f}", r["triton_launches"], r["torch_ops"], r["host_reads"],
          f"{r['unpatched_host_us']:,.0f}", r["unpatched_torch_ops"], r["unpatched_host_reads"]] for r in rows],
        text_columns=1,
    )  # fmt: skip


def host_report(results_root: str) -> str:
    return write_report(results_root, "transformers-host-cpu.md", host_markdown(host_rows()))
