"""The request runtime: one KV cache and one captured decode step per batch bucket, reused by every
later request; greedy tokens as the step-by-step path gives them, across bucket boundaries and
requests of different shapes in a row; limits refused by name; a prefill that never reads the device."""

import contextlib

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.model import AuroraEdgeV, RunOptions
from aurora_kernels.runtime import Runtime, batch_buckets
from aurora_kernels.runtime import runtime as runtime_module
from aurora_kernels.runtime.runtime import power_of_two_bucket
from aurora_kernels.testing import assert_parity
from tests.catalogue import cuda_only
from tests.model.test_model import requests, tiny_model


def greedy_step_by_step(model, pixel_values, ids, new_tokens, cache="contiguous"):
    """The path without a runtime: a fresh cache from prefill, then decode_step with the argmax."""
    logits, kv = model.prefill(pixel_values, ids, new_tokens, cache=cache)
    tokens = [logits.argmax(-1)]
    for _ in range(new_tokens - 1):
        tokens.append(model.decode_step(tokens[-1], kv).argmax(-1))
    return torch.stack(tokens, 1).tolist()


class _EagerGraph:
    """Stands in for a captured graph on CPU: replay runs the step eagerly on its own input."""

    made = []

    def __init__(self, fn, x, pool=None, own_input=True):
        self.fn, self.input = fn, x.clone() if own_input else x
        _EagerGraph.made.append(self)

    def replay(self):
        return self.fn(self.input)


@pytest.fixture
def mocked_capture(monkeypatch, device):
    """The runtime's CUDA-graph path on any device and backend, its capture counted, its replays eager."""
    if device.type == "cuda":
        yield
        return
    _EagerGraph.made = []
    monkeypatch.setattr(runtime_module, "graphs_supported", lambda device: True)
    monkeypatch.setattr(runtime_module, "traceable_backend", lambda backend: True)
    monkeypatch.setattr(runtime_module, "run_on_side_stream", lambda fn, *args: fn(*args))
    monkeypatch.setattr(runtime_module, "Graphed", _EagerGraph)
    monkeypatch.setattr(Runtime, "_graph_pool", lambda self: None)
    yield


def test_batch_buckets():
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(5) == (1, 2, 4, 5)
    assert batch_buckets(1) == (1,)


@pytest.mark.parametrize("cache", ["contiguous", "paged"])
def test_a_seen_bucket_captures_nothing_and_tokens_equal_step_by_step(cache, mocked_capture, device, gen):
    """Requests of different batches and lengths in a row: each bucket's step is captured on its first
    request only, and every request's tokens equal the step-by-step path's (no stale graph, cache
    row or length from an earlier request). The reference backend: what is checked here is the
    runtime's bookkeeping, the same for both (the next test runs the kernels)."""
    model = tiny_model(device, backend="reference" if device.type == "cpu" else "triton")
    runtime = Runtime(model, max_batch=8, max_length=64, cache=cache, decode="cuda_graph", prefill="eager")
    seen_buckets = set()
    for lengths in ([5, 12, 1], [3, 9, 2, 7], [6], [4, 4, 4], [11], [2, 8, 5, 1, 3]):  # buckets 4, 4, 1, 4, 1, 8
        pixel_values, ids = requests(model, device, gen, lengths=lengths)
        tokens = runtime.generate(pixel_values, ids, 5)
        assert tokens == greedy_step_by_step(model, pixel_values, ids, 5, cache), lengths
        seen_buckets.add(runtime.bucket_size(len(lengths)))
        assert runtime.captures == len(seen_buckets), (lengths, runtime.captures)


def test_buckets_cross_and_backends_agree(device, gen):
    """Eager decode on the runtime at batches 1, 2, 3 and 5 (buckets 1, 2, 4, 8: padded rows) gives the
    step-by-step tokens, on both backends."""
    for backend in ("reference", "triton"):
        model = tiny_model(device, backend=backend)
        runtime = Runtime(model, max_batch=8, max_length=64, decode="eager")
        for lengths in ([7], [3, 10], [5, 1, 8], [2, 9, 4, 6, 1]) if backend == "reference" else ([7], [2, 9, 4, 6, 1]):
            pixel_values, ids = requests(model, device, gen, lengths=lengths)
            assert runtime.generate(pixel_values, ids, 3) == greedy_step_by_step(model, pixel_values, ids, 3), (backend, lengths)


def test_model_generate_keeps_its_runtime_and_grows_it(mocked_capture, device, gen):
    model = tiny_model(device, backend="reference" if device.type == "cpu" else "triton")
    pixel_values, ids = requests(model, device, gen, lengths=[5, 12])
    first = model.generate(pixel_values, ids, 6, decode="cuda_graph")
    runtime = model._runtimes[("contiguous", None)]  # a contiguous cache has no page size
    cache = runtime.cache
    assert model.generate(pixel_values, ids, 6, decode="cuda_graph") == first
    assert runtime.cache is cache and runtime.captures == 1  # the second request reused the cache and the graph
    pixel_values, ids = requests(model, device, gen, lengths=[5, 12, 3, 200])  # more requests, and longer
    model.generate(pixel_values, ids, 6, decode="cuda_graph")
    assert runtime.cache is not cache and runtime.max_batch == 4 and runtime.max_length == 256


