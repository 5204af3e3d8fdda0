"""Programmatic dependent launch (PDL, Hopper and later): the kernels of a batch-1 decode step start
while the kernel before them finishes.

A batch-1 decode step is ~170 short kernels (a few us each); each pays its launch, its blocks'
start-up and the latency of its first weight loads with the GPU half idle. With PDL the next kernel
is launched early; its programs do what depends on no earlier kernel (index math, and in the GEMV
the first weight tile: weights are never written during a decode step) and then wait in
`gdc_wait` until the kernel before has finished and its writes are visible. Each PDL kernel calls
`gdc_launch_dependents` after its wait, so at most two kernels overlap (but for decode attention's
merge under the weight prefetch, which calls it at its start: `early_next_launch_option`; three
then, the third waiting). Before its wait a program may read only what no kernel launched under PDL
writes: whatever wrote it (a kernel without PDL, a copy, the host) had finished before the next
kernel in the stream launched, and so before every later one. Those reads are the weights (never
written during a decode step) and, in decode_attention, the lengths, the block table and the
rotary tables. Everything else it reads (inputs, caches) and everything it writes comes after the
wait: the output buffer it writes may be memory the kernel before still reads. A caller who
launches kernels of their own under PDL must not write those from them.

What it gains in the model's decode step: docs/performance-log.md.

Off by default for the ops called on their own: the GEMV loads its first weight tile before its
wait, which is right only where the kernel before does not write the weights (a weight dequantised
or merged just before the call would be read stale). The model turns it on inside `generate`
(RunOptions.programmatic_dependent_launch, on by default), for its own thread only, whose weights
nothing writes. `using_programmatic_dependent_launch(True)` turns it on for the calling thread
inside a block, `set_programmatic_dependent_launch(True)` for every thread without a block of its
own; either way for the kernels that take it: fused_linear (with the sum of its K splits) and
decode_attention. Under it the GEMV can also ask the L2 for the rest of its weight rows before its
wait (`using_weight_prefetch`, RunOptions.weight_prefetch in the model). It launches so on CUDA
devices of compute capability 9 or more. Under the interpreter the kernels take their PDL path with
the waits left out (it has no grid dependency control, and runs each kernel after the one before
anyway), so the CPU tests check that path's arithmetic.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from aurora_kernels._settings import ThreadSetting, a_bool
from aurora_kernels.ops._autotune import INTERPRETER

_PDL = ThreadSetting(False, a_bool)
# Under PDL, whether the GEMV also asks the L2 for the rest of its program's weight rows before its
# wait (`prefetch_rows_to_l2`), and decode attention's merge launches the next kernel (the o_proj
# GEMV) early (`early_next_launch_option`): off unless a caller (the model's generate, under
# RunOptions.weight_prefetch) turns it on for its thread.
_WEIGHT_PREFETCH = ThreadSetting(False, a_bool)


def using_weight_prefetch(enabled: bool):
    """The GEMV's L2 weight prefetch under PDL on or off for the calling thread, inside the block."""
    return _WEIGHT_PREFETCH.within(enabled)


def weight_prefetch_option(use_pdl: bool, weight: torch.Tensor) -> bool:
    """The PREFETCH_L2 constexpr: on under PDL where the calling thread asked for it, on a GPU (the
    interpreter runs no inline PTX), for a weight whose rows start 16 bytes apart from a 16-byte
    aligned start, whole rows a multiple of 16 bytes (what the bulk prefetch takes)."""
    if not (use_pdl and _WEIGHT_PREFETCH.get()) or INTERPRETER:
        return False
    row_bytes = weight.shape[1] * weight.element_size()
    return weight.data_ptr() % 16 == 0 and (weight.stride(0) * weight.element_size()) % 16 == 0 and row_bytes % 16 == 0


def early_next_launch_option(use_pdl: bool) -> bool:
    """The NEXT_LAUNCHED constexpr of decode attention's merge kernel: under PDL where the calling
    thread asked for the weight prefetch, the merge lets the next kernel launch at its start rather
    than after its wait. The merge is short and reads only the split kernel's partials; what follows
    it in a decode step is the o_proj GEMV, which then reads its first weight tile (the whole of its
    rows where BLOCK_K >= K) while the split kernel still runs, the memory bus idle, instead of
    after the merge. Off otherwise: the launched kernel's waiting programs hold
    SM slots for the length of the attention."""
    return use_pdl and _WEIGHT_PREFETCH.get()


def set_programmatic_dependent_launch(enabled: bool) -> None:
    """Launch fused_linear and decode_attention with programmatic dependent launch: the process-wide
    default (a thread inside `using_programmatic_dependent_launch` keeps its own setting). Launches
    made before the change keep their setting: a captured CUDA graph replays as captured."""
    _PDL.set_default(enabled)


def programmatic_dependent_launch() -> bool:
    """The setting in force in the calling thread."""
    return _PDL.get()


def using_programmatic_dependent_launch(enabled: bool):
    """PDL on or off for the calling thread only, inside the block (a model generating in one thread
    does not switch another thread's launches)."""
    return _PDL.within(enabled)


@functools.lru_cache(maxsize=None)
def _supports_pdl(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] >= 9


def pdl_options(device: torch.device) -> dict:
    """The launch's USE_PDL constexpr and, on a GPU, Triton's launch_pdl option."""
    if not programmatic_dependent_launch():
        return {"USE_PDL": False}
    if INTERPRETER:
        return {"USE_PDL": True}
    if device.type == "cuda" and _supports_pdl(device.index if device.index is not None else torch.cuda.current_device()):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}


_INTERPRETED = tl.constexpr(INTERPRETER)


@triton.jit
def prefetch_rows_to_l2(row_start, row_bytes):
    """Thread 0 of the program asks the L2 for the bytes [row_start, row_start + row_bytes) (sm_90's
    bulk prefetch: one instruction a row, no registers, no wait); nothing where row_bytes is 0. A
    hint: what the program then loads is the same either way."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; setp.ne.and.u32 p, $2, 0, p;"
        " @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [row_start, row_bytes], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def launch_next_kernel_now(USE_PDL: tl.constexpr):
    """Under PDL: let the next kernel launch before this one's wait (then pass NEXT_LAUNCHED to
    `wait_for_previous_kernel`). For a short kernel whose successor has work that reads no kernel's
    output: see `early_next_launch_option`. Without PDL, or under the interpreter, nothing."""
    if USE_PDL and not _INTERPRETED:
        gdc_launch_dependents()


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr, NEXT_LAUNCHED: tl.constexpr = False):
    """Under PDL: wait until the kernel before has finished (its writes visible), then let the next
    kernel launch (unless `launch_next_kernel_now` did). Every program calls it before touching
    another kernel's data. Without PDL, or under the interpreter, nothing."""
    if USE_PDL and not _INTERPRETED:
        gdc_wait()
        if not NEXT_LAUNCHED:
            gdc_launch_dependents()
