"""The request runtime: AuroraEdgeV's requests run on state made once, not per request.

As gpt-fast keeps generate.py beside model.py, and FlashInfer's wrappers keep their state in an object
the caller holds, a `Runtime` owns what requests share, for one model:

- the KV cache (contiguous or paged) for `max_batch` sequences of `max_length` positions, allocated
  once. A batch of B requests runs in the smallest batch bucket (1, 2, 4, 8, 16, 32, ... up to
  max_batch) that holds it, in the cache's first rows; its extra rows are inert (length 0, token 0:
  they attend to rows of their own that no request reads).
- per bucket, the decode step's static state on the device: its token buffer, a step counter and a
  token history; and where decode runs from a CUDA graph, the step captured once. A later request of
  a seen bucket captures nothing: it replays from its first step.
- where prefill runs from a CUDA graph, one graph per padded shape (the batch bucket, and the prompt
  tokens and LLM rows each rounded up to a power of two: PaddedShape), captured on the shape's first
  request: its inputs (the pixels and the PrefillPlan's two buffers) are static tensors each request
  is copied into, its padding inert (model/prefill_plan.py). All of a runtime's graphs share one
  memory pool: they replay one after another, and each one's output is read before the next runs.

Each decode step samples on the device (argmax) and records its tokens in the history; the host reads
the history once at the end, and in between only to stop early at EOS: after each step when decoding
eagerly, every EOS_CHECK_INTERVAL steps from a graph or a compiled step.

A runtime made with grow=True (the one `AuroraEdgeV.generate` keeps) reallocates, larger, when a
request does not fit; otherwise such a request is a ValueError that names the limit. A change to the
model's run-time options (backend, fused projections, PDL), its device, dtype or embedding weight
drops the captured steps, which would replay what they saw.

One batch runs on a runtime at a time (its cache, buckets and graphs hold that batch): calls from
several threads, on a runtime or on the model whose generate keeps one, take turns; a call made from
inside a call (a streamer's) is refused. A serving loop that runs batches at once makes a runtime
for each.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time

import torch

from aurora_kernels._cuda_graphs import Graphed, graphs_supported, run_on_side_stream
from aurora_kernels._validation import check_bool, check_int
from aurora_kernels.model.aurora import AuroraEdgeV
from aurora_kernels.model.kv_cache import KVCache, check_page_size
from aurora_kernels.model.prefill_plan import PaddedShape
from aurora_kernels.ops._pdl import using_programmatic_dependent_launch, using_weight_prefetch
from aurora_kernels.runtime.sampling import SamplingParams, sample

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
CACHE_LAYOUTS = ("contiguous", "paged")
# How decode steps run: eager Python; torch.compile(fullgraph=True) of the step (every op a custom op);
# one CUDA graph of the step per batch bucket, captured on the bucket's first request (needs a GPU).
DECODE_MODES = ("auto", "eager", "compile", "cuda_graph")
PREFILL_MODES = ("auto", "eager", "cuda_graph")


def traceable_backend(backend: str) -> bool:
    """Whether a step of the backend can be compiled whole (fullgraph) or captured in a CUDA graph:
    the Triton ops are custom ops of static shapes; the reference ops read each sequence's length on
    the host (data-dependent shapes, a device read)."""
    return backend == "triton"


# decode="auto": the CUDA graph where the step can be captured (a traceable_backend on a GPU) and
# where the capture pays (the first step run eagerly
# plus the capture cost two or three eager steps: docs/performance-log.md); eager otherwise.
AUTO_GRAPH_MIN_NEW_TOKENS = 8
EOS_CHECK_INTERVAL = 16
LENGTH_GRANULE = 256  # a growing runtime's max_length is a multiple of this
# the smallest padded sizes of a captured prefill (each a power of two at least this)
MIN_PROMPT_BUCKET, MIN_ROWS_BUCKET = 16, 64


def power_of_two_bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, n - 1).bit_length())


def auto_decode_mode(device: torch.device, backend: str, max_new_tokens: int) -> str:
    """What decode="auto" runs: "cuda_graph" or "eager"."""
    if device.type == "cuda" and traceable_backend(backend) and max_new_tokens >= AUTO_GRAPH_MIN_NEW_TOKENS:
        return "cuda_graph"
    return "eager"


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes decode steps run at: BATCH_BUCKETS below max_batch, then max_batch."""
    return (*(b for b in BATCH_BUCKETS if b < max_batch), max_batch)


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


