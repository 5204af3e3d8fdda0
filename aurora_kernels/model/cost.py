"""The cost model: FLOPs and bytes moved per stage of one batch of requests, from the config alone.

FLOPs count multiply-adds as 2 (matmuls 2*m*n*k; attention 4 * D * heads * visible query-key
pairs); norms, activations and softmax are left out (under 1% here). Bytes count what a stage must
move at least: its weights read once per batch, its input and output activations, and the KV cache
it reads or writes; intermediate activations that a fused kernel keeps on chip are not counted.

The question it answers (`python -m aurora_kernels.model.cost`, and `make bench`): does compressing
256 visual tokens to 64 cut the prefill FLOPs by more than half, as the paper says, and what does
each decode step save?
"""

from __future__ import annotations

import argparse
import dataclasses

from aurora_kernels._cli_arguments import int_at_least
from aurora_kernels.model.config import PRESETS, AuroraConfig, LLMConfig, preset


def _qkv_width(cfg: LLMConfig) -> int:
    return (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim


def _layer_projection_params(cfg: LLMConfig) -> int:
    """One decoder layer's four projection weights: qkv, o, gate_up, down."""
    return (_qkv_width(cfg) + cfg.num_heads * cfg.head_dim + 3 * cfg.intermediate_size) * cfg.hidden_size


def _decoder_layer_params(cfg: LLMConfig) -> int:
    """The projections, the qkv bias and the two RMSNorm weights."""
    return _layer_projection_params(cfg) + _qkv_width(cfg) + 2 * cfg.hidden_size


def projection_weight_bytes(cfg: LLMConfig, dtype_bytes: int = 2) -> int:
    """The bytes of the decoder layers' four projection weights (qkv, o, gate_up, down), all layers:
    what a decode step's GEMVs stream."""
    return cfg.num_layers * _layer_projection_params(cfg) * dtype_bytes


def part_parameters(config: AuroraConfig) -> dict[str, int]:
    v, llm, comp = config.vision, config.llm, config.compressor
    c, width = llm.hidden_size, llm.num_heads * llm.head_dim
    vision_layer = (
        4 * v.hidden_size
        + 4 * v.hidden_size * (v.hidden_size + 1)
        + 2 * v.hidden_size * v.intermediate_size
        + v.intermediate_size
        + v.hidden_size
    )
    return {
        "vision": v.hidden_size * (v.num_channels * v.patch_size**2 + 1) + v.num_patches * v.hidden_size
        + v.num_layers * vision_layer + 2 * v.hidden_size,
        "projector": v.hidden_size * c + c + c * c + c,
        "compressor": comp.hidden * (v.num_patches + 1) + comp.out_tokens * (comp.hidden + 1) if comp.kind == "mlp" else 0,
        "fusion": c + width * (c + 1) + 2 * width * (c + 1) + width * c + _decoder_layer_params(llm),
        "llm": llm.vocab_size * c * (1 if llm.tie_word_embeddings else 2) + llm.num_layers * _decoder_layer_params(llm) + c,
    }  # fmt: skip


def parameter_count(config: AuroraConfig) -> int:
    return sum(part_parameters(config).values())


@dataclasses.dataclass
class StageCost:
    stage: str
    flops: float
    bytes: float


def _layer_flops(cfg: LLMConfig, tokens: int, attended_pairs: int) -> int:
    """One decoder layer over `tokens` new tokens that see `attended_pairs` query-key pairs in all."""
    return 2 * tokens * _layer_projection_params(cfg) + 4 * cfg.head_dim * cfg.num_heads * attended_pairs


def _causal_pairs(length: int) -> int:
    return length * (length + 1) // 2


def kv_cache_bytes(cfg: LLMConfig, context: int, dtype_bytes: int = 2) -> int:
    """K and V of every layer for one request of `context` tokens."""
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * context * dtype_bytes


def stage_costs(
    config: AuroraConfig, batch: int = 1, prompt_len: int = 32, decode_step: int = 0, dtype_bytes: int = 2
) -> list[StageCost]:
    """Per stage of a batch of `batch` requests with `prompt_len`-token prompts; the decode step is the
    `decode_step`-th new token (its context: visual tokens + prompt + decode_step)."""
    v, llm, comp = config.vision, config.llm, config.compressor
    params = part_parameters(config)
    n, c, m, length = v.num_patches, llm.hidden_size, config.visual_tokens, prompt_len
    width = llm.num_heads * llm.head_dim
    act = lambda tokens, channels: batch * tokens * channels * dtype_bytes  # noqa: E731
    weights = lambda part: params[part] * dtype_bytes  # noqa: E731

    vision_layer = 2 * n * v.hidden_size * (4 * v.hidden_size + 2 * v.intermediate_size) + 4 * n * n * v.hidden_size
    vision = batch * (2 * n * v.num_channels * v.patch_size**2 * v.hidden_size + v.num_layers * vision_layer)
    projector = batch * 2 * n * (v.hidden_size * c + c * c)
    compressor = {"mlp": batch * 2 * c * comp.hidden * (n + m), "pool": batch * n * c, "none": 0}[comp.kind]
    fusion = batch * (2 * length * c * 2 * width + 2 * n * c * 2 * width + 4 * length * n * width
                      + _layer_flops(llm, length, _causal_pairs(length)))  # fmt: skip
    context = m + length
    prefill = batch * (llm.num_layers * _layer_flops(llm, context, _causal_pairs(context)) + 2 * c * llm.vocab_size)
    step_context = context + decode_step + 1  # the new token sees the cache and itself
    decode = batch * (llm.num_layers * _layer_flops(llm, 1, step_context) + 2 * c * llm.vocab_size)
    return [
        StageCost("vision", vision, weights("vision") + act(n, v.num_channels * v.patch_size**2 + v.hidden_size)),
        StageCost("projector", projector, weights("projector") + act(n, v.hidden_size + c)),
        StageCost("compressor", compressor, weights("compressor") + (act(n + m, c) if comp.kind != "none" else 0)),
        StageCost("fusion", fusion, weights("fusion") + act(2 * length + n, c)),
        StageCost("prefill", prefill, weights("llm") + act(context, c) + batch * kv_cache_bytes(llm, context, dtype_bytes)),
        StageCost("decode step", decode, weights("llm") + batch * kv_cache_bytes(llm, step_context - 1, dtype_bytes)),
    ]


def comparison_markdown(name: str = "aurora-edge-v-2b", batch: int = 1, prompt_len: int = 32, dtype_bytes: int = 2) -> str:
    """Per-stage GFLOP and MB, compressor mlp / pool against none, and the verdict on the paper's claim."""
    kinds = ("mlp", "pool", "none")
    configs = {kind: preset(name, compressor=kind) for kind in kinds}
    costs = {kind: stage_costs(cfg, batch, prompt_len, 0, dtype_bytes) for kind, cfg in configs.items()}
    lines = [
        f"## Cost model: {name}, batch {batch}, {prompt_len}-token prompt, {8 * dtype_bytes}-bit weights",
        "",
        f"Parameters: {parameter_count(configs['mlp']) / 1e9:.3f} B with the MLP compressor "
        f"({', '.join(f'{k} {p / 1e6:.1f} M' for k, p in part_parameters(configs['mlp']).items())}).",
        "",
        "| stage | " + " | ".join(f"{k} GFLOP | {k} MB" for k in kinds) + " |",
        "| --- | " + " | ".join("---: | ---:" for _ in kinds) + " |",
    ]
    for i, stage in enumerate(costs["mlp"]):
        cells = " | ".join(f"{costs[k][i].flops / 1e9:,.2f} | {costs[k][i].bytes / 1e6:,.1f}" for k in kinds)
        lines.append(f"| {stage.stage} | {cells} |")
    to_first_token = {k: sum(s.flops for s in costs[k][:5]) for k in kinds}
    llm_prefill = {k: costs[k][4].flops for k in kinds}
    lines += ["", "| compared with none | " + " | ".join(k for k in kinds[:2]) + " |", "| --- | ---: | ---: |"]
    lines.append("| LLM prefill FLOPs | " + " | ".join(f"{llm_prefill[k] / llm_prefill['none']:.1%}" for k in kinds[:2]) + " |")
    lines.append("| all stages to the first token, FLOPs | "
                 + " | ".join(f"{to_first_token[k] / to_first_token['none']:.1%}" for k in kinds[:2]) + " |")  # fmt: skip
    for kind in kinds[:2]:
        step, base = costs[kind][5], costs["none"][5]
        kv, kv_base = (kv_cache_bytes(configs[k].llm, configs[k].visual_tokens + prompt_len, dtype_bytes) for k in (kind, "none"))
        lines.append(f"| {kind}: each decode step | {step.flops / base.flops:.1%} of the FLOPs, "
                     f"{step.bytes / base.bytes:.1%} of the bytes; KV cache {kv / 1e6:.2f} MB vs {kv_base / 1e6:.2f} MB a request | |")  # fmt: skip
    cut = 1 - to_first_token["mlp"] / to_first_token["none"]
    llm_cut = 1 - llm_prefill["mlp"] / llm_prefill["none"]
    lines += ["", f"Paper's claim (\"FLOPs cut by more than half\"): the LLM prefill is cut by {llm_cut:.0%}; counting the "
                  f"vision tower, projector, compressor and fusion too, the work to the first token is cut by {cut:.0%}: "
                  f"the claim {'holds' if cut > 0.5 else 'does not hold'} for the whole prefill at this prompt length."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="FLOPs and bytes per stage, compressor mlp / pool vs none", allow_abbrev=False)
    parser.add_argument("--preset", default="aurora-edge-v-2b", choices=PRESETS)
    parser.add_argument("--batch", type=int_at_least(1), default=1)
    parser.add_argument("--prompt-len", type=int_at_least(1), default=32)
    args = parser.parse_args(argv)
    print(comparison_markdown(args.preset, args.batch, args.prompt_len))


if __name__ == "__main__":
    main()
