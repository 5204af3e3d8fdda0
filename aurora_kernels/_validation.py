"""Argument validation shared by every public op.

Every check raises before any kernel launches: TypeError for a wrong type or dtype, ValueError for a
wrong shape, device, layout or value, each naming the argument and what was expected.

Two kinds of check:
- metadata checks (type, dtype, shape, device, strides, divisibility) read only tensor metadata and
  always run, in the public function (under torch.compile, while it traces); those that tracing
  cannot do (a written tensor's internal overlap, two arguments in one memory) run inside the op;
- value checks (cu_seqlens monotonic and within the packed rows, max_seqlen covering the real
  lengths, cache_seqlens within the cache, block_table entries in range) read tensor contents. They
  run inside the op, when it runs: eagerly, and in a compiled graph at run time, never at trace time.
  On CUDA a value check is a host sync, which costs time in a decode loop and breaks CUDA-graph
  capture, so by default they run only on CPU tensors; `value_checks("always")` turns them on for
  CUDA too (for debugging); they never run while a CUDA graph is being captured. Where they do not
  run, the kernels still clamp what they read from index tensors to the real bounds (the packed rows,
  the cache's capacity, the pages of the pool), so a bad value gives a wrong output at worst, never a
  read or write outside the tensors the op was given.

The value-check mode is a process-wide default (`set_value_checks`) that `value_checks(...)`
overrides in the calling thread only, for the length of a `with` block.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import torch

from aurora_kernels._settings import ThreadSetting
from aurora_kernels.ops._autotune import INTERPRETER

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
BACKENDS = ("triton", "reference")
_VALUE_CHECK_MODES = ("auto", "always", "never")


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"


# ----------------------------------------------------------------------------- value-check policy


def _checked_mode(mode) -> str:
    if mode not in _VALUE_CHECK_MODES:
        raise ValueError(f"mode: expected one of {_VALUE_CHECK_MODES}, got {mode!r}")
    return mode


_VALUE_CHECKS = ThreadSetting("auto", _checked_mode)


def set_value_checks(mode: str) -> None:
    """The process-wide default: "auto" (value checks on CPU tensors only), "always" or "never".
    A thread inside `value_checks(...)` keeps its own mode until the block ends."""
    _VALUE_CHECKS.set_default(mode)


def value_check_mode() -> str:
    """The mode in force in the calling thread."""
    return _VALUE_CHECKS.get()


def value_checks(mode: str = "always"):
    """Value checks in `mode` for the calling thread only, inside the block (other threads keep
    theirs)."""
    return _VALUE_CHECKS.within(mode)


def _tracing() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def should_check_values(t: torch.Tensor) -> bool:
    """Whether value checks (which read tensor contents) run for a tensor on t's device."""
    mode = value_check_mode()
    if mode == "never" or _tracing():
        return False
    return mode == "always" or t.device.type == "cpu"


def value_range(t: torch.Tensor) -> tuple[int, int]:
    """The lowest and highest value of a non-empty integer tensor, read in one host transfer."""
    low, high = torch.stack([t.min(), t.max()]).tolist()
    return int(low), int(high)


# ----------------------------------------------------------------------------- metadata checks


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def check_tensor(
    name: str,
    t,
    *,
    shape: Sequence | None = None,
    layout: str | None = None,
    ndim: int | Sequence[int] | None = None,
    dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES,
    device: torch.device | None = None,
    unit_stride_last: bool = False,
) -> None:
    """Check type, rank, shape, dtype, device and the last dim's stride of one tensor argument.

    shape: expected sizes, None for "any"; layout: how the dims are named in messages, e.g. "[B, L, H, D]".
    unit_stride_last: the last dim must be contiguous (other strides may be anything).
    """
    # runs several times in every op call: the passing path builds no message and no generator
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None:
        ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.ndim not in ranks:
            expected = " or ".join(str(r) for r in ranks)
            raise ValueError(f"{name}: expected {expected} dims{_where(layout)}, got shape {list(t.shape)}")
    if shape is not None and not _shape_matches(t.shape, shape):
        raise ValueError(f"{name}: expected shape {_fmt_shape(shape)}{_where(layout)}, got {list(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_dtype_names(dtypes)}, got {t.dtype}")
    if device is not None and t.device != (device if isinstance(device, torch.device) else torch.device(device)):
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    if unit_stride_last and t.ndim > 0 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected the last dim to be contiguous (stride 1), got strides {list(t.stride())}")


def _shape_matches(actual, expected) -> bool:
    if len(actual) != len(expected):
        return False
    for want, got in zip(expected, actual):
        if want is not None and want != got:
            return False
    return True


def _where(layout: str | None) -> str:
    return f" {layout}" if layout else ""