class _Bucket:
    """One batch bucket's decode state: the cache's first `size` rows, the token buffer the step reads
    and overwrites with its sample, the step counter and the token history [max_length, size] it
    writes, and how the step runs (a compiled function or a captured graph, made on first use)."""

    def __init__(self, cache: KVCache, size: int, max_length: int):
        device = cache.seqlens.device
        self.size, self.kv = size, cache.rows(size)
        self.tokens = torch.zeros(size, dtype=torch.int64, device=device)
        self.step = torch.zeros(1, dtype=torch.int64, device=device)
        self.history = torch.zeros(max_length, size, dtype=torch.int64, device=device)
        # the sampling parameters, read by the step (so one capture serves any of their values)
        self.temperature = torch.ones(1, dtype=torch.float32, device=device)
        self.top_p = torch.ones(1, dtype=torch.float32, device=device)
        self.top_k = torch.zeros(1, dtype=torch.int64, device=device)
        self.seed = torch.zeros(1, dtype=torch.int64, device=device)
        self.runs: dict[tuple[str, bool], object] = {}  # (decode mode, sampling) -> compiled step or Graphed

    def choose(self, logits: torch.Tensor, do_sample: bool) -> torch.Tensor:
        """The next tokens from logits [rows, vocab]: the argmax, or a sample (runtime/sampling.py)."""
        if not do_sample:
            return logits.argmax(-1)
        return sample(logits, self.temperature, self.top_k, self.top_p, self.seed, self.step)

    def start(self, prefill_logits: torch.Tensor, params: SamplingParams) -> None:
        """A new request: its sampling parameters set, its first tokens (chosen from the prefill's
        logits) in the buffer and the history, the rows past it inert."""
        batch = prefill_logits.shape[0]
        self.temperature.fill_(params.temperature)
        self.top_p.fill_(params.top_p)
        self.top_k.fill_(min(params.top_k, prefill_logits.shape[-1]))  # k past the vocabulary keeps all of it
        self.seed.fill_(params.seed % 2**32)  # as SamplingParams documents; any int >= 0 fits the int64
        self.step.zero_()
        first_tokens = self.choose(prefill_logits, params.do_sample)
        self.kv.seqlens[batch:].zero_()
        self.tokens.zero_()
        self.tokens[:batch].copy_(first_tokens)
        self.history[0].copy_(self.tokens)
        self.step.fill_(1)


class _Streaming:
    """Hands each step's tokens to a streamer, request by request, up to each one's first EOS."""

    def __init__(self, streamer, batch: int, eos_ids: tuple[int, ...]):
        self.streamer, self.eos_ids = streamer, eos_ids
        self.finished = [False] * batch

    def send(self, tokens: list[int]) -> bool:
        """One step's tokens; whether every request has ended."""
        for b, token in enumerate(tokens):
            if not self.finished[b]:
                self.streamer(b, [token])
                self.finished[b] = token in self.eos_ids
        return all(self.finished)


class _StaticPrefill:
    """One padded shape's prefill: the static inputs a request is copied into (pixels, the plan's
    int64 and int32 buffers) and, once captured, its graph."""

    def __init__(self, shape: PaddedShape, pixel_shape: tuple, dtype: torch.dtype, device: torch.device):
        self.shape = shape
        self.pixels = torch.zeros((shape.batch, *pixel_shape), dtype=dtype, device=device)
        self.long_buffer = torch.zeros(shape.long_size, dtype=torch.int64, device=device)
        self.int_buffer = torch.zeros(shape.int_size, dtype=torch.int32, device=device)
        self.graph: Graphed | None = None


