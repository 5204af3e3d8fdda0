"""Everything a prefill needs from the host, built from the requests' lengths before the first launch
and sent to the device in two copies.

A prefill packs B requests: request b is M compressed visual tokens, its prompt's L_b tokens (through
the fusion) and, when a no-cache recompute checks a generation, the G_b tokens generated after it.
The lengths are host integers already (tensor metadata), so every offset, position, gather index and
cache slot follows from them on the host: built here, in a pinned buffer, and copied to the device
without blocking. Nothing between the first launch and the first token then reads the device back (a
`.tolist()`, `.item()` or `torch.tensor(lengths)` mid-prefill waits for every kernel launched before
it: the GPU drains while the host catches up).

The packed LLM input is gathered, not concatenated piece by piece: the encoder's compressed tokens
[B * M, C], the fused prompts [sum L, C] and the generated tokens' embeddings [sum G, C] are stacked
once, and `gather` picks each request's rows in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefillPlan:
    """Device tensors of one prefill (int64 unless said), and the host ints they came from."""

    lengths: list[int]  # per request: M + L_b + G_b, the rows the LLM sees
    prompt_lengths: list[int]
    text_offsets: torch.Tensor  # int32 [B + 1]: the fusion's cu_seqlens over the packed prompts
    text_positions: torch.Tensor  # [sum L]: each prompt token's position in its prompt (the fusion's RoPE)
    offsets: torch.Tensor  # int32 [B + 1]: the LLM's cu_seqlens
    positions: torch.Tensor  # [T]: each row's position in its sequence
    gather: torch.Tensor  # [T]: rows of cat(compressed, fused, generated) in LLM order
    last_rows: torch.Tensor  # [B]: each request's last row (its first new token's logits)
    seqlens: torch.Tensor  # int32 [B]: the cache lengths after the prefill
    slots: torch.Tensor | None  # [T]: each row's row in a layer's cache viewed as [rows, Hkv, D]
    input_ids: torch.Tensor | None  # [sum L]: the prompts, when they came from the host
    generated_ids: torch.Tensor  # [sum G]: the generated tokens to embed after each fused prompt

    @property
    def max_length(self) -> int:
        return max(self.lengths)

    @property
    def max_prompt_length(self) -> int:
        return max(self.prompt_lengths)


def _cumulative(lengths: list[int]) -> list[int]:
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return offsets


def build_prefill_plan(input_ids, visual_tokens: int, device: torch.device, cache=None, generated=None) -> PrefillPlan:
    """The plan of prefilling `input_ids` (a list of B 1-D int64 prompts) after `visual_tokens`
    compressed tokens each, optionally followed by `generated[b]` (lists of ints). cache: the
    KVCache whose first B sequences the prefill fills (its slots), or None (no cache)."""
    batch = len(input_ids)
    prompt_lengths = [int(ids.numel()) for ids in input_ids]
    extra = [len(g) for g in generated] if generated is not None else [0] * batch
    lengths = [visual_tokens + n + g for n, g in zip(prompt_lengths, extra)]
    text_offsets, offsets = _cumulative(prompt_lengths), _cumulative(lengths)
    gen_offsets = _cumulative(extra)
    text_rows, gen_rows = batch * visual_tokens, batch * visual_tokens + text_offsets[-1]
    text_positions, positions, gather, slots = [], [], [], []
    for b in range(batch):
        positions += range(lengths[b])
        text_positions += range(prompt_lengths[b])
        gather += range(b * visual_tokens, (b + 1) * visual_tokens)
        gather += range(text_rows + text_offsets[b], text_rows + text_offsets[b + 1])
        gather += range(gen_rows + gen_offsets[b], gen_rows + gen_offsets[b + 1])
        if cache is not None:
            slots += cache.host_slots(b, lengths[b])
    generated_ids = [t for g in generated for t in g] if generated is not None else []
    parts = {"text_positions": text_positions, "positions": positions, "gather": gather,
             "last_rows": [o - 1 for o in offsets[1:]], "slots": slots, "generated_ids": generated_ids}  # fmt: skip
    host_ids = all(ids.device.type == "cpu" for ids in input_ids)
    if host_ids:  # prompts on the host ride in the same copy
        parts["input_ids"] = torch.cat([ids.reshape(-1) for ids in input_ids])
    long_host = [torch.as_tensor(part, dtype=torch.int64) for part in parts.values()]
    views = dict(zip(parts, _to_device(torch.cat(long_host), device).split([len(part) for part in long_host])))
    ints = _to_device(torch.tensor([*text_offsets, *offsets, *lengths], dtype=torch.int32), device).split([batch + 1] * 2 + [batch])
    return PrefillPlan(
        lengths=lengths, prompt_lengths=prompt_lengths, text_offsets=ints[0], text_positions=views["text_positions"],
        offsets=ints[1], positions=views["positions"], gather=views["gather"], last_rows=views["last_rows"], seqlens=ints[2],
        slots=views["slots"] if cache is not None else None, input_ids=views.get("input_ids"),
        generated_ids=views["generated_ids"],
    )  # fmt: skip


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One copy to `device` that does not wait for the device: from pinned memory where there is a
    GPU to pin for."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