def check_row_input(name: str, x, max_cols: int = 65536, dim: str = "N") -> int:
    """x [..., N] float, contiguous last dim, 1 <= N <= max_cols (a row fits one tile); returns N.
    `dim` is what the op's docstring calls the last dim (K for a projection's input)."""
    check_tensor(name, x, unit_stride_last=True)
    if x.ndim < 1:
        raise ValueError(f"{name}: expected at least 1 dim [..., {dim}], got a 0-dim tensor")
    if not 1 <= x.shape[-1] <= max_cols:
        raise ValueError(f"{name}: expected a last dim {dim} in [1, {max_cols}], got {x.shape[-1]}")
    return x.shape[-1]


def check_eps(eps) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps: expected a non-negative float, got {eps!r}")


def check_same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} (the dtype of {ref_name}), got {t.dtype}")


def check_same_device(tensors: dict) -> None:
    """All tensors (name -> tensor, None skipped) on one device. Called before each one's own check,
    so it refuses what is not a tensor too (a list of lengths has no device)."""
    first_name = first_device = None
    for n, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{n}: expected a torch.Tensor, got {type(t).__name__}")
        if first_device is None:
            first_name, first_device = n, t.device
        elif t.device != first_device:
            raise ValueError(f"{n}: expected a tensor on {first_device} (the device of {first_name}), got {t.device}")


def check_divisible(name: str, value: int, divisor: int, what: str) -> None:
    if divisor <= 0 or value % divisor != 0:
        raise ValueError(f"{name}: expected a multiple of {what} ({divisor}), got {value}")


def check_int(name: str, value, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")


def check_softmax_scale(softmax_scale) -> None:
    if softmax_scale is None:
        return
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale: expected a float or None, got {type(softmax_scale).__name__}")


def check_triton_device(name: str, t: torch.Tensor) -> None:
    """backend="triton" runs on CUDA tensors, or on CPU tensors under the Triton interpreter (on
    since before triton and this package were imported)."""
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and INTERPRETER:
        return
    if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        raise ValueError(
            f"{name}: TRITON_INTERPRET=1 was set after triton or aurora_kernels was imported, so the kernels were built "
            "for a GPU; set it in the environment before Python imports either (or use backend='reference')"
        )
    raise ValueError(
        f"{name}: backend='triton' expects a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1 set "
        f"before triton is imported), got one on {t.device}; use backend='reference' for eager PyTorch"
    )


# ----------------------------------------------------------------------------- written tensors


def check_no_internal_overlap(name: str, t: torch.Tensor) -> None:
    """t is written in place: no two of its indices may address one element (an expand()ed tensor's
    stride 0, an overlapping as_strided view), as torch refuses in-place writes into such tensors.
    Sufficient test: with the dims of size > 1 sorted by stride, each stride exceeds the largest
    offset the smaller dims reach."""
    reach = 0
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz > 1):
        if stride <= reach:
            raise ValueError(
                f"{name}: expected a tensor whose elements do not overlap (it is written in place), got shape "
                f"{list(t.shape)} with strides {list(t.stride())} (an expand()ed or overlapping view); "
                "pass a tensor with its own memory (.contiguous() or .clone())"
            )
        reach += stride * (size - 1)


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) bytes of t's elements (torch strides are never negative)."""
    last = sum(stride * (size - 1) for stride, size in zip(t.stride(), t.shape))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _reaches(offset: int, dims: list[tuple[int, int]]) -> bool:
    """Whether offset = sum(c_i * stride_i) for some |c_i| < size_i, over dims (stride, size) sorted
    by stride, largest first, each stride above what the smaller dims reach together (a tensor that
    passed `check_no_internal_overlap`). Then the largest dim's coefficient is offset / stride
    rounded down or up, as any other leaves a remainder the smaller dims cannot reach."""
    if not dims:
        return offset == 0
    (stride, size), rest = dims[0], dims[1:]
    below = offset // stride
    return any(abs(c) < size and _reaches(offset - c * stride, rest) for c in {below, below + 1})