class Runtime:
    def __init__(self, model, max_batch: int = 8, max_length: int = 1024, *, cache: str = "contiguous",
                 page_size: int = 16, decode: str = "auto", prefill: str = "auto", grow: bool = False):  # fmt: skip
        """model: an AuroraEdgeV. max_batch: requests per call; max_length: positions per request
        (visual tokens + prompt + new tokens). cache: "contiguous" or "paged" (pages of page_size).
        decode: how steps run (DECODE_MODES). prefill: "eager", "cuda_graph" (one graph per padded
        shape) or "auto" (graphs where decode runs from one). grow: reallocate for a request that
        does not fit, instead of refusing it."""
        if not isinstance(model, AuroraEdgeV):
            raise TypeError(f"model: expected an AuroraEdgeV, got {type(model).__name__}")
        check_int("max_batch", max_batch, minimum=1)
        check_int("max_length", max_length, minimum=1)
        positions = model.config.llm.max_position_embeddings
        if max_length > positions:  # no request may be longer: the cache past it would never be read
            raise ValueError(f"max_length: expected at most the LLM's max_position_embeddings {positions}, got {max_length}")
        check_bool("grow", grow)
        check_page_size(page_size)
        if cache not in CACHE_LAYOUTS:
            raise ValueError(f"cache: expected one of {CACHE_LAYOUTS}, got {cache!r}")
        if decode not in DECODE_MODES:
            raise ValueError(f"decode: expected one of {DECODE_MODES}, got {decode!r}")
        if prefill not in PREFILL_MODES:
            raise ValueError(f"prefill: expected one of {PREFILL_MODES}, got {prefill!r}")
        self.model, self.cache_layout, self.page_size, self.grow = model, cache, page_size, grow
        self.decode, self.prefill = decode, prefill
        self.captures = 0  # decode steps captured in a CUDA graph, over the runtime's life
        self.prefill_captures = 0  # prefills captured, one per padded shape
        self._pool = None  # the graphs' shared memory pool, made with the first capture
        self._one_batch = threading.Lock()  # held by the call whose batch the cache holds...
        self._running_in = None  # ...and that call's thread
        self._allocate(max_batch, max_length)

    def _allocate(self, max_batch: int, max_length: int) -> None:
        model, cfg = self.model, self.model.config.llm
        self.max_batch, self.max_length = max_batch, max_length
        self.cache = KVCache(cfg.num_layers, max_batch, max_length, cfg.num_kv_heads, cfg.head_dim, self._dtype(),
                             model.device, self.page_size if self.cache_layout == "paged" else None, scratch=True)  # fmt: skip
        self._buckets: dict[int, _Bucket] = {}
        self._prefills: dict[PaddedShape, _StaticPrefill] = {}
        self._model_state = self._model_fingerprint()

    def _dtype(self) -> torch.dtype:
        return self.model.llm.embed_tokens.weight.dtype

    def _model_fingerprint(self) -> tuple:
        weight = self.model.llm.embed_tokens.weight
        return (self.model.options_version, weight.device, weight.dtype, weight.data_ptr())

    def bucket_size(self, batch: int) -> int:
        return next(b for b in batch_buckets(self.max_batch) if b >= batch)

    def _fit(self, batch: int, length: int) -> None:
        """Room for `batch` requests of up to `length` positions: the cache as it is, a larger one
        (grow), or a ValueError that names the limit and how to raise it. The captured steps are
        dropped when the model changed under them."""
        if self._model_fingerprint() != self._model_state:
            same_place = self.cache.seqlens.device == self.model.device and self.cache.k[0].dtype == self._dtype()
            if not same_place and not self.grow:
                raise ValueError(
                    f"model: moved to {self.model.device} / {self._dtype()} after its Runtime was made; make a new Runtime"
                )
            if same_place:
                self._buckets.clear()
                self._prefills.clear()
                self._model_state = self._model_fingerprint()
            else:
                self._allocate(self.max_batch, self.max_length)
        if batch <= self.max_batch and length <= self.max_length:
            return
        if not self.grow:
            if batch > self.max_batch:
                raise ValueError(f"input_ids: {batch} requests, over the runtime's max_batch {self.max_batch}; make the "
                                 f"Runtime with max_batch >= {batch}")  # fmt: skip
            raise ValueError(f"max_new_tokens: the longest request needs {length} positions (visual tokens + prompt + new "
                             f"tokens), over the runtime's max_length {self.max_length}; make the Runtime with "
                             f"max_length >= {length}")  # fmt: skip
        wanted_batch = max(self.max_batch, next((b for b in BATCH_BUCKETS if b >= batch), batch))
        wanted_length = max(self.max_length, -(-length // LENGTH_GRANULE) * LENGTH_GRANULE)
        self._allocate(wanted_batch, min(wanted_length, self.model.config.llm.max_position_embeddings))

    def _bucket(self, batch: int) -> _Bucket:
        size = self.bucket_size(batch)
        if size not in self._buckets:
            self._buckets[size] = _Bucket(self.cache, size, self.max_length)
        return self._buckets[size]

    def _step_function(self, bucket: _Bucket, do_sample: bool):
        """The decode step on the bucket's state: tokens -> logits, the next tokens (argmax or
        sample) written back into tokens and the history, every tensor static (what a graph or a
        compiled step needs)."""
        model = self.model

        def step(tokens):
            logits = model.decode_step(tokens, bucket.kv)
            chosen = bucket.choose(logits, do_sample)
            bucket.history.index_copy_(0, bucket.step, chosen[None])
            bucket.step.add_(1)
            tokens.copy_(chosen)
            return logits

        return step

    def _run_step(self, bucket: _Bucket, mode: str, do_sample: bool, timings: dict) -> torch.Tensor:
        """One decode step of the bucket, in `mode`; the first in "cuda_graph" mode runs eagerly and
        then captures (its time in timings["graph_setup_s"])."""
        if mode == "eager":
            return self._step_function(bucket, do_sample)(bucket.tokens)
        run = bucket.runs.get((mode, do_sample))
        if mode == "compile":
            if run is None:
                run = bucket.runs[(mode, do_sample)] = torch.compile(self._step_function(bucket, do_sample), fullgraph=True)
            return run(bucket.tokens)
        if run is not None:
            return run.replay()
        start = time.perf_counter()
        step = self._step_function(bucket, do_sample)
        logits = run_on_side_stream(step, bucket.tokens)  # a real step; it compiles and autotunes the kernels
        # the bucket's token buffer is the graph's input: every graph of the bucket reads and writes it
        bucket.runs[(mode, do_sample)] = Graphed(step, bucket.tokens, pool=self._graph_pool(), own_input=False)
        self.captures += 1
        timings["graph_setup_s"] = time.perf_counter() - start
        return logits

    def _graph_pool(self):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def _prefill_into(self, bucket: _Bucket, pixel_values, input_ids, max_new_tokens: int, graphed: bool) -> torch.Tensor:
        """The requests' prefill into the bucket's first rows: logits [B, vocab]. graphed: from the
        CUDA graph of their padded shape (captured on its first request: run eagerly, then captured)."""
        model, batch = self.model, len(input_ids)
        if not graphed:
            logits, _ = model.prefill(pixel_values, input_ids, max_new_tokens, kv=bucket.kv.rows(batch))
            return logits
        shape = PaddedShape(bucket.size, power_of_two_bucket(sum(int(ids.numel()) for ids in input_ids), MIN_PROMPT_BUCKET),
                            power_of_two_bucket(batch * model.config.visual_tokens + sum(int(ids.numel()) for ids in input_ids),
                                                MIN_ROWS_BUCKET))  # fmt: skip
        static = self._prefills.get(shape)
        if static is None:
            static = self._prefills[shape] = _StaticPrefill(shape, tuple(pixel_values.shape[1:]), self._dtype(), model.device)
        plan = model.plan_prefill(pixel_values, input_ids, max_new_tokens, bucket.kv, padded=shape,
                                  into=(static.long_buffer, static.int_buffer))  # fmt: skip
        static.pixels[:batch].copy_(pixel_values, non_blocking=True)
        static.pixels[batch:].zero_()
        if static.graph is not None:
            return static.graph.replay()[:batch]

        def run(pixels):  # the plan's tensors are views of the static buffers: every request's land there
            return model.run_prefill(pixels, plan, bucket.kv, encoder_graphs=False)

        logits = run_on_side_stream(run, static.pixels)  # a real prefill; it compiles and autotunes the kernels
        static.graph = Graphed(run, static.pixels, pool=self._graph_pool(), own_input=False)
        self.prefill_captures += 1
        return logits[:batch]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    @_on_model_device
    def generate(self, pixel_values, input_ids, max_new_tokens: int, eos_token_id=None, *, decode: str | None = None,
                 do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, generator: torch.Generator | None = None, streamer=None,
                 return_logits: bool = False, stats: dict | None = None):  # fmt: skip
        """Batched generation (AuroraEdgeV.generate's arguments and result) on this runtime's cache
        and captured steps; decode: this call's mode instead of the runtime's. Greedy unless
        do_sample (runtime/sampling.py: temperature, top_k, top_p, on the device); seed makes a
        sampled request reproducible (None: drawn from `generator`, or torch's default one).
        streamer(request index, new token ids): called as tokens are made, up to each request's EOS
        (the host then reads each step's tokens: a sync a step)."""
        model = self.model
        check_int("max_new_tokens", max_new_tokens, minimum=1)
        eos_ids = model.eos_token_ids(eos_token_id)
        if seed is None:
            seed = int(torch.randint(0, 2**32, (1,), generator=generator, device=generator.device if generator else "cpu"))
        params = SamplingParams(do_sample, temperature, top_k, top_p, seed)
        decode = self.decode if decode is None else decode
        if decode not in DECODE_MODES:
            raise ValueError(f"decode: expected one of {DECODE_MODES}, got {decode!r}")
        mode = decode if decode != "auto" else auto_decode_mode(model.device, model.backend, max_new_tokens)
        if mode == "cuda_graph" and not graphs_supported(model.device):
            raise ValueError(f"decode: 'cuda_graph' needs the model on a CUDA device, got {model.device}")
        if mode != "eager" and not traceable_backend(model.backend):
            raise ValueError(f"decode: {mode!r} needs backend 'triton', got {model.backend!r} (its ops read each sequence's "
                             "length on the host); use 'eager'")  # fmt: skip
        prefill_graph = self.prefill == "cuda_graph" or (self.prefill == "auto" and mode == "cuda_graph")
        if prefill_graph and not graphs_supported(model.device):
            raise ValueError(f"prefill: 'cuda_graph' needs the model on a CUDA device, got {model.device}")
        if prefill_graph and not traceable_backend(model.backend):
            raise ValueError(f"prefill: 'cuda_graph' needs backend 'triton', got {model.backend!r} (its ops read each "
                             "sequence's length on the host); use 'eager'")  # fmt: skip
        if streamer is not None and not callable(streamer):
            raise TypeError(
                f"streamer: expected a callable (request index, new token ids) or None, got {type(streamer).__name__}"
            )
        check_bool("return_logits", return_logits)
        if stats is not None and not isinstance(stats, dict):
            raise TypeError(f"stats: expected a dict to fill or None, got {type(stats).__name__}")
        model.check_requests(pixel_values, input_ids)
        batch = len(input_ids)
        options = model.options
        with (
            self._batch_turn(),
            using_programmatic_dependent_launch(options.programmatic_dependent_launch),
            using_weight_prefetch(options.weight_prefetch),
        ):
            self._fit(batch, model.config.visual_tokens + max(int(ids.numel()) for ids in input_ids) + max_new_tokens)
            return self._decode(pixel_values, input_ids, max_new_tokens, eos_ids, mode, prefill_graph, params, streamer,
                                return_logits, stats)  # fmt: skip

    @contextlib.contextmanager
    def _batch_turn(self):
        """This call's turn on the runtime: after any other thread's call (whose batch the cache
        holds until it returns); a call from inside this thread's running call would wait for itself."""
        if self._running_in == threading.get_ident():
            raise RuntimeError("generate: called from inside a generate call on the same runtime (a streamer's?), whose "
                               "batch its cache holds until it returns; use another Runtime")  # fmt: skip
        with self._one_batch:
            self._running_in = threading.get_ident()
            try:
                yield
            finally:
                self._running_in = None

    def _decode(self, pixel_values, input_ids, max_new_tokens, eos_ids, mode, prefill_graph, params, streamer, return_logits,
                stats):  # fmt: skip
        model, batch = self.model, len(input_ids)
        clock = _Clock(model.device) if stats is not None else None
        bucket = self._bucket(batch)
        logits = self._prefill_into(bucket, pixel_values, input_ids, max_new_tokens, prefill_graph)
        bucket.start(logits, params)
        steps_logits = [logits.to(torch.float32, copy=True)] if return_logits else []
        eos = torch.tensor(eos_ids, dtype=torch.int64, device=model.device) if eos_ids else None
        timings: dict = {}
        if clock is not None:
            stats["decode"], stats["prefill_s"] = mode, clock.lap()
        steps = 1  # tokens in the history
        streaming = _Streaming(streamer, batch, eos_ids) if streamer is not None else None
        while steps < max_new_tokens:
            if streaming is not None:
                if streaming.send(bucket.history[steps - 1, :batch].tolist()):  # a host sync a step
                    break
            elif eos is not None and (mode == "eager" or steps % EOS_CHECK_INTERVAL == 0):
                if bool(torch.isin(bucket.history[:steps, :batch], eos).any(0).all()):  # a host sync, to stop early
                    break
            logits = self._run_step(bucket, mode, params.do_sample, timings)
            steps += 1
            if clock is not None and steps == 2:  # the second token's time after the first
                timings["first_step_s"] = clock.lap()
            if return_logits:
                steps_logits.append(logits[:batch].to(torch.float32, copy=True))  # a replay overwrites logits
        if streaming is not None:
            streaming.send(bucket.history[steps - 1, :batch].tolist())
        if clock is not None:
            stats["decode_s"], stats["decode_steps"] = clock.lap() + timings.get("first_step_s", 0.0), steps - 1
            stats.update(timings)
        outputs, out_logits = [], []
        for b, row in enumerate(bucket.history[:steps, :batch].t().tolist()):
            keep = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))  # up to its first EOS
            outputs.append(row[:keep])
            if return_logits:
                out_logits.append(torch.stack([s[b] for s in steps_logits[:keep]]))
        return (outputs, out_logits) if return_logits else outputs
