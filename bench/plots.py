"""PNG plots of a GPU run's results (matplotlib, the `bench` extra).

    python -m bench.plots bench/results/<device-name>

reads results.json (and model-e2e.json when present) there and writes:
- `<op>.png` per op: median time of ours and of every peer per benchmark case (log scale), the cases
  in the order they were registered (growing sizes), and ours replayed from a CUDA graph (dashed);
- `roofline.png`: for every case, our time's fraction of its roofline floor (100% = at the ceiling
  of whichever resource bounds it), bars coloured by op;
- `model-e2e.png`: decode tokens/s per configuration of the end-to-end model run.

GPU machines often lack matplotlib: `make gpu-check` plots when it can, and otherwise says to run this
command on any machine with the results.
"""

from __future__ import annotations

import argparse
import json
import os

from aurora_kernels._cli_arguments import existing_directory


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out_dir: str, name: str) -> str:
    fig.tight_layout()
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bar_labels(ax, labels: list[str], rotation: int, fontsize: int) -> None:
    ax.set_xticks(range(len(labels)), labels, rotation=rotation, ha="right", fontsize=fontsize)


def plot_ops(rows: list[dict], out_dir: str) -> list[str]:
    plt = _pyplot()
    written = []
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        impls = list(dict.fromkeys(name for r in op_rows for name in r["impls"]))
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(op_rows)), 4.5))
        for name in impls:
            points = [(i, r["impls"][name]["ms"]) for i, r in enumerate(op_rows) if "ms" in r["impls"].get(name, {})]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", linewidth=2.5 if name == "ours" else 1.2, label=name)
        graphed = [(i, r["impls"]["ours"]["graph_ms"]) for i, r in enumerate(op_rows) if "graph_ms" in r["impls"].get("ours", {})]
        if graphed:  # the kernel's device time, without the host's share of an eager call
            xs, ys = zip(*graphed)
            ax.plot(xs, ys, marker="s", linestyle="--", linewidth=1.5, label="ours, graph replay")
        ax.set_yscale("log")
        _bar_labels(ax, [r["shape"] for r in op_rows], 30, 7)
        ax.set_ylabel("median time (ms, log)")
        ax.set_title(f"{op}: ours and peers")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(plt, fig, out_dir, f"{op}.png"))
    return written


def plot_roofline(rows: list[dict], out_dir: str) -> str:
    plt = _pyplot()
    timed = [r for r in rows if "frac_floor" in r["impls"].get("ours", {})]
    ops = list(dict.fromkeys(r["op"] for r in timed))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(timed)), 4.5))
    ax.bar(range(len(timed)), [100 * r["impls"]["ours"]["frac_floor"] for r in timed],
           color=[colours(ops.index(r["op"]) % 10) for r in timed])  # fmt: skip
    ax.axhline(100, color="black", linewidth=0.8)
    _bar_labels(ax, [f"{r['op']} {r['shape']}" for r in timed], 60, 6)
    ax.set_ylabel("% of roofline floor (ours)")
    ax.set_title("How close each kernel runs to the ceiling that bounds it")
    return _save(plt, fig, out_dir, "roofline.png")


def plot_model(model_rows: list[dict], out_dir: str) -> str:
    plt = _pyplot()
    timed = [r for r in model_rows if "tokens_per_s" in r]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(timed)), 4.5))
    ax.bar(range(len(timed)), [r["tokens_per_s"] for r in timed],
           color=["tab:blue" if r["backend"] == "triton" else "tab:gray" for r in timed])  # fmt: skip
    _bar_labels(ax, [f"{r['compressor']} B{r['batch']} {r['backend']} {r['decode']}" for r in timed], 60, 7)
    ax.set_ylabel("decode tokens/s")
    ax.set_title("End to end: decode throughput (blue: Triton kernels, grey: eager reference)")
    return _save(plt, fig, out_dir, "model-e2e.png")


def plot_results_dir(results_dir: str) -> list[str]:
    """Every plot the directory's results allow (a run of only some phases has only some of them)."""
    written = []
    ops_path = os.path.join(results_dir, "results.json")
    if os.path.exists(ops_path):
        with open(ops_path) as f:
            rows = json.load(f)["rows"]
        written += plot_ops(rows, results_dir) + [plot_roofline(rows, results_dir)]
    model_path = os.path.join(results_dir, "model-e2e.json")
    if os.path.exists(model_path):
        with open(model_path) as f:
            written.append(plot_model(json.load(f), results_dir))
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="PNG plots of a GPU run's results", allow_abbrev=False)
    parser.add_argument("results_dir", type=existing_directory)
    args = parser.parse_args(argv)
    for path in plot_results_dir(args.results_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
