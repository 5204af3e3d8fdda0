"""Parity helpers shared by the test suite and `make bench`: one definition of "close enough".

Parity of an op = the relative error ||out - ref|| / ||ref|| of its output against the eager
reference (`aurora_kernels.ops.reference`) run on float64 copies of the same inputs, under one bound
per dtype (TOLERANCES). Inputs are fresh random normals from a per-test generator, never zeros or
ones; buffers a kernel writes into are poisoned with NaN first so an unwritten element fails.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from aurora_kernels._dispatch import poisoned_outputs

# The one table of parity bounds: relative error in the Frobenius norm.
TOLERANCES = {
    torch.float32: 1e-5,
    torch.float16: 1e-3,
    torch.bfloat16: 1e-2,
}


def round_bf16_to_nearest_even_under_the_interpreter() -> None:
    """Make Triton's interpreter round fp32 -> bf16 casts (`x.to(tl.bfloat16)`) to nearest even, as the
    GPU's `cvt.rn.bf16.f32` and torch do. The interpreter of Triton 3.6 to 3.9 truncates them (its cast
    passes no rounding mode to its float conversion): a relative error of up to 2**-7 a rounding
    where the GPU's is 2**-8, always toward zero, so a chain of three bf16 ops on the CPU strayed past
    the bf16 parity bound where the GPU's would not. The test suite (tests/conftest.py) and `make
    bench`'s parity table call it; a cast given a rounding mode (`fp_downcast_rounding`) keeps the
    interpreter's own."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    convert = getattr(interpreter._convert_float, "truncating_original", interpreter._convert_float)

    def convert_rounding_bf16_to_nearest_even(values, input_dtype, output_dtype, rounding_mode):
        if rounding_mode is None and input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
            return rounded.view(torch.int16).numpy().view(np.uint16)
        return convert(values, input_dtype, output_dtype, rounding_mode)

    convert_rounding_bf16_to_nearest_even.truncating_original = convert
    interpreter._convert_float = convert_rounding_bf16_to_nearest_even


def patch_the_language_once_a_launch_under_the_interpreter() -> None:
    """Make Triton's interpreter patch `triton.language` once a launch, not again in every call of a
    `@triton.jit` helper. The interpreter of Triton 3.6 to 3.9 swaps the language's builtins for
    NumPy ones when a launch starts and restores them when it ends; a helper's call swaps them again
    (every builtin of four namespaces, found with `inspect.getmembers`) with what the launch already
    put there, once per program of the grid: a large share of an interpreted model's time (the
    figures: docs/performance-log.md, twelfth session). A helper whose module sees a language module the
    launch has not patched (`triton.language.core` where the kernel's sees `triton.language` alone)
    still patches, as before, so every call runs with the builtins it ran with. The test suite and
    `make bench`'s parity table call it."""
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    if getattr(interpreter._patch_lang, "once_a_launch", False):
        return
    patch_lang, run_grid = interpreter._patch_lang, interpreter.GridExecutor.__call__
    patched_by_launch: list = []  # one entry per launch running: the modules it patched (None before)
    language_modules: dict = {}  # function -> the language modules its module sees (as _patch_lang finds them)

    def patch_lang_once_a_launch(fn):
        modules = language_modules.get(fn)
        if modules is None:
            modules = frozenset(v for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))
            language_modules[fn] = modules
        if patched_by_launch and patched_by_launch[-1] is not None and modules <= patched_by_launch[-1]:
            return interpreter._LangPatchScope()  # nothing changed, nothing to restore
        scope = patch_lang(fn)
        if patched_by_launch:  # a helper's scope is never restored (the launch's restores the builtins)
            patched_by_launch[-1] = modules | (patched_by_launch[-1] or frozenset())
        return scope

    def run_grid_patching_once(self, *args, **kwargs):
        patched_by_launch.append(None)
        try:
            return run_grid(self, *args, **kwargs)
        finally:
            patched_by_launch.pop()

    patch_lang_once_a_launch.once_a_launch = True
    interpreter._patch_lang = patch_lang_once_a_launch
    interpreter.GridExecutor.__call__ = run_grid_patching_once


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has a NaN/inf that ref does not, or shapes differ."""
    if out.shape != ref.shape:
        return math.inf
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    finite = torch.isfinite(ref64)
    if not bool(torch.equal(torch.isfinite(out64), finite)):
        return math.inf
    # Non-finite reference entries (NaN from max-pooling a NaN, say) must match exactly.
    if not bool(finite.all()):
        same = (out64[~finite] == ref64[~finite]) | (out64[~finite].isnan() & ref64[~finite].isnan())
        if not bool(same.all()):
            return math.inf
        out64, ref64 = out64[finite], ref64[finite]
    denom = torch.linalg.vector_norm(ref64)
    diff = torch.linalg.vector_norm(out64 - ref64)
    if float(denom) == 0.0:
        return 0.0 if float(diff) == 0.0 else math.inf
    return float(diff / denom)


def assert_parity(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "output") -> float:
    """Fail unless rel_error(out, ref) is within the bound for dtype; returns the error."""
    if out.dtype != dtype:
        raise AssertionError(f"{what}: expected dtype {dtype}, got {out.dtype}")
    err = rel_error(out, ref)
    bound = TOLERANCES[dtype]
    if not err <= bound:
        raise AssertionError(f"{what}: relative error {err:.3e} exceeds the {dtype} bound {bound:.0e} (shape {list(out.shape)})")
    return err


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def randn(shape, dtype, device, generator: torch.Generator, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    """Normal(shift, scale) samples drawn in float32 on the generator's device, then cast."""
    values = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return (values * scale + shift).to(device=device, dtype=dtype)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN (floats) or an out-of-range sentinel (ints) so unwritten elements are caught."""
    return t.fill_(math.nan if t.is_floating_point() else -(2**30))


def strided_view(shape, dtype, device, generator: torch.Generator, pad: int = 8) -> torch.Tensor:
    """Random tensor of `shape` as a non-contiguous view: every dim but the last is padded in memory."""
    padded = [s + pad for s in shape[:-1]] + [shape[-1] + pad]
    base = randn(padded, dtype, device, generator)
    view = base[tuple(slice(0, s) for s in shape)]
    assert not view.is_contiguous() or view.numel() <= 1
    return view


def _to_float64(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.detach().double()
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float64(v) for v in value)
    return value


def reference_in_float64(reference_fn: Callable, *args, **kwargs):
    """Run an eager reference on float64 copies of the float tensors (int tensors are cloned)."""
    return reference_fn(*_to_float64(list(args)), **{k: _to_float64(v) for k, v in kwargs.items()})


def check_op(op: Callable, reference_fn: Callable, *args, **kwargs) -> list[float]:
    """Run op(..., backend="triton") and the float64 reference; assert parity of every output.

    Returns the relative error of each output (tuple outputs are compared element by element).
    """
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    with poisoned_outputs():
        out = op(*args, **kwargs, backend="triton")
    ref = reference_in_float64(reference_fn, *args, **kwargs)
    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(outs) == len(refs), f"{len(outs)} outputs, reference has {len(refs)}"
    return [assert_parity(o, r, dtype, f"{op.__name__} output {i}") for i, (o, r) in enumerate(zip(outs, refs))]


def check_compile(fn: Callable, args: tuple, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """fn under torch.compile (Inductor, fullgraph: a graph break raises) matches `expected`.

    Runs on any device: on a CPU the custom ops run their kernels under the interpreter inside the
    graph Inductor generated, so a fake that disagrees with its kernel fails here too.
    """
    torch._dynamo.reset()
    assert_parity(torch.compile(fn, fullgraph=True)(*args), expected, dtype, f"{what}, torch.compile")


def check_cuda_graph(fn: Callable, args: tuple, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """fn(*args) replayed from a CUDA graph matches `expected`.

    fn runs once before the capture, so its kernels are compiled (and autotuned) outside it: the
    capture itself must need no host sync, no allocation outside the graph pool, no autotuning.
    """
    fn(*args)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fn(*args)
    captured.fill_(float("nan"))  # the replay must write every element again
    graph.replay()
    torch.cuda.synchronize()
    assert_parity(captured, expected, dtype, f"{what}, CUDA graph replay")