def _may_share_elements(written: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether an element of `other` may lie in memory of `written` (which has no internal overlap).
    Not where their byte spans are apart. Where they meet, two views of one shape, strides and dtype
    (a K and a V cache side by side in one allocation, FlashInfer's [pages, 2, ...] layout) share
    one exactly when an offset between written's elements equals the distance between their first
    ones; views of two layouts that interleave in one span are not resolved, and count as sharing."""
    if written.numel() == 0 or other.numel() == 0:
        return False
    (start, end), (other_start, other_end) = _byte_span(written), _byte_span(other)
    if end <= other_start or other_end <= start:
        return False
    itemsize = written.element_size()
    if (other.shape, other.stride(), other.element_size()) != (written.shape, written.stride(), itemsize):
        return True
    if (other_start - start) % itemsize:
        return True  # elements straddle each other's
    dims = sorted(((st, sz) for st, sz in zip(written.stride(), written.shape) if sz > 1), reverse=True)
    return _reaches((other_start - start) // itemsize, dims)


def check_separate_memory(written: dict, read: dict) -> None:
    """The tensors in `written` (each passed `check_no_internal_overlap`) are written in place by one
    launch that also reads those in `read` (None entries skipped): no element of one may lie in
    memory of another, or the launch's programs race (a V cache laid over part of the K cache writes
    the new v over the new k). torch refuses such in-place writes too ("unsupported operation: some
    elements of the input tensor and the written-to tensor refer to a single memory location").
    It runs on every call of a cache-writing op, so only views of one storage (one allocation) go on
    to compare their elements (its host time: docs/performance-log.md)."""
    tensors = [(name, t, t.untyped_storage().data_ptr()) for name, t in [*written.items(), *read.items()] if t is not None]
    for i, (name, t, storage) in enumerate(tensors):
        if name not in written:
            break
        for other_name, other, other_storage in tensors[i + 1 :]:
            if other_storage != storage or not _may_share_elements(t, other):
                continue
            both_written = other_name in written
            raise ValueError(
                f"{name}, {other_name}: expected tensors in separate memory ({name} is written in place while "
                f"{other_name} is {'written' if both_written else 'read'}), got views whose elements share memory "
                "(or interleave in a way that is not resolved); "
                + ("give each its own memory" if both_written else f"pass {other_name}.clone()")
            )


# ----------------------------------------------------------------------------- index tensors
# The kernels read index tensors (cu_seqlens, cache_seqlens, block_table) through a pointer as raw
# memory, so a view's strides must be what the kernel assumes: the last dim contiguous (a 1-D index
# tensor contiguous; a block table's row stride is honoured). A column of a 2-D tensor or a [::2]
# slice is refused by name rather than read as the memory underneath it.


def check_index_tensor(name: str, t, shape: Sequence, layout: str, device) -> None:
    """int32, of `shape`, on `device`, last dim contiguous."""
    check_tensor(name, t, shape=shape, layout=layout, dtypes=(torch.int32,), device=device)
    if t.ndim and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: expected the last dim to be contiguous (stride 1; the kernel reads it as raw memory), got "
            f"strides {list(t.stride())}; pass {name}.contiguous()"
        )


def check_cu_seqlens(name: str, cu_seqlens, device: torch.device, max_seqlen, max_name: str) -> None:
    """int32 [batch + 1] offsets on `device`, contiguous, and an int max_seqlen >= 0 (metadata)."""
    check_index_tensor(name, cu_seqlens, shape=(None,), layout="[batch + 1]", device=device)
    if cu_seqlens.numel() < 1:
        raise ValueError(f"{name}: expected at least one offset ([batch + 1]), got an empty tensor")
    check_int(max_name, max_seqlen, minimum=0)


def check_cu_seqlens_values(name: str, cu_seqlens: torch.Tensor, total: int, max_seqlen: int, max_name: str) -> None:
    """Value check: starts at 0, non-decreasing, ends at `total` rows, no sequence longer than
    `max_seqlen`."""
    if not should_check_values(cu_seqlens):
        return
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"{name}: expected to start at 0, got {offsets[0]}")
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    if any(n < 0 for n in lengths):
        raise ValueError(f"{name}: expected non-decreasing offsets, got {offsets}")
    if offsets[-1] != total:
        raise ValueError(f"{name}: expected the last offset to equal the number of packed rows ({total}), got {offsets[-1]}")
    longest = max(lengths, default=0)
    if longest > max_seqlen:
        raise ValueError(f"{max_name}: expected >= the longest sequence in {name} ({longest}), got {max_seqlen}")


def check_cache_seqlens_values(name: str, cache_seqlens: torch.Tensor, capacity: torch.Tensor | int, appended: int) -> None:
    """Value check: 0 <= n and n + appended <= capacity (per sequence)."""
    if not should_check_values(cache_seqlens):
        return
    lengths = cache_seqlens.long()
    if bool((lengths < 0).any()):
        raise ValueError(f"{name}: expected non-negative lengths, got {cache_seqlens.tolist()}")
    limit = capacity if isinstance(capacity, int) else capacity.long()
    over = lengths + appended > limit
    if bool(over.any()):
        b = int(over.nonzero()[0, 0])
        cap = limit if isinstance(limit, int) else int(limit[b])
        extra = f" + {appended} appended token" if appended else ""
        raise ValueError(f"{name}: sequence {b} needs {int(lengths[b])}{extra} positions but its cache holds {cap}")


def check_block_table_values(
    name: str, block_table: torch.Tensor, num_blocks: int, block_size: int, cache_seqlens: torch.Tensor, appended: int
) -> None:
    """Value check: the entries a sequence uses (its first ceil((cache_seqlens[b] + appended) /
    block_size)) are in [0, num_blocks). Unused entries may hold anything (-1 padding, say)."""
    if not should_check_values(block_table) or block_table.numel() == 0:
        return
    used_blocks = (cache_seqlens.long() + appended + block_size - 1) // block_size
    columns = torch.arange(block_table.shape[1], device=block_table.device)
    used = columns[None, :] < used_blocks[:, None]
    bad = used & ((block_table < 0) | (block_table >= num_blocks))
    if bool(bad.any()):
        b, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: expected block indices in [0, {num_blocks}), got {int(block_table[b, j])} at [{b}, {j}]")
