"""The reference model end to end: presets, generation with a KV cache against a no-cache recompute,
both cache layouts, both backends, the compressors, EOS."""

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.model import AuroraEdgeV, RunOptions, preset
from aurora_kernels.model.cost import parameter_count, projection_weight_bytes
from aurora_kernels.testing import assert_parity, rel_error
from tests.catalogue import cuda_only

PROMPT_LENGTHS = (5, 12, 1)
FUSED_PROJECTIONS = ("linear", "rms_norm_linear", "silu_and_mul_linear", "rms_norm_linear_silu_and_mul")


def tiny_model(device, compressor="mlp", backend="reference", seed=0, **llm):
    """The tiny preset with an untied LM head and N(0, 0.1) weights: greedy tokens then vary step to
    step (with tied embeddings and small weights a random model mostly repeats its input token).
    llm: more LLMConfig fields."""
    torch.manual_seed(seed)
    model = AuroraEdgeV(preset("tiny", compressor=compressor, llm={"tie_word_embeddings": False, **llm}), backend=backend)
    model.reset_parameters(std=0.1)
    return model.to(device)


def requests(model, device, gen, lengths=PROMPT_LENGTHS):
    vision = model.config.vision
    pixel_values = torch.randn((len(lengths), 3, vision.image_size, vision.image_size), generator=gen, device=device)
    ids = [torch.randint(0, model.config.llm.vocab_size, (n,), generator=gen, device=device) for n in lengths]
    return pixel_values, ids


