"""The shape catalogue the kernel tests share: the sizes that break kernels."""

import os

import pytest
import torch

# Tests of what only a GPU has (CUDA graphs, inductor): they run under `make gpu-check`.
cuda_only = pytest.mark.skipif(os.environ.get("AURORA_TEST_DEVICE", "cpu") != "cuda", reason="needs AURORA_TEST_DEVICE=cuda")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = ("fp32", "fp16", "bf16")

# Row / sequence lengths: 1, and lengths that are not multiples of 16, 64 or 128.
LENGTHS = (1, 17, 100, 129)
# Ragged batches: empty entries, length 1, lengths straddling block sizes.
RAGGED_LENGTHS = ((5,), (0, 1, 37, 130), (17, 0, 64, 3))
HEAD_DIMS = (64, 72, 80, 128)
# (query heads, KV heads): GQA ratios 1, 2 and 6 (6 is the LLM's 12 / 2).
GQA_HEADS = ((2, 2), (4, 2), (12, 2))
# Row widths of the model's elementwise ops, and small odd ones.
MODEL_WIDTHS = (128, 1152, 1536)
ODD_WIDTHS = (1, 3, 100, 300)


# A dim-0 stride past which entry 2 starts beyond 2**31 elements, where an int32 product of index and
# stride wraps (the stride alone fits int32, so only an int64 product reaches that entry).
FAR_STRIDE = 2**30 + 64


def far_apart(shape, dtype, device, generator):
    """A random tensor of `shape` whose dim-0 entries lie FAR_STRIDE elements apart (the other dims
    contiguous). The storage is allocated but only the entries are written, so only their pages
    become real memory."""
    from aurora_kernels.testing import randn

    inner = torch.Size(shape[1:]).numel()
    storage = torch.empty(FAR_STRIDE * (shape[0] - 1) + inner, dtype=dtype, device=device)
    t = storage.as_strided(shape, (FAR_STRIDE, *torch.empty(shape[1:], device="meta").stride()))
    return t.copy_(randn(shape, dtype, device, generator))


def fused_qkv(tokens_shape, heads_q, heads_kv, head_dim, dtype, device, generator):
    """q, k, v as strided views of one fused projection [..., (Hq + 2 Hkv) * D] (no copies)."""
    from aurora_kernels.testing import randn

    width = (heads_q + 2 * heads_kv) * head_dim
    qkv = randn((*tokens_shape, width), dtype, device, generator)
    q = qkv[..., : heads_q * head_dim].unflatten(-1, (heads_q, head_dim))
    k = qkv[..., heads_q * head_dim : (heads_q + heads_kv) * head_dim].unflatten(-1, (heads_kv, head_dim))
    v = qkv[..., (heads_q + heads_kv) * head_dim :].unflatten(-1, (heads_kv, head_dim))
    return q, k, v


def cu_seqlens(lengths, device):
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    return torch.tensor(offsets, dtype=torch.int32, device=device)
