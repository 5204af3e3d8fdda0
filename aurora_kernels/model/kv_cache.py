"""KV cache for batched decoding: per layer, contiguous [B, capacity, Hkv, D] or paged
[num_blocks, page_size, Hkv, D] with an int32 block table [B, pages per sequence].

`seqlens` (int32 [B], on the device) counts the tokens cached per sequence; prefill writes the
prompts' K/V into `layer_rows` and sets it, each decode step appends one token in the kernel
(`decode_attention(k=, v=)`) and then advances it. The block table is fixed when the cache is made
(a copy stays on the host, so a prefill's slots are computed there, without reading the device).
"""

from __future__ import annotations

import copy

import torch

from aurora_kernels._validation import check_int
from aurora_kernels.ops.decode_attention import PAGED_BLOCK_SIZES


def check_page_size(page_size) -> None:
    """An int among the paged cache's sizes. Checked whatever the layout: a page size that a paged
    cache would refuse is a mistake in a contiguous call too."""
    check_int("page_size", page_size)
    if page_size not in PAGED_BLOCK_SIZES:
        raise ValueError(f"page_size: expected one of {PAGED_BLOCK_SIZES}, got {page_size}")


class KVCache:
    def __init__(self, num_layers, batch, capacity, heads_kv, head_dim, dtype, device, page_size=None, scratch=False):
        """scratch: one more sequence's rows (contiguous) or one more page (paged) that no sequence
        reads, whose first row is `scratch_slot`: where a padded prefill writes its padding rows."""
        self.batch, self.capacity, self.page_size = batch, capacity, page_size
        if page_size is None:
            shape = (batch + scratch, capacity, heads_kv, head_dim)
            self.block_table, self._pages = None, []
            self.scratch_slot = batch * capacity if scratch else None
        else:
            check_page_size(page_size)
            pages = -(-capacity // page_size)
            # pages handed out in reverse, so a sequence's pages are not simply consecutive in the pool
            order = list(range(batch * pages - 1, -1, -1))
            self._pages = [order[b * pages : (b + 1) * pages] for b in range(batch)]  # the block table, on the host
            self.block_table = torch.tensor(self._pages, dtype=torch.int32, device=device)
            shape = (batch * pages + scratch, page_size, heads_kv, head_dim)
            self.scratch_slot = batch * pages * page_size if scratch else None
        # every row, the scratch ones too (what `layer_rows` shows a prefill), and the views the decode steps read
        self._k_rows = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._v_rows = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        contiguous_scratch = scratch and page_size is None
        self.k = [k[:batch] for k in self._k_rows] if contiguous_scratch else list(self._k_rows)
        self.v = [v[:batch] for v in self._v_rows] if contiguous_scratch else list(self._v_rows)
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)

    def rows(self, batch: int) -> "KVCache":
        """The first `batch` sequences of this cache, sharing its memory (a smaller batch of requests
        decoding in a cache made for more)."""
        check_int("batch", batch)
        if not 1 <= batch <= self.batch:
            raise ValueError(f"batch: expected 1 to {self.batch} sequences of this cache, got {batch}")
        view = copy.copy(self)
        view.batch, view.seqlens = batch, self.seqlens[:batch]
        if self.block_table is None:
            view.k, view.v = [k[:batch] for k in self.k], [v[:batch] for v in self.v]
        else:
            view.block_table, view._pages = self.block_table[:batch], self._pages[:batch]
        return view

    def host_slots(self, sequence: int, length: int) -> list[int]:
        """Rows of positions 0 .. length-1 of `sequence` in a layer's cache viewed as [rows, Hkv, D],
        computed on the host."""
        if self.block_table is None:
            start = sequence * self.capacity
            return list(range(start, start + length))
        pages = self._pages[sequence]
        return [pages[p // self.page_size] * self.page_size + p % self.page_size for p in range(length)]

    def layer_rows(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s K and V caches as [rows, Hkv, D] views over every row, the scratch ones too:
        what host_slots' rows index, and what a prefill writes (apply_rotary's cache write)."""
        k, v = self._k_rows[layer], self._v_rows[layer]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])