def test_option_changes_drop_the_captured_steps(mocked_capture, device, gen):
    model = tiny_model(device, backend="reference" if device.type == "cpu" else "triton")
    runtime = Runtime(model, max_batch=2, max_length=64, decode="cuda_graph")
    pixel_values, ids = requests(model, device, gen, lengths=[5])
    fused = runtime.generate(pixel_values, ids, 4)
    model.set_options(fuse_decode_projections=False)
    unfused = runtime.generate(pixel_values, ids, 4)
    assert runtime.captures == 2 and unfused == fused  # captured anew, with the other projections
    model.set_options(fuse_decode_projections=False)  # the same options: nothing to drop
    runtime.generate(pixel_values, ids, 4)
    assert runtime.captures == 2
    model.replace_compressor("pool")  # another compressor: the captured prefill held the old one
    pooled = runtime.generate(pixel_values, ids, 4)
    assert runtime.captures == 3 and pooled == model.generate(pixel_values, ids, 4, decode="eager")


def test_calls_from_several_threads_take_turns_on_a_runtime(device, gen):
    """A runtime's cache holds one batch: model.generate from four threads at once (one runtime, the
    model's) gives each thread the tokens it gets alone; they overwrote each other's cache rows."""
    import threading

    model = tiny_model(device)
    batches = [requests(model, device, gen, lengths=(3 + i, 9 - i)) for i in range(4)]
    alone = [model.generate(pixel_values, ids, 10) for pixel_values, ids in batches]
    together = [None] * len(batches)

    def run(i):
        together[i] = model.generate(*batches[i], 10)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_a_call_from_inside_a_call_is_refused(device, gen):
    """A streamer that calls generate on the runtime it streams from would wait for its own call."""
    model = tiny_model(device)
    runtime = Runtime(model, max_batch=2, max_length=64)
    pixel_values, ids = requests(model, device, gen, lengths=(4, 6))

    def streamer(index, tokens):
        runtime.generate(pixel_values, ids, 2)

    with pytest.raises(RuntimeError, match="generate: called from inside a generate call on the same runtime"):
        runtime.generate(pixel_values, ids, 3, streamer=streamer)
    assert runtime.generate(pixel_values, ids, 3) == model.generate(pixel_values, ids, 3)  # the turn was given back


def test_run_options_are_checked_by_name(device):
    model = tiny_model(device)
    with pytest.raises(
        TypeError, match=r"fuse_projections: not a run option; expected one of \['activation_in_gate_up', 'encoder_cuda_graphs'"
    ):
        model.set_options(fuse_projections=False)
    with pytest.raises(TypeError, match="programmatic_dependent_launch: expected a bool, got 'no'"):
        model.set_options(programmatic_dependent_launch="no")
    with pytest.raises(TypeError, match="options: expected a RunOptions, got dict"):
        model.set_options({"fuse_decode_projections": False})
    assert model.options == RunOptions()  # nothing changed by the refused calls
    other = AuroraEdgeV(model.config, backend="reference", options=RunOptions(fuse_decode_projections=False))
    assert other.options == RunOptions(fuse_decode_projections=False)


def test_requests_past_the_limits_are_refused_by_name(device, gen):
    model = tiny_model(device)
    runtime = Runtime(model, max_batch=2, max_length=40, decode="eager")
    pixel_values, ids = requests(model, device, gen, lengths=[5, 6, 7])
    with pytest.raises(
        ValueError, match="input_ids: 3 requests, over the runtime's max_batch 2; make the Runtime with max_batch >= 3"
    ):
        runtime.generate(pixel_values, ids, 2)
    with pytest.raises(ValueError, match="the longest request needs 41 positions .* over the runtime's max_length 40; "
                                         "make the Runtime with max_length >= 41"):  # fmt: skip
        runtime.generate(pixel_values[:2], ids[:2], 41 - 16 - 6)
    with pytest.raises(ValueError, match="decode: expected one of"):
        Runtime(model, decode="fast")
    with pytest.raises(ValueError, match="max_batch: expected an int >= 1, got 0"):
        Runtime(model, max_batch=0)
    with pytest.raises(ValueError, match="max_length: expected at most the LLM's max_position_embeddings 1024, got 4096"):
        Runtime(model, max_length=4096)  # a cache no request could fill (it was allocated)
    with pytest.raises(TypeError, match="model: expected an AuroraEdgeV, got str"):
        Runtime("aurora-edge-v-2b")
    with pytest.raises(TypeError, match="grow: expected a bool, got str"):
        Runtime(model, grow="yes")
    with pytest.raises(TypeError, match="batch: expected an int, got float"):
        runtime.cache.rows(2.0)


