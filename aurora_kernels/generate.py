"""Run the model.

    python -m aurora_kernels.generate --llm-dir QWEN2 --vision-dir SIGLIP [--aurora-weights FILE] \
        --image cat.png --prompt "What is in this picture?" [--image ... --prompt ...] [--temperature 0.7]
    python -m aurora_kernels.generate --preset tiny --prompt-len 32 --max-new-tokens 16 --compressor mlp

With --image/--prompt pairs (one request each; the tokenizer and the image processor come from the
two directories) it prints each answer ("text: ...") and the timing; without, random weights (unless
--llm-dir and friends are given), random images and prompts, and it prints the tokens, the prefill
time and the decode tokens/s.

Without a GPU, backend "triton" runs the kernels under the Triton interpreter (correct, slow: fine
for the tiny preset); the default backend there is "reference" (eager PyTorch).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from aurora_kernels._cli_arguments import int_at_least

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _device(text: str) -> str:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def parse_args(argv=None):
    from aurora_kernels.model.config import COMPRESSORS, PRESETS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--preset", default="tiny", choices=PRESETS)
    parser.add_argument("--compressor", default="mlp", choices=COMPRESSORS)
    parser.add_argument("--batch", type=int_at_least(1), default=1, help="requests (prompt lengths spread up to --prompt-len)")
    parser.add_argument("--prompt-len", type=int_at_least(1), default=32)
    parser.add_argument("--max-new-tokens", type=int_at_least(1), default=16)
    parser.add_argument("--eos-token-id", type=int_at_least(0), nargs="+", help="one or more token ids that end a request")
    parser.add_argument("--backend", choices=("triton", "reference"), help="default: triton on a GPU, reference on a CPU")
    parser.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--cache", default="contiguous", choices=("contiguous", "paged"))
    parser.add_argument("--llm-dir", help="transformers Qwen2 directory (config.json + safetensors)")
    parser.add_argument("--vision-dir", help="transformers SigLIP directory (with --llm-dir)")
    parser.add_argument("--aurora-weights", help="projector / compressor / fusion safetensors file (with --llm-dir)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="the random requests' and the sampling's")
    parser.add_argument("--image", action="append", default=[], help="an image file (repeat with --prompt: one request each)")
    parser.add_argument("--prompt", action="append", default=[], help="the question about the --image of the same rank")
    parser.add_argument("--do-sample", action="store_true", help="sample (default: greedy)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int_at_least(0), default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args(argv)
    if len(args.image) != len(args.prompt):
        parser.error(
            f"--image and --prompt: expected one prompt per image, got {len(args.image)} images and {len(args.prompt)} prompts"
        )
    if args.image and not (args.llm_dir and args.vision_dir):
        parser.error("--image needs --llm-dir and --vision-dir (their tokenizer and image processor)")
    for image in args.image:
        if not os.path.isfile(image):
            parser.error(f"--image: no such file: {image}")
    if args.temperature != 1.0 or args.top_k or args.top_p != 1.0:
        args.do_sample = True
    for flag, value in (("--vision-dir", args.vision_dir), ("--aurora-weights", args.aurora_weights)):
        if value and not args.llm_dir:
            parser.error(f"{flag} needs --llm-dir (weights load into a model whose LLM comes from a directory)")
    for flag, value, exists in (("--llm-dir", args.llm_dir, os.path.isdir), ("--vision-dir", args.vision_dir, os.path.isdir),
                                ("--aurora-weights", args.aurora_weights, os.path.isfile)):  # fmt: skip
        if value and not exists(value):
            parser.error(f"{flag}: no such {'directory' if exists is os.path.isdir else 'file'}: {value}")
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
    args.backend = args.backend or ("triton" if on_gpu else "reference")
    args.dtype = DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    return args


def build_model(args):
    from aurora_kernels.model import AuroraEdgeV, preset

    if args.llm_dir:
        return AuroraEdgeV.from_pretrained(args.llm_dir, args.vision_dir, args.aurora_weights, args.compressor,
                                           args.backend, args.dtype, args.device)  # fmt: skip
    torch.manual_seed(args.seed)
    return AuroraEdgeV(preset(args.preset, compressor=args.compressor), backend=args.backend).to(args.device, args.dtype)


def random_requests(model, batch: int, prompt_len: int, seed: int = 0, lengths=None):
    """Random images and prompts; request b's prompt has `lengths[b]` tokens, by default
    prompt_len * (b + 1) // batch."""
    gen = torch.Generator().manual_seed(seed)
    vision = model.config.vision
    pixel_values = torch.randn((batch, vision.num_channels, vision.image_size, vision.image_size), generator=gen)
    lengths = lengths or [max(1, prompt_len * (b + 1) // batch) for b in range(batch)]
    prompts = [torch.randint(0, model.config.llm.vocab_size, (n,), generator=gen) for n in lengths]
    return pixel_values.to(model.device, next(model.parameters()).dtype), [p.to(model.device) for p in prompts]


def timed_generation(model, pixel_values, prompts, max_new_tokens, **kwargs) -> tuple[list[list[int]], dict]:
    stats: dict = {}
    tokens = model.generate(pixel_values, prompts, max_new_tokens, stats=stats, **kwargs)
    steps = stats["decode_steps"]
    stats["decode_tokens_per_s"] = len(prompts) * steps / stats["decode_s"] if steps else float("nan")
    return tokens, stats


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.backend == "triton" and not args.device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        # the kernels are decorated at import: run again with the interpreter switched on from the start
        print("no GPU: running the Triton kernels under the interpreter (TRITON_INTERPRET=1)", file=sys.stderr, flush=True)
        os.execve(sys.executable, [sys.executable, "-m", "aurora_kernels.generate", *(argv or sys.argv[1:])],
                  {**os.environ, "TRITON_INTERPRET": "1"})  # fmt: skip
    try:
        model = build_model(args).eval()
    except (OSError, ValueError, KeyError) as e:  # a checkpoint that cannot be loaded: one line naming it
        print(f"error: {e}", file=sys.stderr)
        return 2
    sampling = {"do_sample": args.do_sample, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
                "seed": args.seed}  # fmt: skip
    if args.image:
        return answer(model, args, sampling)
    pixel_values, prompts = random_requests(model, args.batch, args.prompt_len, args.seed)
    try:
        tokens, stats = timed_generation(model, pixel_values, prompts, args.max_new_tokens, eos_token_id=args.eos_token_id,
                                         cache=args.cache, **sampling)  # fmt: skip
    except ValueError as e:  # a request the model cannot hold (a prompt past its positions, say): one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = model.config
    print(f"{args.preset if not args.llm_dir else args.llm_dir}: compressor {cfg.compressor.kind} "
          f"({cfg.visual_tokens} visual tokens into the LLM), backend {args.backend}, {args.device}, "
          f"{str(args.dtype).replace('torch.', '')}, {args.cache} cache")  # fmt: skip
    for b, (prompt, new) in enumerate(zip(prompts, tokens)):
        print(f"request {b}: prompt {prompt.numel()} tokens -> {new}")
    print(f"prefill: {stats['prefill_s'] * 1e3:.1f} ms (vision, compressor, fusion, LLM prefill, first token)")
    print(f"decode ({stats['decode']}): {stats['decode_steps']} steps in {stats['decode_s'] * 1e3:.1f} ms, "
          f"{stats['decode_tokens_per_s']:.1f} tokens/s over {args.batch} request(s)")  # fmt: skip
    return 0


def answer(model, args, sampling: dict) -> int:
    """The --image/--prompt requests answered in text, one line each, then the timing."""
    from aurora_kernels.model.processor import AuroraProcessor

    try:
        processor = AuroraProcessor.from_pretrained(args.llm_dir, args.vision_dir)
    except (OSError, ValueError) as e:  # no tokenizer or image processor: one line naming the directory
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats: dict = {}
    eos = {"eos_token_id": args.eos_token_id} if args.eos_token_id else {}
    try:
        answers = model.chat(processor, args.image, args.prompt, args.max_new_tokens, cache=args.cache, stats=stats, **eos,
                             **sampling)  # fmt: skip
    except (OSError, ValueError) as e:  # an image that cannot be read, a request too long: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    for text in answers:
        print(f"text: {text}")
    print(f"prefill: {stats['prefill_s'] * 1e3:.1f} ms; decode ({stats['decode']}): {stats['decode_steps']} steps in "
          f"{stats['decode_s'] * 1e3:.1f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
