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

Padded to a static shape (PaddedShape: a batch bucket, and buckets of prompt tokens and LLM rows),
the same prefill is a function of fixed-size tensors, which a CUDA graph can capture once and
replay for every request of that shape. The padding is inert: the batch's extra sequences have no
rows (length 0), and the extra rows form one more sequence of their own, after the others, whose
prompt sees no visual token, whose positions are 0 and whose cache writes all go to the cache's
scratch slot, which no sequence reads. Its outputs are garbage that no real row ever reads:
attention stays inside a sequence, and every other op works row by row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


class PaddedShape(NamedTuple):
    batch: int  # sequences (the requests, then inert ones of length 0)
    prompt_tokens: int  # packed prompt rows
    rows: int  # packed LLM rows

    @property
    def long_size(self) -> int:
        """int64 elements of the plan: prompt positions and ids, LLM positions, gather and slots, last rows."""
        return 2 * self.prompt_tokens + 3 * self.rows + self.batch

    @property
    def int_size(self) -> int:
        """int32 elements: two cu_seqlens of batch + 1 sequences (the padding one), the cache lengths."""
        return 2 * (self.batch + 2) + self.batch


@dataclass
class PrefillPlan:
    """Device tensors of one prefill (int64 unless said), and the host ints they came from."""

    lengths: list[int]  # per request: M + L_b + G_b, the rows the LLM sees
    prompt_lengths: list[int]
    max_length: int  # the longest sequence the LLM's attention may see (padded: the rows)
    max_prompt_length: int  # the same for the fusion's
    text_offsets: torch.Tensor  # int32 [S + 1]: the fusion's cu_seqlens over the packed prompts
    text_positions: torch.Tensor  # [prompt rows]: each prompt token's position in its prompt (the fusion's RoPE)
    offsets: torch.Tensor  # int32 [S + 1]: the LLM's cu_seqlens
    positions: torch.Tensor  # [rows]: each row's position in its sequence
    gather: torch.Tensor  # [rows]: rows of cat(compressed, fused, generated) in LLM order
    last_rows: torch.Tensor  # [B]: each request's last row (its first new token's logits)
    seqlens: torch.Tensor  # int32 [B]: the cache lengths after the prefill
    slots: torch.Tensor | None  # [rows]: each row's row in a layer's cache viewed as [rows, Hkv, D]
    input_ids: torch.Tensor | None  # [prompt rows]: the prompts, when they came from the host or the plan is padded
    generated_ids: torch.Tensor  # [sum G]: the generated tokens to embed after each fused prompt


def _cumulative(lengths: list[int]) -> list[int]:
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return offsets