@contextlib.contextmanager
def no_host_reads():
    """Every way a tensor's values reach the host raises inside the block: on a GPU each is a sync
    that waits for every kernel launched before it."""

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name}: a read of the device")

        return read

    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "numpy", "cpu")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    try:
        for name in names:
            setattr(torch.Tensor, name, refuse(name))
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_the_host_read_detector_detects():
    with no_host_reads(), pytest.raises(AssertionError, match="Tensor.tolist: a read of the device"):
        torch.ones(2).tolist()


@pytest.mark.parametrize("cache", ["contiguous", "paged"])
def test_prefill_reads_nothing_back_from_the_device(cache, device, gen):
    """Everything a prefill needs from the host is built from the prompts' lengths before its first
    launch (its PrefillPlan): with the ops' value checks off (they read index tensors on CPU) no
    tensor value reaches the host until the first token's logits are returned."""
    model = tiny_model(device, backend="triton")
    pixel_values, ids = requests(model, device, gen, lengths=[5, 12, 1])
    expected, _ = model.prefill(pixel_values, ids, 3, cache=cache)
    with ak.value_checks("never"), no_host_reads():
        logits, kv = model.prefill(pixel_values, ids, 3, cache=cache)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


@cuda_only
def test_a_seen_bucket_replays_without_capturing_on_cuda(device, gen):
    model = tiny_model(device, backend="triton").to(torch.bfloat16)
    runtime = Runtime(model, max_batch=4, max_length=64, decode="cuda_graph")
    for lengths in ([5, 12, 1], [3, 9, 2], [6, 6, 6, 6]):
        pixel_values, ids = requests(model, device, gen, lengths=lengths)
        eager = greedy_step_by_step(model, pixel_values.to(torch.bfloat16), ids, 8)
        assert runtime.generate(pixel_values.to(torch.bfloat16), ids, 8) == eager
    assert runtime.captures == 1 and runtime.prefill_captures == len(runtime._prefills)


@pytest.mark.parametrize("cache", ["contiguous", "paged"])
def test_captured_prefills_are_padded_inertly_and_kept_per_shape(cache, mocked_capture, device, gen):
    """Prefill from a graph per padded shape (batch bucket, prompt tokens and rows as powers of two):
    the padding changes no request's tokens, and a seen shape captures nothing."""
    model = tiny_model(device, backend="reference" if device.type == "cpu" else "triton")
    runtime = Runtime(model, max_batch=4, max_length=64, cache=cache, decode="cuda_graph", prefill="cuda_graph")
    shapes = set()
    for lengths in ([5, 12, 1], [3, 9, 2], [6], [7, 7, 7, 7], [2, 11, 4]):  # the last: the first's shape again
        pixel_values, ids = requests(model, device, gen, lengths=lengths)
        assert runtime.generate(pixel_values, ids, 4) == greedy_step_by_step(model, pixel_values, ids, 4, cache), lengths
        rows = len(lengths) * model.config.visual_tokens + sum(lengths)
        shapes.add((runtime.bucket_size(len(lengths)), power_of_two_bucket(sum(lengths), 16), power_of_two_bucket(rows, 64)))
        assert runtime.prefill_captures == len(shapes), lengths
    assert len(shapes) == 3  # (4, 32, 128) three times, (4, 16, 64), (1, 16, 64)


def test_the_padded_prefill_compiles_to_one_graph(device, gen):
    """The CPU proof that the padded prefill can be captured: torch.compile(fullgraph=True) traces the
    whole of it (encoder, fusion, LLM prefill, cache writes) with no graph break, and its logits and
    the cache it fills match the packed prefill's."""
    from aurora_kernels.model.prefill_plan import PaddedShape

    model = tiny_model(device, backend="triton")
    pixel_values, ids = requests(model, device, gen, lengths=[5, 12, 1])
    expected, kv_expected = model.prefill(pixel_values, ids, 4)
    runtime = Runtime(model, max_batch=4, max_length=64)
    kv = runtime.cache.rows(4)
    shape = PaddedShape(4, 32, 128)
    plan = model.plan_prefill(pixel_values, ids, 4, kv, padded=shape)
    padded_pixels = torch.cat([pixel_values, torch.zeros_like(pixel_values[:1])])
    graphs = []

    def recording_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(lambda pixels: model.run_prefill(pixels, plan, kv, encoder_graphs=False), fullgraph=True,
                             backend=recording_backend)  # fmt: skip
    logits = compiled(padded_pixels)
    assert len(graphs) == 1
    assert_parity(logits[:3], expected.double(), torch.float32, "padded, compiled prefill")
    assert torch.equal(kv.seqlens.cpu(), torch.tensor([16 + 5, 16 + 12, 16 + 1, 0], dtype=torch.int32))
    for b, length in enumerate(kv_expected.seqlens.tolist()):
        assert_parity(kv.k[0][b, :length], kv_expected.k[0][b, :length].double(), torch.float32, f"sequence {b}'s keys")
