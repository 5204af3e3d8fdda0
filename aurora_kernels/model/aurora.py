"""AuroraEdgeV: vision tower -> projector -> token compressor -> (with the fusion-enriched prompt)
-> Qwen2 LLM, with batched greedy generation over a KV cache.

For request b with prompt length L_b the LLM sees M + L_b tokens: the M compressed visual tokens
Vc[b] (64 in the full preset; all 256 with compressor "none"), then the fused prompt T'[b].
Requests are packed (varlen) through the fusion and the prefill, so nothing is padded.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import torch
from torch import nn

from aurora_kernels._validation import check_backend, check_int, check_tensor, should_check_values
from aurora_kernels.model.compressor import Projector, TokenCompressor
from aurora_kernels.model.config import AuroraConfig
from aurora_kernels.model.fusion import Fusion
from aurora_kernels.model.kv_cache import KVCache
from aurora_kernels.model.llm import Qwen2LM
from aurora_kernels.model.vision import VisionTower
from aurora_kernels.ops._pdl import using_programmatic_dependent_launch

CACHE_LAYOUTS = ("contiguous", "paged")
PIXEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# How decode steps run: eager Python; torch.compile(fullgraph=True) of the step (every op a custom op);
# one CUDA graph of the step, captured after the first step and replayed (needs a GPU).
DECODE_MODES = ("auto", "eager", "compile", "cuda_graph")
# decode="auto" (generate's default): the CUDA graph where the step can be captured (the kernels on a
# GPU; the eager reference reads cache lengths on the host) and where its set-up pays (the first step
# run eagerly plus the capture: 35 to 45 ms at B=1 on the H100, two or three eager steps, against
# 1.4 ms a replayed step and 17 ms an eager one); eager otherwise.
AUTO_GRAPH_MIN_NEW_TOKENS = 8


def auto_decode_mode(device: torch.device, backend: str, max_new_tokens: int) -> str:
    """What decode="auto" runs: "cuda_graph" or "eager"."""
    if device.type == "cuda" and backend == "triton" and max_new_tokens >= AUTO_GRAPH_MIN_NEW_TOKENS:
        return "cuda_graph"
    return "eager"


def _offsets(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32, device=device)


def _positions(lengths: list[int], device) -> torch.Tensor:
    return torch.cat([torch.arange(n, dtype=torch.int64) for n in lengths]).to(device)


def _init_parameter(name: str, param: torch.Tensor, std: float) -> None:
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name and leaf == "weight":  # RMSNorm / LayerNorm scales
        param.fill_(1.0)
    elif leaf in ("w1", "w2"):  # the compressor's token MLP, fan-in scaled
        param.normal_(0.0, param.shape[1] ** -0.5)
    else:
        param.normal_(0.0, std)


class _Clock:
    def __init__(self, device: torch.device):
        self.device = device
        self._sync()
        self.last = time.perf_counter()

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lap(self) -> float:
        self._sync()
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def _on_model_device(method):
    """The method with the model's CUDA device current. CUDA graphs are captured and replayed, and
    streams made, on the current device: a model on cuda:1 while cuda:0 is current would capture
    nothing of its own step."""

    @functools.wraps(method)
    def on_device(self, *args, **kwargs):
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                return method(self, *args, **kwargs)
        return method(self, *args, **kwargs)

    return on_device


def _with_model_pdl(method):
    """The method with programmatic dependent launch as LLMConfig.programmatic_dependent_launch
    says (the process-wide setting restored after). Set around the method rather than inside the
    decode step: the launchers read it when they launch, and a CUDA graph keeps what its capture saw."""

    @functools.wraps(method)
    def with_pdl(self, *args, **kwargs):
        with using_programmatic_dependent_launch(self.config.llm.programmatic_dependent_launch):
            return method(self, *args, **kwargs)

    return with_pdl


def _graphs_supported(device: torch.device) -> bool:
    return device.type == "cuda"


def _run_on_side_stream(fn, x: torch.Tensor):
    """fn(x) on a side stream, as CUDA-graph capture wants its first run (lazy library state is set
    up outside the capture; the kernels compile and autotune there)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn(x)
    torch.cuda.current_stream().wait_stream(side)
    return out