def test_full_preset_has_about_2b_parameters():
    config = preset("aurora-edge-v-2b")
    with torch.device("meta"):
        model = AuroraEdgeV(config, backend="reference")
    count = sum(p.numel() for p in model.parameters())
    assert count == parameter_count(config)
    assert 1.9e9 < count < 2.2e9, count
    assert config.visual_tokens == 64 and config.vision.num_patches == 256 and config.vision.head_dim == 72
    assert preset("aurora-edge-v-2b", compressor="none").visual_tokens == 256
    # what a decode step's GEMVs stream: the four projection weights of every layer, counted from the model
    projections = sum(getattr(layer, name).weight.numel() for layer in model.llm.layers
                      for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"))  # fmt: skip
    assert projection_weight_bytes(config.llm, 2) == 2 * projections
    assert preset("aurora-edge-v-2b", compressor="pool").visual_tokens == 64


def test_preset_errors():
    with pytest.raises(ValueError, match="compressor: expected one of"):
        preset("tiny", compressor="conv")
    with pytest.raises(ValueError, match="preset: expected one of"):
        preset("huge")
    with pytest.raises(ValueError, match="compressor.pool_kernel: expected a divisor of the 8x8 patch grid, got 3"):
        preset("tiny", compressor="pool", compressor_settings={"pool_kernel": 3})
    with pytest.raises(ValueError, match="llm.num_kv_heads"):
        preset("tiny", llm={"num_kv_heads": 3})
    # sizes: a model of no layers (its final norm would get no residual stream), a bool, a float
    with pytest.raises(ValueError, match="llm.num_layers: expected a positive int, got 0"):
        preset("tiny", llm={"num_layers": 0})
    with pytest.raises(ValueError, match="vision.patch_size: expected a positive int, got True"):
        preset("tiny", vision={"patch_size": True})
    with pytest.raises(ValueError, match="compressor.out_tokens: expected a positive int, got 16.0"):
        preset("tiny", compressor_settings={"out_tokens": 16.0})


@pytest.mark.parametrize("compressor", ["mlp", "pool", "none"])
@pytest.mark.parametrize("cache", ["contiguous", "paged"])
def test_generation_with_cache_matches_recompute(compressor, cache, device, gen):
    model = tiny_model(device, compressor)
    pixel_values, ids = requests(model, device, gen)
    tokens, logits = model.generate(pixel_values, ids, max_new_tokens=6, cache=cache, return_logits=True)
    assert [len(t) for t in tokens] == [6, 6, 6]
    assert len({tuple(t) for t in tokens}) == 3 and max(len(set(t)) for t in tokens) > 2  # a real sequence
    recomputed = model.logits_without_cache(pixel_values, ids, tokens)
    for b in range(3):
        assert recomputed[b].argmax(-1).tolist() == tokens[b]
        assert_parity(logits[b], recomputed[b].double(), torch.float32, f"request {b} logits")


# mlp with RunOptions.fuse_decode_projections, one request: its decode steps' projections as
# fused_linear kernels (batched steps keep cuBLAS: test_batched_decode_steps_keep_unfused_projections)
@pytest.mark.parametrize(
    "compressor, fused", [("mlp", True), ("pool", False), ("none", False)], ids=["mlp-fused", "pool", "none"]
)
def test_triton_backend_matches_reference(compressor, fused, device, gen):
    """Every op on its kernel (interpreter on CPU): the same tokens as the eager reference (unfused),
    logits within the fp32 bound; cached generation matches the kernel's own recompute; nothing ran
    eager. Fused: each decode step's layer makes 2 rms_norm_linear, 1 linear, 1 silu_and_mul_linear
    calls, and the final norm with the LM head one more rms_norm_linear (prefill keeps the unfused
    ops)."""
    model = tiny_model(device, compressor, backend="triton").set_options(fuse_decode_projections=fused)
    pixel_values, ids = requests(model, device, gen, PROMPT_LENGTHS[1:2] if fused else PROMPT_LENGTHS)
    new_tokens, layers = 4, model.config.llm.num_layers
    with ak.count_calls() as calls:
        tokens, logits = model.generate(pixel_values, ids, max_new_tokens=new_tokens, cache="paged", return_logits=True)
    assert {backend for _, backend in calls} == {"triton"}
    unused = {"mlp": {"token_pool"}, "pool": {"token_mlp_compress"}, "none": {"token_pool", "token_mlp_compress"}}[compressor]
    unused |= set(FUSED_PROJECTIONS) if not fused else {"rms_norm_linear_silu_and_mul"}  # RunOptions.activation_in_gate_up
    assert {op for op, _ in calls} == set(ak.OPS) - unused  # every op the model calls, on its kernel
    if fused:
        decode_steps = new_tokens - 1  # the first new token comes from the prefill's logits
        assert calls[("rms_norm_linear", "triton")] == (2 * layers + 1) * decode_steps  # and the final norm -> LM head
        assert calls[("linear", "triton")] == calls[("silu_and_mul_linear", "triton")] == layers * decode_steps
    recomputed = model.logits_without_cache(pixel_values, ids, tokens)
    model.set_backend("reference").set_options(fuse_decode_projections=False)
    ref_tokens, ref_logits = model.generate(pixel_values, ids, max_new_tokens=new_tokens, return_logits=True)
    assert tokens == ref_tokens
    for b in range(len(ids)):
        assert_parity(logits[b], ref_logits[b].double(), torch.float32, f"request {b} triton vs reference")
        assert_parity(logits[b], recomputed[b].double(), torch.float32, f"request {b} cache vs recompute")


def test_batched_decode_steps_keep_unfused_projections(device, gen):
    """fuse_decode_projections covers one-sequence steps (the GEMV); a batch's steps run cuBLAS and
    the separate ops unless fuse_batched_projections (off until a GPU has timed its tiles)."""
    model = tiny_model(device, "mlp", backend="triton").set_options(fuse_decode_projections=True)
    assert not model.options.fuse_batched_projections
    pixel_values, ids = requests(model, device, gen)
    _, kv = model.prefill(pixel_values, ids, 1)
    tokens = torch.randint(0, model.config.llm.vocab_size, (len(ids),), generator=gen, device=device)
    with ak.count_calls() as calls:
        model.decode_step(tokens, kv)
    assert not {op for op, _ in calls} & set(FUSED_PROJECTIONS), calls
    assert calls[("silu_and_mul", "triton")] == model.config.llm.num_layers


def test_the_activation_in_gate_up_gives_the_fused_steps_logits(device, gen):
    """RunOptions.activation_in_gate_up: a one-sequence fused step's MLP is rms_norm_linear_silu_and_mul
    then a plain linear, with the default fused step's logits. The rule: every fused step (batched
    ones under fuse_batched_projections: the GEMV's rows, the wgmma tiles beyond), not unfused ones."""
    options = RunOptions(fuse_batched_projections=True, activation_in_gate_up=True)
    assert [options.puts_activation_in_gate_up(b) for b in (1, 4, 5, 64, 65)] == [True, True, True, True, False]
    assert not RunOptions(fuse_decode_projections=False, activation_in_gate_up=True).puts_activation_in_gate_up(1)
    assert not RunOptions(activation_in_gate_up=True).puts_activation_in_gate_up(2)  # batched steps unfused
    model = tiny_model(device, "mlp", backend="triton")
    pixel_values, ids = requests(model, device, gen, PROMPT_LENGTHS[1:2])
    token = torch.randint(0, model.config.llm.vocab_size, (1,), generator=gen, device=device)
    layers, logits = model.config.llm.num_layers, {}
    for in_gate_up in (False, True):
        model.set_options(activation_in_gate_up=in_gate_up)
        _, kv = model.prefill(pixel_values, ids, 1)
        with ak.count_calls() as calls:
            logits[in_gate_up] = model.decode_step(token, kv)
        counts = {op: calls[(op, "triton")] for op in FUSED_PROJECTIONS if calls[(op, "triton")]}
        if in_gate_up:
            assert counts == {"rms_norm_linear": layers + 1, "rms_norm_linear_silu_and_mul": layers, "linear": 2 * layers}
        else:
            assert counts == {"rms_norm_linear": 2 * layers + 1, "linear": layers, "silu_and_mul_linear": layers}
    assert_parity(logits[True], logits[False].double(), torch.float32, "activation in gate_up vs in down_proj")


def test_the_residual_in_the_epilogues_gives_the_fused_steps_logits(device, gen, monkeypatch):
    """RunOptions.residual_in_epilogue: a fused step's o_proj and down_proj add the residual stream
    (linear and silu_and_mul_linear, or with activation_in_gate_up a plain linear, with residual=h)
    and the norms' projections read h alone; the logits of the default fused step, at one sequence
    and (under fuse_batched_projections) three. Unfused steps never take it."""
    assert [RunOptions(residual_in_epilogue=True).adds_residual_in_epilogue(b) for b in (1, 2)] == [True, False]
    assert not RunOptions(fuse_decode_projections=False, residual_in_epilogue=True).adds_residual_in_epilogue(1)
    model = tiny_model(device, "mlp", backend="triton")
    layers = model.config.llm.num_layers
    with_residual = []  # the projections called with a residual to add: o_proj and down_proj, every layer
    for name in ("linear", "silu_and_mul_linear"):
        op = getattr(ak, name)
        monkeypatch.setattr(ak, name, lambda *a, op=op, **k: with_residual.append(len(a) > 3 and a[3] is not None) or op(*a, **k))
    for lengths in (PROMPT_LENGTHS[1:2], PROMPT_LENGTHS):
        pixel_values, ids = requests(model, device, gen, lengths)
        tokens = torch.randint(0, model.config.llm.vocab_size, (len(ids),), generator=gen, device=device)
        logits = {}
        for in_epilogue, in_gate_up in ((False, False), (True, False), (True, True)):
            model.set_options(fuse_batched_projections=True, residual_in_epilogue=in_epilogue, activation_in_gate_up=in_gate_up)
            _, kv = model.prefill(pixel_values, ids, 1)
            with_residual.clear()
            with ak.count_calls() as calls:
                logits[in_epilogue, in_gate_up] = model.decode_step(tokens, kv)
            assert sum(with_residual) == (2 * layers if in_epilogue else 0)
            counts = {op: calls[(op, "triton")] for op in FUSED_PROJECTIONS if calls[(op, "triton")]}
            mlp = {"rms_norm_linear_silu_and_mul": layers, "linear": 2 * layers} if in_gate_up else {
                "rms_norm_linear": layers, "linear": layers, "silu_and_mul_linear": layers}  # fmt: skip
            assert counts == {**mlp, "rms_norm_linear": layers + 1 + mlp.get("rms_norm_linear", 0)}, counts
        default = logits[False, False].double()
        for key in ((True, False), (True, True)):
            assert_parity(logits[key], default, torch.float32, f"residual in the epilogues {key} vs the fused step")


def test_which_decode_steps_fuse_their_projections():
    """One sequence: fuse_decode_projections; 2..64 (one wgmma tile of rows): fuse_batched_projections;
    more sequences keep cuBLAS, where the fused tiles would re-read the weight per 64 rows."""
    from aurora_kernels.model.options import MAX_FUSED_BATCH
    from aurora_kernels.ops import fused_linear

    assert MAX_FUSED_BATCH == fused_linear.WGMMA_BLOCK_M
    both = RunOptions(fuse_batched_projections=True)
    assert [both.fuses_decode_projections(b) for b in (1, 2, 64, 65)] == [True, True, True, False]
    assert [RunOptions().fuses_decode_projections(b) for b in (1, 2)] == [True, False]
    assert not RunOptions(fuse_decode_projections=False, fuse_batched_projections=True).fuses_decode_projections(1)


def test_batched_decode_steps_with_fused_projections(device, gen):
    """fuse_batched_projections: a batch's decode step runs each projection with its norm or
    activation as one kernel (the tensor-core tiles, whose fp16/bf16 wgmma path
    tests/ops/test_fused_linear.py checks) and gives the unfused step's logits; with
    activation_in_gate_up too, SwiGLU in gate_up's epilogue and down_proj plain."""
    model = tiny_model(device, "mlp", backend="triton")
    pixel_values, ids = requests(model, device, gen)
    tokens = torch.randint(0, model.config.llm.vocab_size, (len(ids),), generator=gen, device=device)
    layers, logits = model.config.llm.num_layers, {}
    expected_calls = {
        (False, False): {},
        (True, False): {"rms_norm_linear": 2 * layers + 1, "linear": layers, "silu_and_mul_linear": layers},
        (True, True): {"rms_norm_linear": layers + 1, "rms_norm_linear_silu_and_mul": layers, "linear": 2 * layers},
    }
    for (fused, in_gate_up), expected in expected_calls.items():
        model.set_options(fuse_batched_projections=fused, activation_in_gate_up=in_gate_up)
        _, kv = model.prefill(pixel_values, ids, 1)
        with ak.count_calls() as calls:
            logits[fused, in_gate_up] = model.decode_step(tokens, kv)
        assert {op: calls[(op, "triton")] for op in FUSED_PROJECTIONS if calls[(op, "triton")]} == expected
    unfused = logits[False, False].double()
    assert_parity(logits[True, False], unfused, torch.float32, "fused vs unfused batched step")
    assert_parity(logits[True, True], unfused, torch.float32, "fused, activation in gate_up, vs unfused batched step")


def test_generate_launches_with_pdl_as_its_config_says_and_leaves_the_process_setting(device, gen, monkeypatch):
    """RunOptions.programmatic_dependent_launch (on by default) holds for every launch of the ops that
    take PDL inside generate, prefill and decode steps alike; the process-wide switch (off by
    default, for the ops called on their own) is what it was before, after."""
    from aurora_kernels.ops import decode_attention, fused_linear

    model = tiny_model(device, "mlp", backend="triton")
    pixel_values, ids = requests(model, device, gen, lengths=[5])  # one sequence: fused projections too
    seen = []
    for module in (decode_attention, fused_linear):
        pdl_options = module.pdl_options

        def recording(launch_device, pdl_options=pdl_options, name=module.__name__):
            seen.append((name.rsplit(".", 1)[1], ak.programmatic_dependent_launch()))
            return pdl_options(launch_device)

        monkeypatch.setattr(module, "pdl_options", recording)
    assert model.options.programmatic_dependent_launch and not ak.programmatic_dependent_launch()
    with_pdl = model.generate(pixel_values, ids, max_new_tokens=3)
    assert {name for name, _ in seen} == {"decode_attention", "fused_linear"}
    assert all(on for _, on in seen) and not ak.programmatic_dependent_launch()
    seen.clear()
    with ak.using_programmatic_dependent_launch(True):
        without = model.set_options(programmatic_dependent_launch=False).generate(pixel_values, ids, max_new_tokens=3)
        assert ak.programmatic_dependent_launch()
    assert seen and not any(on for _, on in seen)
    assert with_pdl == without


def test_generate_asks_for_the_weight_prefetch_as_its_config_says(device, gen, monkeypatch):
    """RunOptions.weight_prefetch (off by default) reaches every fused_linear launch inside generate,
    and only there."""
    from aurora_kernels.ops import _pdl, fused_linear

    model = tiny_model(device, "mlp", backend="triton")
    pixel_values, ids = requests(model, device, gen, lengths=[5])  # one sequence: the fused GEMVs
    seen = []

    def recording(use_pdl, weight):
        seen.append(_pdl._WEIGHT_PREFETCH.get())
        return False  # under the interpreter nothing runs inline PTX

    monkeypatch.setattr(fused_linear, "weight_prefetch_option", recording)
    assert not model.options.weight_prefetch
    model.generate(pixel_values, ids, max_new_tokens=3)
    assert seen and not any(seen)
    seen.clear()
    model.set_options(weight_prefetch=True).generate(pixel_values, ids, max_new_tokens=3)
    assert seen and all(seen) and not _pdl._WEIGHT_PREFETCH.get()


def test_eos_stops_each_request(device, gen):
    model = tiny_model(device)
    pixel_values, ids = requests(model, device, gen)
    free = model.generate(pixel_values, ids, max_new_tokens=5)
    eos = free[0][1]  # request 0's second token
    stopped = model.generate(pixel_values, ids, max_new_tokens=5, eos_token_id=eos)
    for b in range(3):
        expected = free[b][: free[b].index(eos) + 1] if eos in free[b] else free[b]
        assert stopped[b] == expected
    assert stopped[0][-1] == eos and len(stopped[0]) == 2


def test_dense_llm_matches_packed_prefill(device, gen):
    """model.llm(input_ids) (dense causal, as transformers' Qwen2ForCausalLM) equals the packed prefill
    path on the same tokens."""
    model = tiny_model(device)
    ids = torch.randint(0, model.config.llm.vocab_size, (2, 9), generator=gen, device=device)
    dense = model.llm(ids)
    x = model.llm.embed_tokens(ids.flatten())
    positions = torch.arange(9, device=device).repeat(2)
    cu = torch.tensor([0, 9, 18], dtype=torch.int32, device=device)
    packed = model.llm.logits(model.llm.prefill(x, positions, cu, 9)).view(2, 9, -1)
    assert_parity(dense, packed.double(), torch.float32)


def test_vision_output_shape_and_errors(device, gen):
    model = tiny_model(device)
    pixel_values, ids = requests(model, device, gen)
    assert model.vision(pixel_values).shape == (3, 64, 128)
    with pytest.raises(ValueError, match=r"pixel_values: expected shape \[B, 3, 64, 64\], got \[3, 3, 32, 32\]"):
        model.vision(pixel_values[..., :32, :32])
    with pytest.raises(ValueError, match="input_ids: expected 3 prompts"):
        model.generate(pixel_values, ids[:2], 2)
    with pytest.raises(TypeError, match=r"input_ids\[0\]: expected dtype int64"):
        model.generate(pixel_values, [ids[0].int(), *ids[1:]], 2)
    with pytest.raises(ValueError, match="cache: expected one of"):
        model.generate(pixel_values, ids, 2, cache="ring")
    with pytest.raises(ValueError, match="input_ids: the longest request needs 1040 positions"):
        model.generate(pixel_values, ids, 1012)  # 16 visual + 12 prompt + 1012 > 1024


@pytest.mark.parametrize("decode", ["compile", pytest.param("cuda_graph", marks=cuda_only)])
def test_decode_modes_match_eager(decode, device, gen):
    """decode="compile" runs Inductor's whole pipeline on a CPU too (the kernels under the interpreter
    inside the compiled graph); "cuda_graph" needs a GPU."""
    model = tiny_model(device, "mlp", backend="triton").to(torch.bfloat16)
    pixel_values, ids = requests(model, device, gen)
    tokens, logits = model.generate(pixel_values, ids, max_new_tokens=6, cache="paged", return_logits=True)
    fast_tokens, fast_logits = model.generate(pixel_values, ids, max_new_tokens=6, cache="paged", decode=decode,
                                              return_logits=True)  # fmt: skip
    assert fast_tokens == tokens
    for b in range(3):  # return_logits gives float32 copies of the bf16 logits: exact back in bf16
        assert_parity(fast_logits[b].bfloat16(), logits[b].double(), torch.bfloat16, f"request {b}, decode={decode}")


def test_auto_decode_mode_graphs_the_kernels_on_a_gpu_where_it_pays():
    from aurora_kernels.runtime import AUTO_GRAPH_MIN_NEW_TOKENS, auto_decode_mode

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert auto_decode_mode(cuda, "triton", AUTO_GRAPH_MIN_NEW_TOKENS) == "cuda_graph"
    assert auto_decode_mode(cuda, "triton", AUTO_GRAPH_MIN_NEW_TOKENS - 1) == "eager"  # the capture would not pay
    assert auto_decode_mode(cuda, "reference", 128) == "eager"  # reads cache lengths on the host: not capturable
    assert auto_decode_mode(cpu, "triton", 128) == "eager"


def test_generate_decodes_in_the_auto_mode_by_default(device, gen):
    """generate's default decode is "auto"; stats say which mode ran, and it gives eager's tokens (on a
    CPU auto is eager whatever the backend: the reference, which is quick there, stands in)."""
    model = tiny_model(device, "mlp", backend="triton" if device.type == "cuda" else "reference").to(torch.bfloat16)
    pixel_values, ids = requests(model, device, gen)
    stats = {}
    tokens = model.generate(pixel_values, ids, max_new_tokens=8, stats=stats)
    assert stats["decode"] == ("cuda_graph" if device.type == "cuda" else "eager")
    assert tokens == model.generate(pixel_values, ids, max_new_tokens=8, decode="eager")


def test_decode_mode_errors(device, gen):
    model = tiny_model(device)
    pixel_values, ids = requests(model, device, gen)
    with pytest.raises(ValueError, match="decode: expected one of"):
        model.generate(pixel_values, ids, 2, decode="fast")
    if device.type == "cpu":
        with pytest.raises(ValueError, match="decode: 'cuda_graph' needs the model on a CUDA device"):
            model.generate(pixel_values, ids, 2, decode="cuda_graph")


class _EagerGraph:
    """Stands in for a captured graph on a CPU: fn runs at each replay, on the static input."""

    captured: list = []

    def __init__(self, fn, x):
        self.fn, self.input = fn, x.clone()
        _EagerGraph.captured.append(tuple(x.shape))

    def __call__(self, x):
        self.input.copy_(x)
        return self.fn(self.input)


def test_encoder_graphs_are_keyed_on_shape_weights_and_compressor(device, gen, monkeypatch):
    """The cache of RunOptions.encoder_cuda_graphs, with the capture mocked (a CPU cannot capture): the
    first prefill of a batch shape captures, the next replays with the new pixels; a replaced
    parameter, another compressor or backend captures anew; at most MAX_ENCODER_GRAPHS are kept,
    least recently used dropped; grad mode runs eagerly. The answer is eager's every time."""
    from aurora_kernels.model import aurora

    monkeypatch.setattr(aurora, "graphs_supported", lambda device: True)
    monkeypatch.setattr(aurora, "run_on_side_stream", lambda fn, x: fn(x))
    monkeypatch.setattr(aurora, "Graphed", _EagerGraph)
    monkeypatch.setattr(_EagerGraph, "captured", [])
    model = tiny_model(device, "mlp")
    graphed = tiny_model(device, "mlp").set_options(encoder_cuda_graphs=True)

    def check(batch):
        pixel_values, _ = requests(model, device, gen, lengths=[3] * batch)
        with torch.no_grad():
            expected = model.encode_images(pixel_values)
            for got, want in zip(graphed._encode(pixel_values), expected):
                torch.testing.assert_close(got, want, rtol=0, atol=0)

    check(3), check(3)
    assert [shape[0] for shape in _EagerGraph.captured] == [3]
    for module in (model, graphed):
        module.vision.post_layernorm.weight = torch.nn.Parameter(module.vision.post_layernorm.weight * 1.5)
    check(3)
    assert len(_EagerGraph.captured) == 2 and len(graphed._encoder_graphs) == 2
    for batch in (1, 2, 1):
        check(batch)
    assert len(_EagerGraph.captured) == 4 and len(graphed._encoder_graphs) == aurora.MAX_ENCODER_GRAPHS
    check(3)  # a replay: now the most recently used
    check(4), check(5)  # drop the least recently used: batch 3 with the old weights, then batch 2
    check(3)
    assert len(_EagerGraph.captured) == 6 and len(graphed._encoder_graphs) == aurora.MAX_ENCODER_GRAPHS
    assert [key[0][0] for key in graphed._encoder_graphs] == [1, 4, 5, 3]
    for module in (model, graphed):
        module.replace_compressor("pool")
    assert not graphed._encoder_graphs
    check(1)
    assert len(_EagerGraph.captured) == 7
    graphed.set_backend("reference")
    assert not graphed._encoder_graphs
    pixel_values, _ = requests(model, device, gen, lengths=[4])
    with torch.enable_grad():
        graphed._encode(pixel_values)
    assert len(_EagerGraph.captured) == 7 and not graphed._encoder_graphs


def test_encoder_graphs_need_a_cuda_device(device, gen):
    if device.type != "cpu":
        pytest.skip("the error is about a model off CUDA (on a GPU, test_encoder_graphs_give_eager_answers_on_a_gpu)")
    model = tiny_model(device).set_options(encoder_cuda_graphs=True)
    pixel_values, ids = requests(model, device, gen)
    with pytest.raises(ValueError, match="encoder_cuda_graphs: CUDA graphs need the model on a CUDA device"):
        model.generate(pixel_values, ids, 2)


@cuda_only
def test_encoder_graphs_give_eager_answers_on_a_gpu(device, gen):
    """Captured for real: prefill's logits those of the eager encoder (same kernels and weights; within
    the bf16 bound, should cuBLAS pick another GEMM inside a capture), on the capturing call and on a
    replay with new pixels (a stale replay would be far off), and the same greedy tokens."""
    eager = tiny_model(device, "mlp", backend="triton").to(torch.bfloat16)
    graphed = tiny_model(device, "mlp", backend="triton").to(torch.bfloat16).set_options(encoder_cuda_graphs=True)
    for _ in range(2):  # capture, then replay with other pixels
        pixel_values, ids = requests(eager, device, gen)
        pixel_values = pixel_values.to(torch.bfloat16)
        eager_logits, _ = eager.prefill(pixel_values, ids, 4)
        graphed_logits, _ = graphed.prefill(pixel_values, ids, 4)
        assert_parity(graphed_logits, eager_logits.double(), torch.bfloat16, "prefill logits, encoder graph")
        assert graphed.generate(pixel_values, ids, 4, decode="cuda_graph") == eager.generate(
            pixel_values, ids, 4, decode="cuda_graph"
        )
    assert len(graphed._encoder_graphs) == 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_model_is_as_accurate_as_eager(dtype, device, gen):
    """The whole model in bf16/fp16: its first-token logits on the kernels are as close to the fp32
    model as the eager reference in the same dtype is (errors compound over the model's ~20 ops, so
    the per-op bound does not apply; the eager model's own error is the yardstick)."""
    model = tiny_model(device, "mlp", backend="reference")
    pixel_values, ids = requests(model, device, gen)
    _, truth = model.generate(pixel_values, ids, max_new_tokens=1, return_logits=True)
    model.to(dtype)
    _, eager = model.generate(pixel_values.to(dtype), ids, max_new_tokens=1, return_logits=True)
    model.set_backend("triton")
    _, kernels = model.generate(pixel_values.to(dtype), ids, max_new_tokens=1, cache="paged", return_logits=True)
    for b in range(3):
        eager_error, kernel_error = rel_error(eager[b], truth[b].double()), rel_error(kernels[b], truth[b].double())
        assert kernel_error < 0.1 and kernel_error <= 2 * eager_error, (b, kernel_error, eager_error)


def test_request_and_cache_argument_errors(device, gen):
    from aurora_kernels.model import KVCache

    model = tiny_model(device)
    pixel_values, ids = requests(model, device, gen)
    if device.type == "cpu":  # token ids are checked where reading them costs no device sync
        with pytest.raises(ValueError, match=r"input_ids\[1\]: expected token ids in \[0, 1000\), got 1\d\d\d\.\.1\d\d\d"):
            model.generate(pixel_values, [ids[0], ids[1] + 1000, ids[2]], 2)
    with pytest.raises(TypeError, match="input_ids: expected a list of 1-D int64 tensors"):
        model.generate(pixel_values, torch.stack([ids[0][:1]] * 3), 2)
    with pytest.raises(ValueError, match=r"page_size: expected one of \(16, 32, 64, 128, 256\), got 48"):
        KVCache(2, 1, 64, 2, 64, torch.float32, device, page_size=48)


def test_size_and_type_arguments_are_checked(device, gen):
    """A negative or float size used to make a cache smaller than the prompts (two sequences sharing
    rows) or fail deep inside; each is refused by name before any work."""
    model = tiny_model(device)
    pixel_values, ids = requests(model, device, gen)
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 0, got -2"):
        model.prefill(pixel_values, ids, -2)
    with pytest.raises(TypeError, match="max_new_tokens: expected an int, got float"):
        model.prefill(pixel_values, ids, 2.0)
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1, got 0"):
        model.generate(pixel_values, ids, 0)
    with pytest.raises(TypeError, match="max_new_tokens: expected an int, got float"):
        model.generate(pixel_values, ids, 2.0)
    with pytest.raises(TypeError, match="page_size: expected an int, got float"):
        model.prefill(pixel_values, ids, 2, cache="paged", page_size=16.0)
    _, kv = model.prefill(pixel_values, ids, 0)  # no room to decode, but a valid prefill
    assert kv.capacity == max(16 + n for n in PROMPT_LENGTHS)


def test_generate_options_are_checked_by_name(device, gen):
    """Found by a mutation fuzz of generate's arguments: each of these once ran on (an ignored
    page_size made a KV cache per value), crashed deep inside (an OverflowError from a seed, a
    torch.compile error from a step the reference ops cannot be traced in, "'int' object is not
    callable") or was taken as truthy."""
    model = tiny_model(device, backend="reference")
    pixel_values, ids = requests(model, device, gen)
    for kwargs, error, message in (
        ({"page_size": 7}, ValueError, r"page_size: expected one of \(16, 32, 64, 128, 256\), got 7"),  # contiguous too
        ({"page_size": 16.0}, TypeError, "page_size: expected an int, got float"),
        ({"decode": "compile"}, ValueError, "decode: 'compile' needs backend 'triton', got 'reference'"),
        ({"streamer": 3}, TypeError, "streamer: expected a callable"),
        ({"stats": []}, TypeError, "stats: expected a dict to fill or None, got list"),
        ({"return_logits": "yes"}, TypeError, "return_logits: expected a bool, got str"),
    ):
        with pytest.raises(error, match=message):
            model.generate(pixel_values, ids, 2, **kwargs)
    assert set(model._runtimes) <= {("contiguous", None)}  # one contiguous runtime, whatever page_size said
    with pytest.raises(
        ValueError, match=r"input_ids\[1\]: expected a tensor with values \(on the CPU or a GPU\), got one on the meta"
    ):
        model.generate(pixel_values, [ids[0], ids[1].to("meta"), ids[2]], 2)
    with pytest.raises(ValueError, match="pixel_values: expected a tensor with values"):
        model.generate(pixel_values.to("meta"), ids, 2)
    # a seed past int64 is taken modulo 2**32, as documented; a top_k past the vocabulary keeps all of it
    sampled = {"do_sample": True, "max_new_tokens": 3}
    assert model.generate(pixel_values, ids, seed=2**70 + 5, **sampled) == model.generate(pixel_values, ids, seed=5, **sampled)
    assert model.generate(pixel_values, ids, seed=5, top_k=2**70, **sampled) == model.generate(
        pixel_values, ids, seed=5, **sampled
    )


def test_pixel_values_and_decode_step_errors_name_their_argument(device, gen):
    model = tiny_model(device)
    pixel_values, ids = requests(model, device, gen)
    with pytest.raises(ValueError, match=r"pixel_values: expected 4 dims|pixel_values: expected shape \[\*, 3, 64, 64\]"):
        model.generate(pixel_values[0], ids[:1], 2)  # one image without its batch dim (today: an error about input_ids)
    with pytest.raises(ValueError, match=r"pixel_values: expected shape \[\*, 3, 64, 64\] \[B, C, H, W\]"):
        model.generate(pixel_values[..., :32, :32], ids, 2)
    with pytest.raises(TypeError, match="pixel_values: expected dtype"):
        model.generate((pixel_values * 255).to(torch.uint8), ids, 2)
    _, kv = model.prefill(pixel_values, ids, 2)
    tokens = torch.zeros(3, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match=r"tokens: expected shape \[3\]"):
        model.decode_step(tokens[:, None], kv)
    with pytest.raises(ValueError, match=r"tokens: expected shape \[3\]"):
        model.decode_step(tokens[:2], kv)
    with pytest.raises(TypeError, match="tokens: expected dtype int64, got torch.int32"):
        model.decode_step(tokens.int(), kv)
    with pytest.raises(TypeError, match="kv: expected the KVCache that prefill returned"):
        model.decode_step(tokens, kv.k)
    if device.type == "cpu":
        with pytest.raises(ValueError, match=r"tokens: expected token ids in \[0, 1000\), got 1\d\d\d\.\.1\d\d\d"):
            model.decode_step(tokens + 1000, kv)
        model.decode_step(tokens, kv)
        model.decode_step(tokens, kv)
        with pytest.raises(
            ValueError, match=r"kv: a sequence's cache is full \(30 positions\); prefill with a larger max_new_tokens"
        ):
            model.decode_step(tokens, kv)
    with pytest.raises(ValueError, match="input_ids, pixel_values: expected at least one request, got none"):
        model.generate(pixel_values[:0], [], 2)


def test_eos_token_id_as_generation_config_holds_it(device, gen):
    """An int or a list (transformers' generation_config.json holds either): each request stops at its
    own first token that is any of them (a list used to be ignored, or compared per row)."""
    model = tiny_model(device)
    pixel_values, ids = requests(model, device, gen)
    free = model.generate(pixel_values, ids, max_new_tokens=6)
    eos = [free[1][1], free[0][2]]
    for eos_token_id in (eos, tuple(eos)):
        stopped = model.generate(pixel_values, ids, max_new_tokens=6, eos_token_id=eos_token_id)
        for b in range(3):
            first = next((i for i, t in enumerate(free[b]) if t in eos), None)
            assert stopped[b] == (free[b] if first is None else free[b][: first + 1]), b
    assert model.generate(pixel_values, ids, max_new_tokens=6, eos_token_id=[free[0][2]]) == \
        model.generate(pixel_values, ids, max_new_tokens=6, eos_token_id=free[0][2])  # fmt: skip
    for bad, error, message in (([], TypeError, "eos_token_id: expected an int, a non-empty list"),
                                ("2", TypeError, "eos_token_id: expected an int, a non-empty list"),
                                ([1, 2.0], TypeError, "eos_token_id: expected an int, got float"),
                                ([1, 1000], ValueError, r"eos_token_id: expected token ids in \[0, 1000\), got 1000"),
                                (-1, ValueError, "eos_token_id: expected an int >= 0, got -1")):  # fmt: skip
        with pytest.raises(error, match=message):
            model.generate(pixel_values, ids, 2, eos_token_id=bad)
