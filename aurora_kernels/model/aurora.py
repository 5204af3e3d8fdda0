"""AuroraEdgeV: vision tower -> projector -> token compressor -> (with the fusion-enriched prompt)
-> Qwen2 LLM, with batched greedy generation over a KV cache.

For request b with prompt length L_b the LLM sees M + L_b tokens: the M compressed visual tokens
Vc[b] (64 in the full preset; all 256 with compressor "none"), then the fused prompt T'[b].
Requests are packed (varlen) through the fusion and the prefill, so nothing is padded.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from aurora_kernels._cuda_graphs import Graphed, graphs_supported, run_on_side_stream
from aurora_kernels._validation import check_backend, check_int, check_tensor, should_check_values, value_range
from aurora_kernels.model.compressor import Projector, TokenCompressor
from aurora_kernels.model.config import AuroraConfig
from aurora_kernels.model.fusion import Fusion
from aurora_kernels.model.kv_cache import KVCache, check_page_size
from aurora_kernels.model.llm import Qwen2LM
from aurora_kernels.model.options import RunOptions
from aurora_kernels.model.prefill_plan import PaddedShape, PrefillPlan, build_prefill_plan
from aurora_kernels.model.vision import VisionTower

CACHE_LAYOUTS = ("contiguous", "paged")
PIXEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def init_parameter(name: str, param: torch.Tensor, std: float) -> None:
    """Random weights for one parameter, by its name (AuroraEdgeV.reset_parameters)."""
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name and leaf == "weight":  # RMSNorm / LayerNorm scales
        param.fill_(1.0)
    elif leaf in ("w1", "w2"):  # the compressor's token MLP, fan-in scaled
        param.normal_(0.0, param.shape[1] ** -0.5)
    else:
        param.normal_(0.0, std)


class _TextStreamer:
    """Token ids in, each request's new text out: the request's whole answer decoded again at each
    token (a byte-level tokenizer's characters may span tokens), its new tail handed on once it is
    whole (no replacement character at its end)."""

    def __init__(self, processor, batch: int, on_text):
        self.processor, self.on_text = processor, on_text
        self.tokens, self.sent = [[] for _ in range(batch)], [""] * batch

    def __call__(self, request: int, new_tokens: list[int]) -> None:
        self.tokens[request] += new_tokens
        text = self.processor.decode(self.tokens[request])
        if not text.endswith("\ufffd"):
            self._send(request, text)

    def finish(self, answers: list[str]) -> None:
        """The rest of each answer, a partial character at its end included."""
        for request, text in enumerate(answers):
            self._send(request, text)

    def _send(self, request: int, text: str) -> None:
        sent = self.sent[request]
        if text.startswith(sent) and len(text) > len(sent):
            self.on_text(request, text[len(sent) :])
            self.sent[request] = text


# Image encoder graphs kept per model, least recently used dropped first: one per batch shape, each
# holding its own memory pool (the ViT's activations at that batch).
MAX_ENCODER_GRAPHS = 4


def _check_has_values(name: str, t: torch.Tensor) -> None:
    """A request's tensor is copied to the model's device and read: a meta tensor has no values."""
    if t.is_meta:
        raise ValueError(f"{name}: expected a tensor with values (on the CPU or a GPU), got one on the meta device")


class AuroraEdgeV(nn.Module):
    def __init__(self, config: AuroraConfig, backend: str = "triton", options: RunOptions | None = None):
        super().__init__()
        check_backend(backend)
        self.config, self.backend = config, backend
        self.vision = VisionTower(config.vision, backend)
        self.projector = Projector(config.vision.hidden_size, config.llm.hidden_size, backend)
        self.compressor = TokenCompressor(config, backend)
        self.fusion = Fusion(config.llm, backend)
        self.llm = Qwen2LM(config.llm, backend)
        # bumped by each change of how the model runs (backend, options, compressor): a runtime drops
        # what it captured or compiled under the old ones
        self.options_version = 0
        self._runtimes: dict = {}  # (cache layout, page size) -> the Runtime generate runs on
        self._encoder_graphs: dict = {}  # key -> Graphed, least recently used first
        self.options = RunOptions()
        if options is not None:
            self.set_options(options)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random weights as a trained checkpoint roughly has them: N(0, std) matrices and biases (so
        the bias paths are exercised), unit norm weights, and a compressor MLP scaled to keep the
        visual tokens' magnitude (w1 ~ N(0, 1/N), w2 ~ N(0, 1/H))."""
        for name, param in self.named_parameters():
            init_parameter(name, param, std)

    @classmethod
    def from_pretrained(cls, llm_dir, vision_dir=None, aurora_weights=None, compressor="mlp", backend="triton",
                        dtype=torch.bfloat16, device="cpu"):  # fmt: skip
        """LLM from a transformers Qwen2 directory, vision tower from a SigLIP directory (random if
        None), projector / compressor / fusion from our safetensors file (random if None)."""
        from aurora_kernels.model.loading import load_pretrained

        return load_pretrained(cls, llm_dir, vision_dir, aurora_weights, compressor, backend, dtype, device)

    def save_pretrained(self, llm_dir, vision_dir, aurora_weights) -> None:
        """The LLM and the vision tower as transformers Qwen2 and SigLIP directories, the projector,
        compressor and fusion as our safetensors file: what from_pretrained reads back."""
        from aurora_kernels.model.loading import save_pretrained

        save_pretrained(self, llm_dir, vision_dir, aurora_weights)

    def set_backend(self, backend: str) -> "AuroraEdgeV":
        """Switch every op of every part to `backend` ("triton" or "reference"), weights unchanged."""
        check_backend(backend)
        for module in self.modules():
            if hasattr(module, "backend"):
                module.backend = backend
        self._encoder_graphs.clear()  # captured with the other backend's kernels
        self.options_version += 1
        return self

    def set_options(self, options: RunOptions | None = None, **changes) -> "AuroraEdgeV":
        """Run with `options` (a RunOptions), or with the current ones but for `changes`
        (`model.set_options(fuse_decode_projections=False)`); weights and results unchanged. A
        runtime drops the steps it captured or compiled under the options before."""
        if options is not None and not isinstance(options, RunOptions):
            raise TypeError(f"options: expected a RunOptions, got {type(options).__name__}")
        options = (options or self.options).replace(**changes)
        if options == self.options:
            return self
        if not options.encoder_cuda_graphs:
            self._encoder_graphs.clear()
        self.options = options
        self.options_version += 1
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.embed_tokens.weight.device

    def check_requests(self, pixel_values, input_ids):
        """pixel_values and input_ids as generate and prefill take them, or an error naming them."""
        vision = self.config.vision
        check_tensor("pixel_values", pixel_values, shape=(None, vision.num_channels, vision.image_size, vision.image_size),
                     layout="[B, C, H, W] at the vision tower's channels and image size", dtypes=PIXEL_DTYPES)  # fmt: skip
        _check_has_values("pixel_values", pixel_values)
        if not isinstance(input_ids, (list, tuple)) or not all(isinstance(t, torch.Tensor) and t.ndim == 1 for t in input_ids):
            raise TypeError("input_ids: expected a list of 1-D int64 tensors, one prompt per image")
        if len(input_ids) != pixel_values.shape[0]:
            raise ValueError(f"input_ids: expected {pixel_values.shape[0]} prompts (one per image), got {len(input_ids)}")
        if not input_ids:
            raise ValueError("input_ids, pixel_values: expected at least one request, got none")
        for b, ids in enumerate(input_ids):
            self._check_token_ids(f"input_ids[{b}]", ids)

    def _check_token_ids(self, name: str, ids: torch.Tensor) -> None:
        """int64; within the vocabulary where the ops' value checks run (on CPU, not while tracing: on
        a GPU that read would be a host sync)."""
        vocab = self.config.llm.vocab_size
        if ids.dtype != torch.int64:
            raise TypeError(f"{name}: expected dtype int64, got {ids.dtype}")
        _check_has_values(name, ids)
        if ids.numel() and should_check_values(ids):
            low, high = value_range(ids)
            if low < 0 or high >= vocab:
                raise ValueError(f"{name}: expected token ids in [0, {vocab}), got {low}..{high}")

    def eos_token_ids(self, eos_token_id) -> tuple[int, ...]:
        """eos_token_id as generation_config.json holds it (None, an int, or a list of ints) -> a tuple."""
        if eos_token_id is None:
            return ()
        ids = (eos_token_id,) if isinstance(eos_token_id, int) else eos_token_id
        if not isinstance(ids, (tuple, list)) or not ids:
            raise TypeError(f"eos_token_id: expected an int, a non-empty list of ints or None, got {eos_token_id!r}")
        for token in ids:
            check_int("eos_token_id", token, minimum=0)
            if token >= self.config.llm.vocab_size:
                raise ValueError(f"eos_token_id: expected token ids in [0, {self.config.llm.vocab_size}), got {token}")
        return tuple(ids)

    def plan_prefill(self, pixel_values, input_ids, reserve: int = 0, cache: KVCache | None = None, generated=None, *,
                     padded: PaddedShape | None = None, into=None) -> PrefillPlan:  # fmt: skip
        """The checked requests' PrefillPlan (build_prefill_plan): `reserve` new tokens still to come
        must fit the LLM's positions (and `cache`, when given) with every request."""
        self.check_requests(pixel_values, input_ids)
        extra = [len(tokens) for tokens in generated] if generated is not None else [0] * len(input_ids)
        needed = self.config.visual_tokens + max(int(ids.numel()) + g for ids, g in zip(input_ids, extra)) + reserve
        if needed > self.config.llm.max_position_embeddings:
            raise ValueError(
                f"input_ids: the longest request needs {needed} positions (visual tokens + prompt + generated + new "
                f"tokens), over the LLM's max_position_embeddings {self.config.llm.max_position_embeddings}"
            )
        if cache is not None and needed > cache.capacity:
            raise ValueError(f"kv: the longest request needs {needed} positions (visual tokens + prompt + new tokens), "
                             f"over the cache's capacity {cache.capacity}")  # fmt: skip
        return build_prefill_plan(input_ids, self.config.visual_tokens, self.device, cache, generated, padded=padded, into=into)

    def llm_input(self, pixel_values: torch.Tensor, plan: PrefillPlan, encoder_graphs: bool = True) -> torch.Tensor:
        """The packed LLM input x [rows, C] of a plan's requests: Vc[b], the fused prompt T'[b] and
        the embeddings of the tokens generated after it, request after request. Static shapes for a
        padded plan (pixel_values padded to its batch); encoder_graphs=False inside a capture of its own."""
        pixel_values = pixel_values.to(self.device, non_blocking=True)
        visual, compressed = self._encode(pixel_values) if encoder_graphs else self.encode_images(pixel_values)
        fused = self.fusion(self.llm.embed_tokens(plan.input_ids), visual, plan.text_offsets, plan.max_prompt_length,
                            self.llm.rotary, plan.text_positions)  # fmt: skip
        return torch.cat([compressed.flatten(0, 1), fused, self.llm.embed_tokens(plan.generated_ids)])[plan.gather]

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, H, W] -> (V [B, N, C], the projected visual tokens the fusion attends
        to; Vc [B, M, C], the compressed ones the LLM reads)."""
        visual = self.projector(self.vision(pixel_values))
        return visual, self.compressor(visual)

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """encode_images, from a cached CUDA graph where options.encoder_cuda_graphs asks for one. Its
        outputs are the graph's buffers, overwritten by the next replay: prefill consumes them first."""
        if not self.options.encoder_cuda_graphs:
            return self.encode_images(pixel_values)
        if not graphs_supported(pixel_values.device):
            raise ValueError(f"encoder_cuda_graphs: CUDA graphs need the model on a CUDA device, got {pixel_values.device}")
        if torch.is_grad_enabled():
            return self.encode_images(pixel_values)
        parts = (self.vision, self.projector, self.compressor)
        key = (tuple(pixel_values.shape), pixel_values.dtype, pixel_values.device, self.config.compressor,
               tuple(p.data_ptr() for part in parts for p in part.parameters()))  # fmt: skip
        graphed = self._encoder_graphs.pop(key, None)
        if graphed is None:
            outputs = run_on_side_stream(self.encode_images, pixel_values)  # compiles and autotunes
            graphed = Graphed(self.encode_images, pixel_values)
            while len(self._encoder_graphs) >= MAX_ENCODER_GRAPHS:
                self._encoder_graphs.pop(next(iter(self._encoder_graphs)))
            self._encoder_graphs[key] = graphed
            return outputs
        self._encoder_graphs[key] = graphed  # now the most recently used
        return graphed(pixel_values)

    def generate(self, pixel_values, input_ids, max_new_tokens: int, eos_token_id=None, *, cache="contiguous",
                 page_size: int = 16, decode: str = "auto", do_sample: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, generator: torch.Generator | None = None,
                 pad_token_id: int | None = None, streamer=None, return_logits: bool = False, stats: dict | None = None):  # fmt: skip
        """Batched generation: pixel_values [B, 3, H, W], input_ids a list of B 1-D int64 prompts of
        any lengths; eos_token_id None, an int or a list of ints (as generation_config.json holds
        it): a request ends at the first token that is any of them. Greedy unless do_sample: then
        softmax(logits / temperature) over the top_k most likely tokens (0: all) within top_p of
        cumulative probability, drawn on the device inside the decode step; a seed (or a generator
        to draw one from) reproduces it; top_k=1 is greedy. Returns the new tokens of each request
        (up to and including its EOS), or with pad_token_id one int64 tensor [B, longest] of them,
        padded with it (as transformers returns sequences); with return_logits, also each request's
        logits [steps, vocab] (float32) behind those tokens. streamer(request index, new token ids)
        is called as tokens are made (a host sync a step).

        It runs on a `aurora_kernels.runtime.Runtime` the model keeps per cache layout, which grows to
        the largest request seen: its KV cache is allocated once, and its decode steps are captured
        once per batch bucket, not per request. A serving loop makes its own Runtime, with fixed limits.
        cache: "contiguous" ([B, S_max, Hkv, D] per layer) or "paged" (pages of `page_size` tokens).
        decode: "eager", "compile" (torch.compile of the step, no graph break), "cuda_graph" (the step
        captured once per batch bucket and replayed; EOS checked every few steps), or "auto":
        "cuda_graph" for the Triton kernels on a GPU and at least AUTO_GRAPH_MIN_NEW_TOKENS new
        tokens, else "eager" (`aurora_kernels.runtime.auto_decode_mode`). "compile" and "cuda_graph"
        need backend "triton" (the reference ops read lengths on the host).
        stats: a dict to receive "decode" (the mode that ran), "prefill_s" (up to the first token's
        logits), "first_step_s" (the first decode step: the second token after the first),
        "decode_s" (every decode step, the first included) and "decode_steps" (wall clock, the device
        synchronised at each mark); where this call captured its bucket's step, also "graph_setup_s",
        the part of its first step spent running it eagerly and capturing it.
        """
        from aurora_kernels.runtime import DECODE_MODES, Runtime  # the runtime sits above the model

        if decode not in DECODE_MODES:
            raise ValueError(f"decode: expected one of {DECODE_MODES}, got {decode!r}")
        if cache not in CACHE_LAYOUTS:
            raise ValueError(f"cache: expected one of {CACHE_LAYOUTS}, got {cache!r}")
        check_page_size(page_size)
        key = (cache, page_size if cache == "paged" else None)  # one contiguous runtime, whatever page_size says
        if key not in self._runtimes:
            batch = len(input_ids) if isinstance(input_ids, (list, tuple)) and input_ids else 1
            self._runtimes[key] = Runtime(self, max_batch=batch, max_length=1, cache=cache, page_size=page_size, grow=True)
        if pad_token_id is not None:
            check_int("pad_token_id", pad_token_id, minimum=0)
        result = self._runtimes[key].generate(pixel_values, input_ids, max_new_tokens, eos_token_id, decode=decode,
                                              do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                              generator=generator, streamer=streamer, return_logits=return_logits, stats=stats)  # fmt: skip
        if pad_token_id is None:
            return result
        tokens, logits = result if return_logits else (result, None)
        longest = max(len(t) for t in tokens)
        padded = torch.tensor([t + [pad_token_id] * (longest - len(t)) for t in tokens], dtype=torch.int64)
        return (padded, logits) if return_logits else padded

    def chat(self, processor, images, prompts, max_new_tokens: int = 64, *, streamer=None, **generate_kwargs) -> list[str]:
        """Text and images in, text out: each prompt (a user turn of the tokenizer's chat template)
        about its image, answered. processor: an AuroraProcessor (model/processor.py). EOS: the
        tokenizer's and generation_config.json's unless eos_token_id says otherwise. streamer(request
        index, text): called with each request's new text as it is made. generate_kwargs: generate's
        (do_sample, temperature, top_k, top_p, seed, ...)."""
        pixel_values, input_ids = processor(images, prompts)
        generate_kwargs.setdefault("eos_token_id", list(processor.eos_token_ids) or None)
        text_streamer = _TextStreamer(processor, len(input_ids), streamer) if streamer is not None else None
        dtype = self.llm.embed_tokens.weight.dtype
        tokens = self.generate(pixel_values.to(self.device, dtype), [ids.to(self.device) for ids in input_ids], max_new_tokens,
                               streamer=text_streamer, **generate_kwargs)  # fmt: skip
        answers = [processor.decode(t) for t in tokens]
        if text_streamer is not None:
            text_streamer.finish(answers)
        return answers

    @torch.no_grad()
    def prefill(self, pixel_values, input_ids, max_new_tokens: int, *, cache: str = "contiguous", page_size: int = 16,
                kv: KVCache | None = None):  # fmt: skip
        """The requests' prompts (vision tower, compressor, fusion, LLM prefill) into a KV cache with
        room for `max_new_tokens` more tokens per request: a fresh one, or `kv` (B sequences, e.g.
        the first rows of a runtime's cache, `KVCache.rows`), whose lengths it sets. Returns (logits
        [B, vocab] at each request's last position, the cache with its lengths on the device): where
        `generate` starts, and where a caller that runs `decode_step` itself (a serving loop, a
        profiler) starts. Nothing in it reads the device back."""
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if cache not in CACHE_LAYOUTS:
            raise ValueError(f"cache: expected one of {CACHE_LAYOUTS}, got {cache!r}")
        check_page_size(page_size)
        self.check_requests(pixel_values, input_ids)  # before the cache is sized from them
        batch, cfg = len(input_ids), self.config.llm
        if kv is None:
            capacity = self.config.visual_tokens + max(int(ids.numel()) for ids in input_ids) + max_new_tokens
            kv = KVCache(cfg.num_layers, batch, capacity, cfg.num_kv_heads, cfg.head_dim, self.llm.embed_tokens.weight.dtype,
                         self.device, page_size if cache == "paged" else None)  # fmt: skip
        elif not isinstance(kv, KVCache) or kv.batch != batch:
            raise ValueError(f"kv: expected a KVCache of {batch} sequences (KVCache.rows), got {kv!r}")
        return self.run_prefill(pixel_values, self.plan_prefill(pixel_values, input_ids, max_new_tokens, kv), kv), kv

    @torch.no_grad()  # it fills a KV cache in place: inference only
    def run_prefill(self, pixel_values: torch.Tensor, plan: PrefillPlan, kv: KVCache, encoder_graphs: bool = True):
        """The device part of a prefill: its plan's requests into kv (its first sequences), their
        lengths set; logits [kv.batch, vocab] at each sequence's last row. Reads nothing back from
        the device; with a padded plan every shape is static (what a CUDA graph captures)."""
        hidden = self.llm.prefill(self.llm_input(pixel_values, plan, encoder_graphs), plan.positions, plan.offsets,
                                  plan.max_length, kv, plan.slots)  # fmt: skip
        kv.seqlens.copy_(plan.seqlens)
        return self.llm.logits(hidden[plan.last_rows])

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, kv: KVCache) -> torch.Tensor:
        """One greedy-decoding step for every sequence: tokens [B] (int64) at positions kv.seqlens ->
        logits [B, vocab]; each layer appends its K/V to kv, then kv.seqlens advances by one. Static
        shapes, lengths on the device, no host sync: what torch.compile and CUDA graphs take."""
        if not isinstance(kv, KVCache):
            raise TypeError(f"kv: expected the KVCache that prefill returned, got {type(kv).__name__}")
        check_tensor("tokens", tokens, shape=(kv.batch,), layout="[B], one token per sequence of kv", dtypes=(torch.int64,),
                     device=self.device)  # fmt: skip
        self._check_token_ids("tokens", tokens)
        if should_check_values(kv.seqlens) and bool((kv.seqlens >= kv.capacity).any()):
            raise ValueError(f"kv: a sequence's cache is full ({kv.capacity} positions); prefill with a larger max_new_tokens")
        logits = self.llm.decode_logits(self.llm.embed_tokens(tokens), kv, self.options.fuses_decode_projections(kv.batch),
                                        self.options.puts_activation_in_gate_up(kv.batch),
                                        self.options.adds_residual_in_epilogue(kv.batch))  # fmt: skip
        kv.seqlens += 1
        return logits

    def replace_compressor(self, kind: str) -> "AuroraEdgeV":
        """Switch the token compressor ("mlp" with fresh random weights, "pool", "none"), the rest of
        the model unchanged: how the benchmarks compare 64 against 256 visual tokens on one model."""
        settings = dataclasses.replace(self.config.compressor, kind=kind)
        self.config = dataclasses.replace(self.config, compressor=settings)
        weight = self.llm.embed_tokens.weight
        self.compressor = TokenCompressor(self.config, self.backend).to(weight.device, weight.dtype)
        with torch.no_grad():
            for name, param in self.compressor.named_parameters():
                init_parameter(name, param, std=0.02)
        self._encoder_graphs.clear()  # captured with the other compressor
        self.options_version += 1
        return self

    @torch.no_grad()
    def logits_without_cache(self, pixel_values, input_ids, generated) -> list[torch.Tensor]:
        """Recompute each request's full sequence (visual tokens, fused prompt, generated tokens) with
        no cache; returns per request the logits [len(generated[b]), vocab] (float32) that predicted
        each generated token: the check on `generate`."""
        plan = self.plan_prefill(pixel_values, input_ids, generated=[g[:-1] for g in generated])
        hidden = self.llm.prefill(self.llm_input(pixel_values, plan), plan.positions, plan.offsets, plan.max_length)
        out, start = [], 0
        for length, tokens in zip(plan.lengths, generated):
            first = start + length - (len(tokens) - 1) - 1  # the row that predicted the first new token
            out.append(self.llm.logits(hidden[first : start + length]).float())
            start += length
        return out