def build_prefill_plan(input_ids, visual_tokens: int, device: torch.device, cache=None, generated=None, *,
                       padded: PaddedShape | None = None, into: tuple[torch.Tensor, torch.Tensor] | None = None) -> PrefillPlan:  # fmt: skip
    """The plan of prefilling `input_ids` (a list of B 1-D int64 prompts) after `visual_tokens`
    compressed tokens each, optionally followed by `generated[b]` (lists of ints). cache: the
    KVCache whose first B sequences the prefill fills (its slots), or None (no cache). padded: the
    static shape to pad to (the cache then needs its scratch slot). into: the (int64, int32) device
    buffers of `padded`'s sizes to copy into (a captured prefill's inputs), instead of new ones."""
    batch = len(input_ids)
    prompt_lengths = [int(ids.numel()) for ids in input_ids]
    extra = [len(g) for g in generated] if generated is not None else [0] * batch
    lengths = [visual_tokens + n + g for n, g in zip(prompt_lengths, extra)]
    text_lengths, llm_lengths, seqlens = list(prompt_lengths), list(lengths), list(lengths)
    if padded is not None:  # inert sequences of no rows, then one sequence holding the padding rows
        inert = padded.batch - batch
        text_lengths += [0] * inert + [padded.prompt_tokens - sum(prompt_lengths)]
        llm_lengths += [0] * inert + [padded.rows - sum(lengths)]
        seqlens += [0] * inert
    text_offsets, offsets, gen_offsets = _cumulative(text_lengths), _cumulative(llm_lengths), _cumulative(extra)
    text_rows, gen_rows = batch * visual_tokens, batch * visual_tokens + sum(prompt_lengths)
    if padded is not None:
        text_rows, gen_rows = padded.batch * visual_tokens, padded.batch * visual_tokens + padded.prompt_tokens
    text_positions, positions, gather, slots = [], [], [], []
    for b in range(batch):
        positions += range(lengths[b])
        text_positions += range(prompt_lengths[b])
        gather += range(b * visual_tokens, (b + 1) * visual_tokens)
        gather += range(text_rows + text_offsets[b], text_rows + text_offsets[b + 1])
        gather += range(gen_rows + gen_offsets[b], gen_rows + gen_offsets[b + 1])
        if cache is not None:
            slots += cache.host_slots(b, lengths[b])
    last_rows = [o - 1 for o in offsets[1 : batch + 1]]
    host_ids = all(ids.device.type == "cpu" for ids in input_ids)
    ids = [ids.reshape(-1) for ids in input_ids] if host_ids else []  # host tensors: no read of a device
    if padded is not None:  # padding rows: position 0, row 0, the scratch slot, id 0
        pad_text, pad_rows = padded.prompt_tokens - len(text_positions), padded.rows - len(positions)
        text_positions += [0] * pad_text
        positions, gather, slots = positions + [0] * pad_rows, gather + [0] * pad_rows, slots + [cache.scratch_slot] * pad_rows
        last_rows += [0] * (padded.batch - batch)
        ids.append(torch.zeros(padded.prompt_tokens - (sum(prompt_lengths) if host_ids else 0), dtype=torch.int64))
    parts = {"text_positions": text_positions, "positions": positions, "gather": gather, "last_rows": last_rows,
             "slots": slots, "generated_ids": [t for g in generated for t in g] if generated is not None else []}  # fmt: skip
    parts = {name: torch.tensor(part, dtype=torch.int64) for name, part in parts.items()}
    parts["input_ids"] = torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int64)
    long_host = torch.cat(list(parts.values()))
    int_host = torch.tensor([*text_offsets, *offsets, *seqlens], dtype=torch.int32)
    long_device, int_device = (_copy(long_host, device, None), _copy(int_host, device, None)) if into is None else (
        _copy(long_host, device, into[0]), _copy(int_host, device, into[1]))  # fmt: skip
    views = dict(zip(parts, long_device.split([len(part) for part in parts.values()])))
    sequences = len(text_lengths)
    ints = int_device.split([sequences + 1, sequences + 1, len(seqlens)])
    if not host_ids:  # prompts already on the device: one device copy, no read
        views["input_ids"] = torch.cat(list(input_ids)) if padded is None else views["input_ids"]
        if padded is not None:
            views["input_ids"][: sum(prompt_lengths)].copy_(torch.cat(list(input_ids)))
    return PrefillPlan(
        lengths=lengths, prompt_lengths=prompt_lengths,
        max_length=padded.rows if padded is not None else max(lengths),
        max_prompt_length=padded.prompt_tokens if padded is not None else max(prompt_lengths),
        text_offsets=ints[0], text_positions=views["text_positions"], offsets=ints[1], positions=views["positions"],
        gather=views["gather"], last_rows=views["last_rows"], seqlens=ints[2],
        slots=views["slots"] if cache is not None else None, input_ids=views["input_ids"],
        generated_ids=views["generated_ids"],
    )  # fmt: skip


def _copy(host: torch.Tensor, device: torch.device, into: torch.Tensor | None) -> torch.Tensor:
    """host on `device` (into `into` when given), in one copy that does not wait for the device:
    from pinned memory where there is a GPU to pin for."""
    if device.type == "cuda":
        host = host.pin_memory()
    if into is None:
        return host.to(device, non_blocking=True)
    if into.shape != host.shape:
        raise ValueError(f"into: expected a buffer of {host.numel()} elements for this plan, got {into.numel()}")
    return into.copy_(host, non_blocking=True)
