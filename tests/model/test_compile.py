"""torch.compile sees every op as one custom-op node (traced through its fake), with no graph break,
for a whole decode step of the model; Inductor updates the KV cache in place (on a CPU too, the kernels
under the interpreter); on a GPU the step is also replayed from a CUDA graph."""

import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import aurora_kernels as ak
from aurora_kernels.testing import assert_parity, check_cuda_graph
from tests.catalogue import cuda_only
from tests.model.test_model import PROMPT_LENGTHS, requests, tiny_model


def _prefilled(model, device, gen, page_size=None):
    """A KV cache holding the prefill of 3 requests of different lengths (one request with
    fuse_decode_projections, which covers one-sequence steps), and a next token for each."""
    one_sequence = model.options.fuse_decode_projections
    pixel_values, ids = requests(model, device, gen, PROMPT_LENGTHS[1:2] if one_sequence else PROMPT_LENGTHS)
    _, kv = model.prefill(pixel_values, ids, 4, cache="paged" if page_size else "contiguous", page_size=page_size or 16)
    tokens = torch.randint(0, model.config.llm.vocab_size, (len(ids),), generator=gen, device=device)
    return kv, tokens


def _decode_step(model, kv):
    """model.decode_step from the same cache lengths on every call (it advances kv.seqlens; resetting
    them on the device first makes a call rewrite the same slots, so eager, compiled and replayed
    calls see the same inputs)."""
    start = kv.seqlens.clone()

    def step(tokens):
        kv.seqlens.copy_(start)
        return model.decode_step(tokens, kv)

    return step


# paged with RunOptions.fuse_decode_projections: the projections as fused_linear custom ops
@pytest.mark.parametrize("page_size, fused", [(None, False), (16, True)], ids=["contiguous", "paged-fused"])
def test_decode_step_compiles_to_one_graph_of_custom_ops(page_size, fused, device, gen):
    model = tiny_model(device, "mlp", backend="triton").set_options(fuse_decode_projections=fused)
    kv, tokens = _prefilled(model, device, gen, page_size)
    step = _decode_step(model, kv)
    with torch.no_grad():
        expected = step(tokens)
        graphs = []

        def recording_backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        compiled = torch.compile(step, fullgraph=True, backend=recording_backend)  # fullgraph: a break raises
        assert_parity(compiled(tokens), expected.double(), torch.float32, "compiled decode step")
    assert len(graphs) == 1
    targets = {str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"}
    ours = {t.split(".")[1] for t in targets if t.startswith("aurora_kernels.")}
    # RoPE inside decode_attention; fused: the projections and the ops feeding them in fused_linear
    # kernels, the final norm with the LM head too
    fused_ops = {"decode_attention", "rms_norm_linear", "linear", "silu_and_mul_linear"}
    assert ours == (fused_ops if fused else {"rms_norm", "decode_attention", "silu_and_mul"}), targets
    linears = [node for node in graphs[0].graph.nodes if str(node.target) == "<built-in function linear>"]
    assert len(linears) == (0 if fused else 1 + 4 * model.config.llm.num_layers)


def test_fakes_match_the_kernels(device, gen):
    """aot_eager runs every op's fake for shape propagation, then the kernel: outputs agree."""
    model = tiny_model(device, "mlp", backend="triton")
    kv, tokens = _prefilled(model, device, gen)
    step = _decode_step(model, kv)
    with torch.no_grad():
        expected = step(tokens)
        torch._dynamo.reset()
        assert_parity(torch.compile(step, fullgraph=True, backend="aot_eager")(tokens), expected.double(), torch.float32)


def test_a_compiled_backward_through_an_op_raises(device, gen):
    """Compiled in grad mode, the op's autograd formula is traced into the backward graph (the forward
    compiles and runs as without grad), and running that backward raises."""
    x = torch.randn(4, 32, device=device, generator=gen)
    weight = torch.randn(32, device=device, generator=gen).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, weight: ak.rms_norm(x, weight) * 2, fullgraph=True, backend="aot_eager")
    out = compiled(x, weight)
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), ak.rms_norm(x, weight) * 2, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"rms_norm: .* no backward \(inference only\)"):
        out.sum().backward()


def test_eager_calls_skip_the_dispatcher(device, gen):
    x = torch.randn(4, 32, device=device)
    with ak.count_calls() as calls:
        ak.gelu_tanh(x)
    assert calls[("gelu_tanh", "triton")] == 1
    assert hasattr(torch.ops.aurora_kernels, "gelu_tanh")  # registered for compile, not used in eager


def _decode_step_and_expected(device, gen, page_size=16, fused=False):
    """A bf16 decode step of the tiny model on the kernels, and its eager output: compiled and replayed
    steps must reproduce the eager kernels (against the reference ops a bf16 model differs by more than
    one op's bound, test_half_precision_model_is_as_accurate_as_eager)."""
    model = tiny_model(device, "mlp", backend="triton").set_options(fuse_decode_projections=fused).to(torch.bfloat16)
    kv, tokens = _prefilled(model, device, gen, page_size)
    step = _decode_step(model, kv)
    with torch.no_grad():
        expected = step(tokens).double()
    return model, kv, step, tokens, expected


def _call_args(line: str) -> list[str]:
    """The top-level arguments of the first call on a line of generated code (q may be an
    expression such as reinterpret_tensor(buf3, (3, 1, 4, 64), ...))."""
    args, depth, current = [], 0, ""
    for char in line[line.index("(") + 1 :]:
        if char == "," and depth == 0:
            args.append(current.strip())
            current = ""
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            break
        current += char
    return args + [current.strip()]


@pytest.mark.parametrize("page_size", [None, 16], ids=["contiguous", "paged"])
def test_inductor_updates_the_cache_in_place(page_size, device, gen):
    """Inductor hands the cache buffers straight to decode_attention, which appends in place as its
    schema declares: no copy of a cache per layer per step (a functionalized copy would cost a whole
    cache read and write per token)."""
    model, kv, step, tokens, expected = _decode_step_and_expected(device, gen, page_size)
    with torch.no_grad():
        torch._dynamo.reset()
        out, code = run_and_get_code(torch.compile(step, fullgraph=True), tokens)
    assert_parity(out, expected, torch.bfloat16, "decode step, torch.compile")
    source = "\n".join(code)
    # every layer's call takes its k/v caches as graph inputs (argN_1), not as buffers of its own
    calls = [_call_args(line)[1:3] for line in source.splitlines() if "aurora_kernels.decode_attention.default(" in line]
    assert len(calls) == model.config.llm.num_layers, calls
    assert all(re.fullmatch(r"arg\d+_1", name) for call in calls for name in call), calls
    cache_shape = re.escape(str(tuple(kv.k[0].shape)))
    assert not re.search(r"empty_strided\w*\(" + cache_shape, source), "Inductor allocates a cache-shaped buffer"


@cuda_only
@pytest.mark.parametrize("fused, pdl", [(False, False), (True, False), (True, True)],
                         ids=["cublas", "fused-projections", "fused-projections-pdl"])  # fmt: skip
def test_decode_step_cuda_graph(fused, pdl, device, gen):
    """The eager step (without PDL) against its replay from a CUDA graph (with PDL where asked)."""
    _, _, step, tokens, expected = _decode_step_and_expected(device, gen, fused=fused)
    with ak.using_programmatic_dependent_launch(pdl), torch.no_grad():
        check_cuda_graph(step, (tokens,), expected, torch.bfloat16, "decode step")