class _Graphed:
    """fn of one tensor captured in a CUDA graph: a static input, static outputs that each replay
    overwrites, and whatever fn writes in place (a decode step's KV cache and lengths). fn must have
    run once at these shapes (`_run_on_side_stream`): capture refuses to compile or autotune."""

    def __init__(self, fn, x: torch.Tensor):
        self.input = x.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = fn(self.input)

    def __call__(self, x: torch.Tensor):
        self.input.copy_(x)
        self.graph.replay()
        return self.output


# Image encoder graphs kept per model, least recently used dropped first: one per batch shape, each
# holding its own memory pool (the ViT's activations at that batch).
MAX_ENCODER_GRAPHS = 4


class AuroraEdgeV(nn.Module):
    def __init__(self, config: AuroraConfig, backend: str = "triton"):
        super().__init__()
        check_backend(backend)
        self.config, self.backend = config, backend
        self.vision = VisionTower(config.vision, backend)
        self.projector = Projector(config.vision.hidden_size, config.llm.hidden_size, backend)
        self.compressor = TokenCompressor(config, backend)
        self.fusion = Fusion(config.llm, backend)
        self.llm = Qwen2LM(config.llm, backend)
        self._compiled_decode_step = None
        self.encoder_cuda_graphs = False
        self._encoder_graphs: dict = {}  # key -> _Graphed, least recently used first
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Random weights as a trained checkpoint roughly has them: N(0, std) matrices and biases (so
        the bias paths are exercised), unit norm weights, and a compressor MLP scaled to keep the
        visual tokens' magnitude (w1 ~ N(0, 1/N), w2 ~ N(0, 1/H))."""
        for name, param in self.named_parameters():
            _init_parameter(name, param, std)

    @classmethod
    def from_pretrained(cls, llm_dir, vision_dir=None, aurora_weights=None, compressor="mlp", backend="triton",
                        dtype=torch.bfloat16, device="cpu"):  # fmt: skip
        """LLM from a transformers Qwen2 directory, vision tower from a SigLIP directory (random if
        None), projector / compressor / fusion from our safetensors file (random if None)."""
        from aurora_kernels.model.loading import load_pretrained

        return load_pretrained(cls, llm_dir, vision_dir, aurora_weights, compressor, backend, dtype, device)

    def set_backend(self, backend: str) -> "AuroraEdgeV":
        """Switch every op of every part to `backend` ("triton" or "reference"), weights unchanged."""
        check_backend(backend)
        for module in self.modules():
            if hasattr(module, "backend"):
                module.backend = backend
        self._encoder_graphs.clear()  # captured with the other backend's kernels
        return self

    def set_encoder_cuda_graphs(self, enabled: bool) -> "AuroraEdgeV":
        """Prefill's image encoder (vision tower, projector, compressor: static shapes, ~300 of a
        B=1 prefill's ~720 launches) replayed from a CUDA graph, one per batch shape, captured on
        that shape's first prefill and kept (MAX_ENCODER_GRAPHS, least recently used dropped): a
        prefill is host-bound (an H100, run 4: 3.9 ms of kernels against 40 ms to the first token).
        Needs the model on a CUDA device; in grad mode the encoder runs eagerly (a graph holds no
        autograd history). Off by default until a GPU has timed it. A graph is keyed on the encoder's
        parameter addresses too, so replaced weights are captured anew, never read stale."""
        self.encoder_cuda_graphs = bool(enabled)
        if not enabled:
            self._encoder_graphs.clear()
        return self

    def set_fused_decode_projections(self, enabled: bool) -> "AuroraEdgeV":
        """Switch LLMConfig.fuse_decode_projections (on by default): one-sequence decode steps run
        each projection with the op that feeds it as one kernel (rms_norm_linear, linear,
        silu_and_mul_linear), weights unchanged; batched steps run cuBLAS either way."""
        return self._set_llm_option("fuse_decode_projections", enabled)

    def set_programmatic_dependent_launch(self, enabled: bool) -> "AuroraEdgeV":
        """Switch LLMConfig.programmatic_dependent_launch (on by default): generate launches
        fused_linear and decode_attention with PDL on sm_90+ GPUs. Calls of decode_step outside
        generate follow the process-wide `aurora_kernels.set_programmatic_dependent_launch`."""
        return self._set_llm_option("programmatic_dependent_launch", enabled)

    def _set_llm_option(self, name: str, enabled: bool) -> "AuroraEdgeV":
        if bool(enabled) == getattr(self.config.llm, name):
            return self
        llm = dataclasses.replace(self.config.llm, **{name: bool(enabled)})
        self.config = dataclasses.replace(self.config, llm=llm)
        self.llm.cfg = llm
        self._compiled_decode_step = None  # traced with the other setting
        return self

    @property
    def device(self) -> torch.device:
        return self.llm.embed_tokens.weight.device

    def _check_requests(self, pixel_values, input_ids):
        vision = self.config.vision
        check_tensor("pixel_values", pixel_values, shape=(None, vision.num_channels, vision.image_size, vision.image_size),
                     layout="[B, C, H, W] at the vision tower's channels and image size", dtypes=PIXEL_DTYPES)  # fmt: skip
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
        if ids.numel() and should_check_values(ids) and not (0 <= int(ids.min()) and int(ids.max()) < vocab):
            raise ValueError(f"{name}: expected token ids in [0, {vocab})")

    def _eos_token_ids(self, eos_token_id) -> tuple[int, ...]:
        """eos_token_id as generation_config.json holds it (None, an int, or a list of ints) -> a tuple."""
        ids = (eos_token_id,) if isinstance(eos_token_id, int) else eos_token_id
        if not isinstance(ids, (tuple, list)) or not ids:
            raise TypeError(f"eos_token_id: expected an int, a non-empty list of ints or None, got {eos_token_id!r}")
        for token in ids:
            check_int("eos_token_id", token, minimum=0)
            if token >= self.config.llm.vocab_size:
                raise ValueError(f"eos_token_id: expected token ids in [0, {self.config.llm.vocab_size}), got {token}")
        return tuple(ids)

    def llm_inputs(self, pixel_values, input_ids, generated=None, reserve: int = 0):
        """The packed LLM input of every request: (x [T, C], positions [T], lengths [B] as ints).

        Request b contributes Vc[b], its fused prompt T'[b] and, if given, the embeddings of the tokens
        `generated[b]` that followed (what a no-cache recompute of a generation sees). `reserve`: new
        tokens still to come; every request must fit the LLM's positions with them."""
        self._check_requests(pixel_values, input_ids)
        prompt_lengths = [int(ids.numel()) for ids in input_ids]
        extra = [len(tokens) for tokens in generated] if generated is not None else [0] * len(input_ids)
        needed = self.config.visual_tokens + max(n + g for n, g in zip(prompt_lengths, extra)) + reserve
        if needed > self.config.llm.max_position_embeddings:
            raise ValueError(
                f"input_ids: the longest request needs {needed} positions (visual tokens + prompt + generated + new "
                f"tokens), over the LLM's max_position_embeddings {self.config.llm.max_position_embeddings}"
            )
        device = self.device
        visual, compressed = self._encode(pixel_values.to(device))
        prompts = self.llm.embed_tokens(torch.cat(list(input_ids)).to(device))
        cos, sin = self.llm.rotary(_positions(prompt_lengths, device))
        fused = self.fusion(prompts, visual, _offsets(prompt_lengths, device), max(prompt_lengths), cos, sin)
        pieces, start = [], 0
        for b, length in enumerate(prompt_lengths):
            pieces += [compressed[b], fused[start : start + length]]
            if generated is not None and len(generated[b]):
                pieces.append(self.llm.embed_tokens(torch.as_tensor(generated[b], dtype=torch.int64, device=device)))
            start += length
        lengths = [compressed.shape[1] + n + g for n, g in zip(prompt_lengths, extra)]
        return torch.cat(pieces), _positions(lengths, device), lengths

    def encode_images(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, H, W] -> (V [B, N, C], the projected visual tokens the fusion attends
        to; Vc [B, M, C], the compressed ones the LLM reads)."""
        visual = self.projector(self.vision(pixel_values))
        return visual, self.compressor(visual)

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """encode_images, from a cached CUDA graph where set_encoder_cuda_graphs asks for one. Its
        outputs are the graph's buffers, overwritten by the next replay: prefill consumes them first."""
        if not self.encoder_cuda_graphs:
            return self.encode_images(pixel_values)
        if not _graphs_supported(pixel_values.device):
            raise ValueError(f"set_encoder_cuda_graphs: CUDA graphs need the model on a CUDA device, got {pixel_values.device}")
        if torch.is_grad_enabled():
            return self.encode_images(pixel_values)
        parts = (self.vision, self.projector, self.compressor)
        key = (tuple(pixel_values.shape), pixel_values.dtype, pixel_values.device, self.config.compressor,
               tuple(p.data_ptr() for part in parts for p in part.parameters()))  # fmt: skip
        graphed = self._encoder_graphs.pop(key, None)
        if graphed is None:
            outputs = _run_on_side_stream(self.encode_images, pixel_values)  # compiles and autotunes
            graphed = _Graphed(self.encode_images, pixel_values)
            while len(self._encoder_graphs) >= MAX_ENCODER_GRAPHS:
                self._encoder_graphs.pop(next(iter(self._encoder_graphs)))
            self._encoder_graphs[key] = graphed
            return outputs
        self._encoder_graphs[key] = graphed  # now the most recently used
        return graphed(pixel_values)

    @torch.no_grad()
    @_on_model_device
    @_with_model_pdl
    def generate(self, pixel_values, input_ids, max_new_tokens: int, eos_token_id=None, *, cache="contiguous",
                 page_size: int = 16, decode: str = "auto", return_logits: bool = False,
                 stats: dict | None = None):  # fmt: skip
        """Greedy batched generation: pixel_values [B, 3, H, W], input_ids a list of B 1-D int64
        prompts of any lengths; eos_token_id None, an int or a list of ints (as generation_config.json
        holds it): a request ends at the first token that is any of them. Returns the new tokens of each
        request (up to and including its EOS);
        with return_logits, also each request's logits [steps, vocab] (float32) behind those tokens.

        cache: "contiguous" ([B, S_max, Hkv, D] per layer) or "paged" (pages of `page_size` tokens).
        decode: "eager", "compile" (torch.compile of the step, no graph break), "cuda_graph" (the step
        captured once and replayed; EOS is then only checked at the end, so no step waits on the host),
        or "auto": "cuda_graph" for the Triton kernels on a GPU and at least AUTO_GRAPH_MIN_NEW_TOKENS
        new tokens, else "eager" (`auto_decode_mode`).
        stats: a dict to receive "decode" (the mode that ran), "prefill_s" (up to the first token's
        logits), "decode_s" and "decode_steps" (wall clock, the device synchronised at each mark); with "cuda_graph" also
        "graph_setup_s", the part of decode_s spent on the first step (run eagerly) and the capture,
        so that the replays' own time per step is (decode_s - graph_setup_s) / (decode_steps - 1).
        """
        clock = _Clock(self.device) if stats is not None else None
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        eos_ids = self._eos_token_ids(eos_token_id) if eos_token_id is not None else ()
        if decode not in DECODE_MODES:
            raise ValueError(f"decode: expected one of {DECODE_MODES}, got {decode!r}")
        if decode == "auto":
            decode = auto_decode_mode(self.device, self.backend, max_new_tokens)
        if stats is not None:
            stats["decode"] = decode
        if decode == "cuda_graph" and self.device.type != "cuda":
            raise ValueError(f"decode: 'cuda_graph' needs the model on a CUDA device, got {self.device}")
        logits, kv = self.prefill(pixel_values, input_ids, max_new_tokens, cache=cache, page_size=page_size)
        batch, device = logits.shape[0], self.device
        if clock is not None:
            stats["prefill_s"] = clock.lap()

        def step(tokens):
            return self.decode_step(tokens, kv)

        if decode == "compile":
            if self._compiled_decode_step is None:  # one compiled function: its guards are on shapes, not on kv
                self._compiled_decode_step = torch.compile(self.decode_step, fullgraph=True)
            compiled = self._compiled_decode_step
            run_step = lambda tokens: compiled(tokens, kv)  # noqa: E731
        else:
            run_step = step
        steps_tokens, steps_logits, graph_setup_s = [], [], 0.0
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        eos = torch.tensor(eos_ids, dtype=torch.int64, device=device)
        for index in range(max_new_tokens):
            tokens = logits.argmax(-1)
            steps_tokens.append(tokens)
            steps_logits.append(logits.to(torch.float32, copy=True))  # a graph replay overwrites logits
            if eos_ids and decode != "cuda_graph":
                finished |= torch.isin(tokens, eos)
                if bool(finished.all()):  # one host sync a step, to stop early
                    break
            if index == max_new_tokens - 1:
                break
            if decode == "cuda_graph" and index == 0:
                logits = _run_on_side_stream(step, tokens)  # a real step, and it compiles the kernels
                run_step = _Graphed(step, tokens)
                if clock is not None:
                    graph_setup_s = stats["graph_setup_s"] = clock.lap()
            else:
                logits = run_step(tokens)
        if clock is not None:
            stats["decode_s"], stats["decode_steps"] = clock.lap() + graph_setup_s, len(steps_tokens) - 1

        all_tokens = torch.stack(steps_tokens, 1).tolist()  # [B, steps]
        outputs, out_logits = [], []
        for b, row in enumerate(all_tokens):
            keep = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))  # up to its first EOS
            outputs.append(row[:keep])
            out_logits.append(torch.stack([s[b] for s in steps_logits[:keep]]))
        return (outputs, out_logits) if return_logits else outputs

    @torch.no_grad()
    def prefill(self, pixel_values, input_ids, max_new_tokens: int, *, cache: str = "contiguous", page_size: int = 16):
        """The requests' prompts (vision tower, compressor, fusion, LLM prefill) into a fresh KV cache
        with room for `max_new_tokens` more tokens per request. Returns (logits [B, vocab] at each
        request's last position, the cache with its lengths on the device): where `generate` starts,
        and where a caller that runs `decode_step` itself (a serving loop, a profiler) starts."""
        check_int("max_new_tokens", max_new_tokens, minimum=0)
        if cache not in CACHE_LAYOUTS:
            raise ValueError(f"cache: expected one of {CACHE_LAYOUTS}, got {cache!r}")
        check_int("page_size", page_size)
        x, positions, lengths = self.llm_inputs(pixel_values, input_ids, reserve=max_new_tokens)
        batch, device, cfg = len(lengths), self.device, self.config.llm
        kv = KVCache(cfg.num_layers, batch, max(lengths) + max_new_tokens, cfg.num_kv_heads, cfg.head_dim, x.dtype, device,
                     page_size if cache == "paged" else None)  # fmt: skip
        batch_index = torch.repeat_interleave(torch.arange(batch), torch.tensor(lengths)).to(device)
        hidden = self.llm.prefill(x, positions, _offsets(lengths, device), max(lengths), kv, kv.slots(batch_index, positions))
        last_rows = _offsets(lengths, device)[1:].long() - 1
        kv.seqlens.copy_(torch.tensor(lengths, dtype=torch.int32))
        return self.llm.logits(hidden[last_rows]), kv

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
        hidden = self.llm.decode(self.llm.embed_tokens(tokens)[:, None], kv)
        kv.seqlens += 1
        return self.llm.logits(hidden[:, 0])

    def replace_compressor(self, kind: str) -> "AuroraEdgeV":
        """Switch the token compressor ("mlp" with fresh random weights, "pool", "none"), the rest of
        the model unchanged: how the benchmarks compare 64 against 256 visual tokens on one model."""
        settings = dataclasses.replace(self.config.compressor, kind=kind)
        self.config = dataclasses.replace(self.config, compressor=settings)
        weight = self.llm.embed_tokens.weight
        self.compressor = TokenCompressor(self.config, self.backend).to(weight.device, weight.dtype)
        with torch.no_grad():
            for name, param in self.compressor.named_parameters():
                _init_parameter(name, param, std=0.02)
        self._encoder_graphs.clear()  # captured with the other compressor
        return self

    @torch.no_grad()
    def logits_without_cache(self, pixel_values, input_ids, generated) -> list[torch.Tensor]:
        """Recompute each request's full sequence (visual tokens, fused prompt, generated tokens) with
        no cache; returns per request the logits [len(generated[b]), vocab] (float32) that predicted
        each generated token: the check on `generate`."""
        x, positions, lengths = self.llm_inputs(pixel_values, input_ids, [g[:-1] for g in generated])
        hidden = self.llm.prefill(x, positions, _offsets(lengths, self.device), max(lengths))
        out, start = [], 0
        for length, tokens in zip(lengths, generated):
            first = start + length - (len(tokens) - 1) - 1  # the row that predicted the first new token
            out.append(self.llm.logits(hidden[first : start + length]).float())
            start += length
        return out
