"""KV cache for batched decoding: per layer, contiguous [B, capacity, Hkv, D] or paged
[num_blocks, page_size, Hkv, D] with an int32 block table [B, pages per sequence].

`seqlens` (int32 [B], on the device) counts the tokens cached per sequence; prefill writes the
prompts' K/V through `write` and sets it, each decode step appends one token in the kernel
(`decode_attention(k=, v=)`) and then advances it.
"""

from __future__ import annotations

import torch

from aurora_kernels.ops.decode_attention import PAGED_BLOCK_SIZES


class KVCache:
    def __init__(self, num_layers, batch, capacity, heads_kv, head_dim, dtype, device, page_size=None):
        self.batch, self.capacity, self.page_size = batch, capacity, page_size
        if page_size is None:
            shape = (batch, capacity, heads_kv, head_dim)
            self.block_table = None
        else:
            if page_size not in PAGED_BLOCK_SIZES:
                raise ValueError(f"page_size: expected one of {PAGED_BLOCK_SIZES}, got {page_size}")
            pages = -(-capacity // page_size)
            # pages handed out in reverse, so a sequence's pages are not simply consecutive in the pool
            order = torch.arange(batch * pages - 1, -1, -1, dtype=torch.int32, device=device)
            self.block_table = order.view(batch, pages)
            shape = (batch * pages, page_size, heads_kv, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)

    def slots(self, batch_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row of each (sequence, position) in a layer's cache viewed as [rows, Hkv, D] (int64)."""
        if self.block_table is None:
            return batch_index * self.capacity + positions
        pages = self.block_table[batch_index, positions // self.page_size].long()
        return pages * self.page_size + positions % self.page_size

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
        """k, v [T, Hkv, D] (any strides) into rows `slots` of layer `layer`."""
        for cache, new in ((self.k[layer], k), (self.v[layer], v)):
            cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, new)
