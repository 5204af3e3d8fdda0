"""Time every fused_linear autotune candidate at the model's decode projections (GPU only: the four
of a layer, the LM head, and the MLP's pair under RunOptions.activation_in_gate_up), beside the path
the model runs without fuse_decode_projections (our norm or activation kernel, then cuBLAS) and the
autotuned public op. Times are CUDA-graph replay medians: device time, the
host's share out, as a graphed decode step pays it. GB/s counts the weight alone (N*K elements),
the bytes a decode projection must stream.

Cold weights: a decode step streams 3 GB of weights, so each projection's weight comes from HBM,
while one call replayed alone finds a weight under the L2's size (each of the four, on an H100 or
H200's 50 to 60 MB of L2) in L2. So each graph calls the op once on each of enough copies of the weight to fill twice the L2,
and the time is per call.

The autotuner picks among the same candidates at run time; this table shows by how much, and
where the list should change. The fastest UNROLLED_TILES candidates of each projection are timed
again with their K loop unrolled twice (two steps' weight loads before their FMAs): not shipped,
the data for the next choice.

    PYTHONPATH=. python -m bench.sweep_fused_linear [--rows 1,8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
import triton

import aurora_kernels as ak
from aurora_kernels._cli_arguments import ints_at_least, output_file
from aurora_kernels.ops.fused_linear import _GPU_CONFIGS, EPILOGUES, GEMV_MAX_ROWS, MODEL_PROJECTIONS, PROLOGUES, launch
from bench.bench_fused_linear import _ours_unfused

# the fastest candidate tiles of each projection timed again with their K loop unrolled twice: not
# shipped (not in the autotuner's list, so not in the compile report's), for the next choice of tiles
UNROLLED_TILES = 2


def projection_inputs(prologue: str, in_features: int, out_features: int, has_residual: bool, has_bias: bool,
                      rows: int, dtype: torch.dtype, device: str) -> dict:  # fmt: skip
    def randn(*shape, scale=1.0):
        return (torch.randn(shape, device=device) * scale).to(dtype)

    width = 2 * in_features if prologue == "silu_and_mul" else in_features
    return {
        "x": randn(rows, width),
        "weight": randn(out_features, in_features, scale=in_features**-0.5),
        "bias": randn(out_features) if has_bias else None,
        "norm_weight": randn(in_features, scale=0.1) + 1 if prologue == "rms_norm" else None,
        "residual": randn(rows, width) if has_residual else None,
    }


def graph_median_ms(fn, weights: list[torch.Tensor]) -> float:
    """The median time of fn(weight), a call per weight copy in one graph, divided by the copies."""
    fn(weights[0])  # compile (and autotune) outside the capture
    torch.cuda.synchronize()
    ms = triton.testing.do_bench_cudagraph(lambda: [fn(w) for w in weights], rep=50, return_mode="median")
    return ms / len(weights)


def cold_copies(weight: torch.Tensor) -> list[torch.Tensor]:
    """weight and copies of it, together over twice the L2 (so each call reads its weight from HBM)."""
    l2_bytes = torch.cuda.get_device_properties(weight.device).L2_cache_size
    count = max(1, -(-2 * l2_bytes // (weight.numel() * weight.element_size())))
    return [weight] + [weight.clone() for _ in range(count - 1)]


def _candidate(t: dict, prologue_index: int, epilogue_index: int, kind: str, config: tuple, unroll: int = 1):
    """(name, role, fn(weight)) of one candidate tile (with its K loop unrolled `unroll` times)."""
    x, bias, norm_weight, residual = t["x"], t["bias"], t["norm_weight"], t["residual"]
    name = f"{kind} {config}" + (f" unroll {unroll}" if unroll > 1 else "")
    return (
        name,
        "candidate",
        lambda w: launch(
            x, w, bias, norm_weight, residual, 1e-6, prologue_index, epilogue_index, config=config, unroll=unroll, kind=kind
        ),
    )


def _op_and_baseline(prologue: str, epilogue: str, t: dict):
    """(name, role, fn(weight)) for the autotuned public op and the unfused baseline."""
    x, bias, norm_weight, residual = t["x"], t["bias"], t["norm_weight"], t["residual"]
    if epilogue == "silu_and_mul":
        yield "autotuned", "autotuned", lambda w: ak.rms_norm_linear_silu_and_mul(x, norm_weight, w, bias, residual=residual)
        yield (
            "unfused (ours + cuBLAS + ours)",
            "baseline",
            lambda w: _ours_unfused("rms_norm", "silu_and_mul")(x, norm_weight, w, bias, residual=residual),
        )
    elif prologue == "none":
        yield "autotuned", "autotuned", lambda w: ak.linear(x, w, bias)
        yield "cuBLAS", "baseline", lambda w: F.linear(x, w, bias)
    elif prologue == "rms_norm":
        yield "autotuned", "autotuned", lambda w: ak.rms_norm_linear(x, norm_weight, w, bias, residual=residual)
        yield (
            "unfused (ours + cuBLAS)",
            "baseline",
            lambda w: _ours_unfused("rms_norm")(x, norm_weight, w, bias, residual=residual),
        )
    else:
        yield "autotuned", "autotuned", lambda w: ak.silu_and_mul_linear(x, w, bias)
        yield "unfused (ours + cuBLAS)", "baseline", lambda w: _ours_unfused("silu_and_mul")(x, w, bias)


def sweep(rows_list, dtype=torch.bfloat16, device="cuda", budget_s: float = math.inf) -> list[dict]:
    """A row per (projection, rows, implementation). A projection is started only while budget_s has
    not run out; those left get one row each with "skipped"."""
    results, start = [], time.time()
    for where, prologue, epilogue, in_features, out_features, has_residual, has_bias in MODEL_PROJECTIONS:
        weight_gb = out_features * in_features * torch.finfo(dtype).bits / 8 / 1e9
        for rows in rows_list:
            row = {"projection": where, "K": in_features, "N": out_features, "rows": rows}
            if time.time() - start > budget_s:
                results.append({**row, "skipped": f"time budget of {budget_s:.0f} s spent"})
                continue
            t = projection_inputs(prologue, in_features, out_features, has_residual, has_bias, rows, dtype, device)
            weights = cold_copies(t["weight"])
            indices = PROLOGUES.index(prologue), EPILOGUES.index(epilogue)
            # more rows: the GEMV's row blocks (up to GEMV_MAX_ROWS rows), the sm_90 tiles (wgmma, the
            # weight by TMA; the rows in the MMA's N, or 64 of them in its M) and the ones before them
            # (mma.sync)
            tma_kinds = ["wgmma_swap_ab", "wgmma"]
            kinds = ["gemv"] if rows == 1 else ["gemv_rows"] * (rows <= GEMV_MAX_ROWS) + tma_kinds + ["dot_half"]

            def timed(name, role, fn, config=None):
                ms = graph_median_ms(fn, weights)
                results.append({**row, "impl": name, "role": role, "config": config, "us": ms * 1e3,
                                "weight_gb_per_s": weight_gb / (ms * 1e-3)})  # fmt: skip
                print(f"{where:42s} M={rows:<3d} {name:32s} {ms * 1e3:8.2f} us {weight_gb / (ms * 1e-3):8.0f} GB/s", flush=True)

            for kind in dict.fromkeys(kinds):
                for config in _GPU_CONFIGS[kind]:
                    timed(*_candidate(t, *indices, kind, config), config=config)
            for impl in _op_and_baseline(prologue, epilogue, t):
                timed(*impl)
            if kinds == ["gemv"]:  # the fastest tiles again with their K loop unrolled twice (not shipped)
                tried = sorted((r for r in results if (r["projection"], r["rows"]) == (where, rows) and r.get("config")),
                               key=lambda r: r["us"])  # fmt: skip
                for r in tried[:UNROLLED_TILES]:
                    timed(*_candidate(t, *indices, "gemv", r["config"], unroll=2), config=r["config"])
            t = weights = None  # free the weight copies (assigned, not deleted: timed() refers to them)
    return results


def summary_lines(results: list[dict]) -> list[str]:
    """A line per (projection, rows): the best candidate tile, the autotuned op and the baseline."""
    lines = []
    for key in dict.fromkeys((r["projection"], r["rows"]) for r in results):
        group = [r for r in results if (r["projection"], r["rows"]) == key]
        head = f"{key[0]} M={key[1]}: "
        if "skipped" in group[0]:
            lines.append(head + group[0]["skipped"])
            continue
        best = min((r for r in group if r["role"] == "candidate"), key=lambda r: r["us"])
        autotuned = next(r for r in group if r["role"] == "autotuned")
        baseline = next(r for r in group if r["role"] == "baseline")
        lines.append(head + f"best tile {best['impl']} {best['us']:.1f} us ({best['weight_gb_per_s']:.0f} GB/s), "
                     f"autotuned {autotuned['us']:.1f} us, {baseline['impl']} {baseline['us']:.1f} us")  # fmt: skip
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--rows", type=ints_at_least(1), default=(1,), help="comma-separated row counts (decode batch sizes)")
    parser.add_argument("--json", type=output_file, help="write the rows here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("sweep_fused_linear times kernels on a GPU; this machine has none", flush=True)
        return 2
    print(torch.cuda.get_device_name(), f"torch {torch.__version__} triton {triton.__version__}", flush=True)
    results = sweep(list(args.rows))
    print("\n".join(summary_lines(results)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
