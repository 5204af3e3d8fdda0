"""How long loading a checkpoint takes and how much memory it needs at its peak (CPU).

Writes a random checkpoint of a preset (transformers' Qwen2 and SigLIP directories and our file,
save_pretrained, in bf16) and loads it with AuroraEdgeV.from_pretrained in a fresh process, which
reports its wall time and its peak resident memory against the checkpoint's bytes.

    python -m bench.loading --preset aurora-edge-v-2b [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from aurora_kernels._cli_arguments import output_directory
from aurora_kernels.model.config import PRESETS

_LOAD = """
import json, resource, sys, time, torch
from aurora_kernels.model import AuroraEdgeV
start = time.perf_counter()
model = AuroraEdgeV.from_pretrained(sys.argv[1], sys.argv[2], sys.argv[3], backend="reference", dtype=torch.bfloat16)
print(json.dumps({"load_s": time.perf_counter() - start, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def write_checkpoint(preset_name: str, root: str) -> tuple[str, str, str]:
    """A random bf16 checkpoint of the preset under root: (LLM dir, vision dir, our file)."""
    from aurora_kernels.model import AuroraEdgeV, preset
    from aurora_kernels.model.loading import materialize

    torch.manual_seed(0)
    with torch.device("meta"):
        model = AuroraEdgeV(preset(preset_name), backend="reference")
    materialize(model, torch.device("cpu"), torch.bfloat16)
    paths = (os.path.join(root, "qwen2"), os.path.join(root, "siglip"), os.path.join(root, "aurora.safetensors"))
    model.save_pretrained(*paths)
    return paths


def checkpoint_bytes(paths) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d in paths[:2] for f in os.listdir(d) if f.endswith(".safetensors")) + \
        os.path.getsize(paths[2])  # fmt: skip


def measure(paths, python: str = sys.executable, env: dict | None = None) -> dict:
    run = subprocess.run([python, "-c", _LOAD, *paths], capture_output=True, text=True, env=env, check=True)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["checkpoint_bytes"] = checkpoint_bytes(paths)
    result["peak_over_checkpoint"] = result["peak_rss_bytes"] / result["checkpoint_bytes"]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--preset", default="aurora-edge-v-2b", choices=PRESETS)
    parser.add_argument(
        "--keep", type=output_directory, help="write the checkpoint here and keep it (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    root = args.keep or tempfile.mkdtemp(prefix="aurora-checkpoint-")
    start = time.perf_counter()
    paths = write_checkpoint(args.preset, root) if not os.path.isdir(os.path.join(root, "qwen2")) else (
        os.path.join(root, "qwen2"), os.path.join(root, "siglip"), os.path.join(root, "aurora.safetensors"))  # fmt: skip
    print(
        f"checkpoint: {checkpoint_bytes(paths) / 1e9:.2f} GB in {root} ({time.perf_counter() - start:.0f} s to write)", flush=True
    )
    result = measure(paths)
    print(f"from_pretrained: {result['load_s']:.1f} s, peak resident {result['peak_rss_bytes'] / 1e9:.2f} GB "
          f"({result['peak_over_checkpoint']:.2f}x the checkpoint), {result['parameters'] / 1e9:.2f} B parameters")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
