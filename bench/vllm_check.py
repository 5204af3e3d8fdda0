"""The vLLM plugin served end to end (GPU machine with vLLM installed; not run by `make bench`).

Writes a random checkpoint of the LLM of a preset (transformers' Qwen2 layout, bf16), then serves the
same batch of prompts twice, each in a fresh process: vLLM alone (VLLM_PLUGINS="" leaves every plugin
out) and vLLM with our plugin and attention backend "AURORA". Greedy decoding, EOS ignored, the same
prompt token ids. Reports for each: the generated tokens' agreement with vLLM alone (the share of
identical tokens, and where each request first differs: bf16 rounding may flip a near-tie), and the
throughput of the timed generate call (new tokens per second, after one warm-up call).

    python -m bench.vllm_check --preset aurora-edge-v-2b --batch 8 --prompt-len 512 --new-tokens 128 [--json FILE]

"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_SERVE = """
import json, sys, time
from vllm import LLM, SamplingParams
args = json.loads(sys.argv[1])
kwargs = {"attention_backend": "AURORA"} if args["plugin"] else {}
llm = LLM(model=args["model"], skip_tokenizer_init=True, dtype="bfloat16", gpu_memory_utilization=0.6,
          max_model_len=args["max_len"], seed=0, **kwargs)
prompts = [{"prompt_token_ids": ids} for ids in args["prompts"]]
params = SamplingParams(temperature=0.0, max_tokens=args["new_tokens"], ignore_eos=True)
llm.generate(prompts, params, use_tqdm=False)  # warm-up: compiles, captures, autotunes
start = time.perf_counter()
outputs = llm.generate(prompts, params, use_tqdm=False)
seconds = time.perf_counter() - start
tokens = [list(o.outputs[0].token_ids) for o in outputs]
print("RESULT " + json.dumps({"seconds": seconds, "tokens": tokens}))
"""


def serve(model_dir: str, prompts: list[list[int]], new_tokens: int, plugin: bool) -> dict:
    env = dict(os.environ)
    if not plugin:
        env["VLLM_PLUGINS"] = ""  # an allow-list naming no plugin
    args = {"model": model_dir, "prompts": prompts, "new_tokens": new_tokens, "plugin": plugin,
            "max_len": max(map(len, prompts)) + new_tokens}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", _SERVE, json.dumps(args)], env=env, capture_output=True, text=True)
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    if run.returncode != 0 or not lines:
        raise RuntimeError(f"vLLM ({'with' if plugin else 'without'} the plugin) failed:\n{run.stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["tokens_per_s"] = len(prompts) * new_tokens / result["seconds"]
    return result


def agreement(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    same = sum(a == b for x, y in zip(ours, theirs) for a, b in zip(x, y))
    total = sum(len(x) for x in theirs)
    first_difference = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), None) for x, y in zip(ours, theirs)]
    return {"identical_share": same / total, "first_difference": first_difference}


def main(argv=None) -> None:
    from aurora_kernels._cli_arguments import int_at_least, output_file

    parser = argparse.ArgumentParser(prog="python -m bench.vllm_check", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--preset", default="aurora-edge-v-2b", choices=("tiny", "aurora-edge-v-2b"))
    parser.add_argument("--batch", type=int_at_least(1), default=8)
    parser.add_argument("--prompt-len", type=int_at_least(1), default=512)
    parser.add_argument("--new-tokens", type=int_at_least(1), default=128)
    parser.add_argument("--json", type=output_file, help="also write the report here")
    args = parser.parse_args(argv)

    import torch

    from aurora_kernels.model import AuroraEdgeV, preset

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = AuroraEdgeV(preset(args.preset), backend="reference").to(torch.bfloat16)
        model.save_pretrained(os.path.join(tmp, "llm"), os.path.join(tmp, "vision"), os.path.join(tmp, "aurora.safetensors"))
        vocab = model.config.llm.vocab_size
        del model
        prompts = torch.randint(0, vocab, (args.batch, args.prompt_len)).tolist()
        baseline = serve(os.path.join(tmp, "llm"), prompts, args.new_tokens, plugin=False)
        ours = serve(os.path.join(tmp, "llm"), prompts, args.new_tokens, plugin=True)
    report = {"preset": args.preset, "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
              "vllm_tokens_per_s": baseline["tokens_per_s"], "aurora_tokens_per_s": ours["tokens_per_s"],
              **agreement(ours["tokens"], baseline["tokens"])}  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
