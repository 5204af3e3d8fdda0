"""aurora_kernels.integrations: patch_qwen2 and patch_siglip on tiny randomly initialised transformers
models (Qwen2, and SigLIP's vision tower)."""

import collections
import inspect

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.testing import assert_parity, rel_error
from tests.conftest import FULLGRAPH_BACKEND

transformers = pytest.importorskip("transformers")


def _tiny_qwen2(gen):
    config = transformers.Qwen2Config(vocab_size=500, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                                      max_position_embeddings=256)  # fmt: skip
    torch.manual_seed(gen.initial_seed() % 2**31)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if "norm" in name else 0.0))
    return model


@pytest.fixture(autouse=True)
def restore_transformers_rotary(monkeypatch):
    """patch_qwen2 installs a rotary dispatcher in transformers' module (inert outside patched
    instances): undo it after each test all the same, and any class-level patch."""
    from transformers.models.qwen2 import modeling_qwen2

    from aurora_kernels.integrations import revert_aurora_kernels_to_qwen2

    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", modeling_qwen2.apply_rotary_pos_emb)
    yield
    revert_aurora_kernels_to_qwen2()


def _patched_copy(model, device):
    """A patched model with model's weights, made on model's config object: the patch takes a copy
    of it (model, the reference, stays on transformers' attention)."""
    from aurora_kernels.integrations import patch_qwen2

    patched = transformers.Qwen2ForCausalLM(model.config).eval()
    patched.load_state_dict(model.state_dict())
    return patch_qwen2(patched.to(device))


def test_patched_logits_and_generate_match(device, gen):
    model = _tiny_qwen2(gen).to(device)
    ids = torch.randint(0, 500, (2, 13), generator=torch.Generator().manual_seed(1)).to(device)
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        expected = model(ids).logits
        expected_tokens = model.generate(ids[:1], **settings)
    patched = _patched_copy(model, device)
    with torch.no_grad():
        with ak.count_calls() as calls:
            got = patched(ids).logits
        with ak.count_calls() as generate_calls:
            tokens = patched.generate(ids[:1], **settings)
    assert_parity(got, expected.double(), torch.float32, "patched Qwen2 logits")
    assert {op for op, backend in calls if backend == "triton"} == {"rms_norm", "apply_rotary", "silu_and_mul", "attention"}
    assert calls[("rms_norm", "triton")] == 2 * 2 + 1  # two per layer and the final norm
    assert torch.equal(tokens, expected_tokens)
    # the prompt through attention, each of the 4 decode steps (2 layers) through decode_attention
    assert generate_calls[("attention", "triton")] == 2 and generate_calls[("decode_attention", "triton")] == 4 * 2


def _cache_argument(model) -> str:
    """The forward's cache argument: `cache` from transformers 5.x (past_key_values deprecated),
    past_key_values before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def test_a_decode_step_runs_decode_attention_with_transformers_logits(device, gen, monkeypatch):
    """One new token a sequence over transformers' dynamic cache, no padding: decode attention over
    the cache's [B, Hkv, L, D] views in one split (eager: one launch), the unpatched model's logits."""
    model = _tiny_qwen2(gen).to(device)
    ids = torch.randint(0, 500, (2, 80), generator=torch.Generator().manual_seed(3)).to(device)  # 79 keys: 2 splits
    patched = _patched_copy(model, device)
    splits = []
    decode_attention = ak.decode_attention

    def spy(*args, num_kv_splits=None, **kwargs):
        splits.append(num_kv_splits)
        return decode_attention(*args, num_kv_splits=num_kv_splits, **kwargs)

    monkeypatch.setattr(ak, "decode_attention", spy)
    cache_argument = _cache_argument(model)

    def step(m, prompt, token):
        cache = m(prompt, use_cache=True).past_key_values
        return m(token, **{cache_argument: cache}).logits

    with torch.no_grad():
        expected = step(model, ids[:, :79], ids[:, 79:])
        got = step(patched, ids[:, :79], ids[:, 79:])
    assert splits == [1, 1]  # a layer each
    assert_parity(got, expected.double(), torch.float32, "patched Qwen2 decode-step logits")


def test_patch_keeps_the_state_dict(device, gen):
    model = _tiny_qwen2(gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from aurora_kernels.integrations import patch_qwen2

    patch_qwen2(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_patched_model_moved_converted_or_reloaded_computes_with_its_new_weights(device, gen):
    """The MLP's fused gate_up tensor is made on the first call; `.half()` / `.to()` after it gave the
    parameters memory of their own and left the fused tensor behind (a dtype error; on another
    device a device error), and `load_state_dict(assign=True)` left it holding the old weights (a
    wrong answer without an error). Each now makes it again."""
    model = _tiny_qwen2(gen).to(device)
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(2)).to(device)
    patched = _patched_copy(model, device)
    with torch.no_grad():
        truth = model(ids).logits.double()
        patched(ids)  # fuses gate_up
        other = _tiny_qwen2(torch.Generator().manual_seed(7)).to(device)
        patched.load_state_dict(other.state_dict(), assign=True)
        assert_parity(patched(ids).logits, other(ids).logits.double(), torch.float32, "patched Qwen2 after assign=True")
        patched.load_state_dict(model.state_dict(), assign=True)
        model.to(torch.bfloat16)
        patched.to(torch.bfloat16)
        # a whole model's bf16 error compounds past one op's bound: the eager model's is the yardstick
        eager_error, kernel_error = rel_error(model(ids).logits, truth), rel_error(patched(ids).logits, truth)
        assert kernel_error <= 2 * eager_error, (kernel_error, eager_error)
        model.float()
        patched.float()  # and back (both with the rotary tables' bf16 rounding)
        assert_parity(patched(ids).logits, model(ids).logits.double(), torch.float32, "patched Qwen2 after .bfloat16().float()")


def _padded_batch(device, side="left"):
    """3 prompts of 5, 9 and 2 tokens in one [3, 9] batch, padded on `side` with id 0, and the mask."""
    lengths = (5, 9, 2)
    gen = torch.Generator().manual_seed(7)
    ids = torch.zeros(3, 9, dtype=torch.int64)
    mask = torch.zeros(3, 9, dtype=torch.int64)
    for b, n in enumerate(lengths):
        cols = slice(9 - n, 9) if side == "left" else slice(0, n)
        ids[b, cols] = torch.randint(1, 500, (n,), generator=gen)
        mask[b, cols] = 1
    return ids.to(device), mask.to(device)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_logits_match(side, device, gen):
    """A padded batch (the default flow: tokenizer(..., padding=True) then the model) runs unpadded
    through attention_varlen: the real positions' logits equal the unpatched model's."""
    model = _tiny_qwen2(gen).to(device)
    ids, mask = _padded_batch(device, side)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    patched = _patched_copy(model, device)
    with torch.no_grad(), ak.count_calls() as calls:
        got = patched(ids, attention_mask=mask).logits
    real = mask.bool()
    assert_parity(got[real], expected[real].double(), torch.float32, f"{side}-padded Qwen2 logits")
    assert calls[("attention_varlen", "triton")] == 2 and calls[("attention", "triton")] == 0


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    """How many times each aten op ran inside the block."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("side", ["left", "right", "holes"])
def test_a_padded_batch_is_unpadded_without_reading_the_mask(side, device, gen):
    """flash-attn's entry reads the mask in every layer (the real rows' count: a host sync); ours
    gathers every row, the real ones first, by shapes alone. Masks with holes (not only left or
    right padding) included."""
    from aurora_kernels.integrations._attention import _unpad_plan, _unpadded_attention
    from bench.transformers_e2e import CountOpsAndReads

    ids, mask = _padded_batch(device, "left" if side == "holes" else side)
    if side == "holes":
        mask[0, 2:7:2] = 0
    batch, seen = mask.shape
    heads_q, heads_kv, head_dim, len_k = 4, 2, 32, seen + 3  # 3 keys past the mask: a static cache's unwritten slots
    q, k, v = (torch.randn(batch, n, heads, head_dim, generator=gen).to(device)
               for n, heads in ((seen, heads_q), (len_k, heads_kv), (len_k, heads_kv)))  # fmt: skip
    with ak.value_checks("always"):  # the plan's offsets and lengths checked by attention_varlen
        got = _unpadded_attention(q, k, v, _unpad_plan(mask, seen), True, None, "triton")
    counting = CountOpsAndReads()  # the reads of tensor contents on the host: a sync on a GPU, a graph break compiled
    with ak.value_checks("never"), counting:  # as on a GPU, where value checks are off by default
        again = _unpadded_attention(q, k, v, _unpad_plan(mask.clone(), seen), True, None, "triton")
    assert not counting.reads and torch.equal(again, got)
    _unpad_plan(mask.to("meta"), seen)  # a tensor with no contents: any read of them (.tolist() too) raises
    real = mask.bool()
    for b in range(batch):  # each sequence's real rows alone, through the eager reference, bottom-right causal
        rows = real[b].nonzero()[:, 0]
        want = ak.attention(q[b : b + 1, rows], k[b : b + 1, rows], v[b : b + 1, rows], causal=True, backend="reference")
        assert_parity(got[b, rows], want[0].double(), torch.float32, f"{side}-padded sequence {b}")
        assert not got[b, ~real[b]].any(), "padded queries: expected 0"


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_decode_step_reads_the_cache_in_place(side, device, gen):
    """One new token a sequence after a padded prompt (right padding leaves holes before it):
    decode_attention with the padding mask as its key mask, one launch a layer, no gather of the
    cache (no aten.index) and no host read but transformers' own (the unpatched model's count, as
    on a GPU: value checks off); the unpatched model's logits."""
    from bench.transformers_e2e import CountOpsAndReads

    model = _tiny_qwen2(gen).to(device)
    ids, mask = _padded_batch(device, side)
    token = torch.randint(1, 500, (3, 1), generator=torch.Generator().manual_seed(6)).to(device)
    step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    cache_argument = _cache_argument(model)
    patched = _patched_copy(model, device)
    logits, reads = [], []
    with torch.no_grad(), ak.value_checks("never"):
        for which in (model, patched):
            cache = which(ids, attention_mask=mask).past_key_values
            ops, counting = _CountOps(), CountOpsAndReads()
            with ak.count_calls() as calls, ops, counting:
                logits.append(which(token, attention_mask=step_mask, **{cache_argument: cache}).logits)
            reads.append(counting.reads)
    assert_parity(logits[1], logits[0].double(), torch.float32, f"{side}-padded decode-step logits")
    assert calls == {**{(op, "triton"): 2 for op in ("apply_rotary", "decode_attention", "silu_and_mul")},
                     ("rms_norm", "triton"): 5}  # fmt: skip
    assert not any("index" in str(op) for op in ops.calls), sorted(map(str, ops.calls))
    assert reads[1] <= reads[0], f"host reads: patched {reads[1]}, unpatched {reads[0]}"


def test_a_padded_forward_plans_once_and_again_after_the_mask_changes(device, gen):
    """The plan of a padded batch is made by the first layer and reused by the others, which get the
    same mask object; a mask changed in place is planned again."""
    model = _tiny_qwen2(gen).to(device)
    ids, mask = _padded_batch(device)
    patched = _patched_copy(model, device)
    counting = _CountOps()
    with torch.no_grad(), counting:
        patched(ids, attention_mask=mask)
    assert counting.calls[torch.ops.aten.sort.stable] == 2  # q's rows and k's rows, for both layers
    with torch.no_grad():
        mask[2, 3:] = 1  # the third prompt now has 6 tokens: same object, new version
        ids[2, 3:7] = torch.arange(11, 15, device=device)
        expected = model(ids, attention_mask=mask).logits
        got = patched(ids, attention_mask=mask).logits
    real = mask.bool()
    assert_parity(got[real], expected[real].double(), torch.float32, "Qwen2 logits after the mask changed in place")
    # the plan of one mask object, changed in place between two calls (its version counter moves)
    from aurora_kernels.integrations._attention import _unpad_plan

    first = _unpad_plan(mask, 9)
    assert _unpad_plan(mask, 9) is first
    mask[0, :] = 1
    again = _unpad_plan(mask, 9)
    # sequences 0-2 their real rows (9, 9, 6), 3-5 their padding queries (0, 0, 3), 6 the padding keys
    assert again is not first
    assert again.cu_seqlens_k.tolist() == [0, 9, 18, 24, 24, 24, 24, 27]
    assert again.cu_seqlens_q.tolist() == [0, 9, 18, 24, 24, 24, 27, 27]


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_padded_batch_generates_as_transformers(cache, device, gen):
    """Greedy generation of a left-padded batch of 3 prompts of different lengths, dynamic and static
    cache (the static cache's unwritten slots are padding too): the unpatched model's tokens."""
    model = _tiny_qwen2(gen).to(device)
    ids, mask = _padded_batch(device)
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    if cache == "static":
        settings["cache_implementation"] = "static"
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, **settings)
    patched = _patched_copy(model, device)
    with torch.no_grad():
        assert torch.equal(patched.generate(ids, attention_mask=mask, **settings), expected)


@pytest.mark.parametrize("batch", [1, 2])
def test_an_unpadded_batch_generates_as_transformers_over_a_static_cache(batch, device, gen):
    """A static cache hands attention every slot, written or not, and transformers' generate drops a
    mask of ones (it keeps it for flash-attn alone): with no mask the patched model attended the
    unwritten slots (its prefill saw the next slot's zeros, each decode step all of them: greedy
    tokens off the unpatched model's). Prompts with a mask of ones, with none, and a prefill that
    leaves the cache half empty: the unpatched model's scores and tokens."""
    model = _tiny_qwen2(gen).to(device)
    ids = torch.randint(1, 500, (batch, 7), generator=torch.Generator().manual_seed(5)).to(device)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "cache_implementation": "static",
                "output_scores": True, "return_dict_in_generate": True}  # fmt: skip
    patched = _patched_copy(model, device)
    for mask in (torch.ones_like(ids), None):
        with torch.no_grad():
            expected = model.generate(ids, attention_mask=mask, **settings)
            got = patched.generate(ids, attention_mask=mask, **settings)
        assert torch.equal(got.sequences, expected.sequences)
        assert_parity(torch.stack(got.scores), torch.stack(expected.scores).double(), torch.float32, "scores")
    from transformers import StaticCache

    with torch.no_grad():  # one forward over a cache of 16 slots: 7 written, 9 not
        want = model(ids, past_key_values=StaticCache(config=model.config, max_batch_size=batch, max_cache_len=16)).logits
        got = patched(ids, past_key_values=StaticCache(config=patched.config, max_batch_size=batch, max_cache_len=16)).logits
    assert_parity(got, want.double(), torch.float32, "logits of a prefill into a static cache")


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_a_batch_generates_through_transformers_compiled_static_cache(padded, device, gen):
    """With a static cache transformers compiles the decode step itself (on a GPU by default; here
    asked to on CPU, fullgraph): the host reads of the mask that the padded path made failed that
    compile. The patched model now generates the unpatched model's tokens through it, padded, and
    unpadded (no mask: the written slots' mask made on the device)."""
    from transformers import CompileConfig

    model = _tiny_qwen2(gen).to(device)
    ids, mask = _padded_batch(device)
    if not padded:
        ids, mask = ids[1:2], None  # the prompt of 9 tokens, no padding
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "cache_implementation": "static"}
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, **settings)
    patched = _patched_copy(model, device)
    compile_config = CompileConfig(fullgraph=True, backend="aot_eager", mode=None, dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators alone otherwise
    torch._dynamo.reset()
    with torch.no_grad():
        patched(ids)  # the first call fuses gate_up (new parameters: not in a graph)
        got = patched.generate(ids, attention_mask=mask, compile_config=compile_config, **settings)
    assert torch.equal(got, expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it compiled


def test_a_padded_batch_compiles_to_one_graph(device, gen):
    """flash-attn's way (the real rows' count read from the mask, and transformers' test of the
    mask for padding) broke the graph in every layer; the unpatched model (SDPA) compiles whole,
    and so does the patched one."""
    model = _tiny_qwen2(gen).to(device)
    ids, mask = _padded_batch(device)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
    patched = _patched_copy(model, device)
    with torch.no_grad():
        patched(ids)  # the first call fuses gate_up (new parameters: not in a graph)
    torch._dynamo.reset()
    compiled = torch.compile(patched, fullgraph=True, backend=FULLGRAPH_BACKEND)
    with torch.no_grad():
        got = compiled(ids, attention_mask=mask, use_cache=False).logits  # (4.54 makes a cache dynamo cannot trace)
    real = mask.bool()
    assert_parity(got[real], expected[real].double(), torch.float32, "compiled, padded Qwen2 logits")


def test_a_patched_and_an_unpatched_qwen2_each_compile_to_one_graph(device, gen):
    """The rotary dispatcher, installed in transformers' module for every Qwen2 of the process, read
    a ContextVar, which torch.compile cannot trace: two graph breaks a layer, in patched and
    unpatched models alike. Both now compile whole (fullgraph), with their eager logits."""
    model = _tiny_qwen2(gen).to(device)
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(4)).to(device)
    patched = _patched_copy(model, device)
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
        patched(ids, use_cache=False)  # the first call fuses gate_up (new parameters: not in a graph)
        for which in (model, patched):
            torch._dynamo.reset()
            got = torch.compile(which, fullgraph=True, backend=FULLGRAPH_BACKEND)(ids, use_cache=False).logits
            assert_parity(got, expected.double(), torch.float32, f"{'patched' if which is patched else 'unpatched'}, fullgraph")


def test_an_instance_patch_touches_that_instance_only_and_unpatch_restores_it(device, gen):
    from aurora_kernels.integrations import patched, unpatch

    model = _tiny_qwen2(gen).to(device)
    other = _tiny_qwen2(gen).to(device)
    ids = torch.randint(0, 500, (2, 7), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        expected, other_expected = model(ids).logits, other(ids).logits
        with patched(model):
            with ak.count_calls() as calls:
                other_logits = other(ids).logits  # another Qwen2 in the process: transformers' own code
            assert not calls
            with ak.count_calls() as calls:
                model(ids)
            assert calls[("apply_rotary", "triton")] == model.config.num_hidden_layers
        with ak.count_calls() as calls:
            restored = model(ids).logits
        assert not calls and model.config._attn_implementation != "aurora"
    assert torch.equal(other_logits, other_expected) and torch.equal(restored, expected)
    assert unpatch(model) is model  # nothing left to undo


def test_an_instance_patch_leaves_a_model_sharing_its_config_alone(device, gen):
    """Two models on one config object (`Qwen2ForCausalLM(model.config)`): patching one selected the
    "aurora" attention in the config they share, so the other ran it too. The patched instance now
    takes a copy of its config, and unpatch puts the shared one back."""
    from aurora_kernels.integrations import patch_qwen2, unpatch

    model = _tiny_qwen2(gen).to(device)
    other = transformers.Qwen2ForCausalLM(model.config).eval().to(device)
    other.load_state_dict(model.state_dict())
    shared = model.config
    ids = torch.randint(0, 500, (2, 7), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        expected = other(ids).logits
        patch_qwen2(model)
        with ak.count_calls() as calls:
            got = other(ids).logits
        assert not calls, f"a model sharing the patched instance's config ran {sorted(calls)}"
        assert torch.equal(got, expected) and shared._attn_implementation != "aurora"
        with ak.count_calls() as calls:
            model(ids)
        assert calls[("attention", "triton")] == shared.num_hidden_layers
        assert all(m.config is model.config for m in model.modules() if "config" in m.__dict__)
        unpatch(model)
    assert all(m.config is shared for m in model.modules() if "config" in m.__dict__)


def test_unpatch_keeps_what_was_assigned_on_the_config_while_patched(gen):
    """The patched instance runs on a copy of its config; unpatch puts the original back with the
    fields assigned on the copy meanwhile, not the attention implementation, and keeps what another
    holder of the original assigned on it."""
    from aurora_kernels.integrations import patch_qwen2, unpatch

    model = _tiny_qwen2(gen)
    shared = model.config
    implementation = shared._attn_implementation
    shared.aurora_test_dropped = 1
    patch_qwen2(model)
    assert model.config is not shared and model.config._attn_implementation == "aurora"
    model.config.use_cache = False
    model.config.aurora_test_field = "kept"
    del model.config.aurora_test_dropped
    shared.output_hidden_states = True  # another model on the original config
    unpatch(model)
    assert model.config is shared and all(m.config is shared for m in model.modules() if "config" in m.__dict__)
    assert shared.use_cache is False and shared.aurora_test_field == "kept" and not hasattr(shared, "aurora_test_dropped")
    assert shared.output_hidden_states is True and shared._attn_implementation == implementation


def test_the_class_level_patch_reaches_every_qwen2_and_reverts(device, gen):
    from aurora_kernels.integrations import apply_aurora_kernels_to_qwen2, revert_aurora_kernels_to_qwen2

    model = _tiny_qwen2(gen).to(device)
    ids = torch.randint(0, 500, (2, 7), generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        expected = model(ids).logits
        apply_aurora_kernels_to_qwen2(rope=True, rms_norm=True, swiglu=True)
        with ak.count_calls() as calls:
            got = model(ids).logits  # made before the patch: the classes changed under it
        assert {op for op, _ in calls} == {"rms_norm", "apply_rotary", "silu_and_mul"}
        assert_parity(got, expected.double(), torch.float32, "class-patched Qwen2 logits")
        revert_aurora_kernels_to_qwen2()
        with ak.count_calls() as calls:
            model(ids)
        assert not calls


def test_rejects_other_models(gen):
    from aurora_kernels.integrations import patch_qwen2

    with pytest.raises(TypeError, match="model: expected a transformers Qwen2ForCausalLM or Qwen2Model, got Linear"):
        patch_qwen2(torch.nn.Linear(2, 2))


def test_rejects_a_non_swiglu_mlp(gen):
    from aurora_kernels.integrations import patch_qwen2

    config = transformers.Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, hidden_act="gelu")  # fmt: skip
    with pytest.raises(ValueError, match="model.config.hidden_act: expected 'silu' \\(SwiGLU\\), got 'gelu'"):
        patch_qwen2(transformers.Qwen2ForCausalLM(config), attention=False, rotary=False)


def _tiny_siglip(gen, **config):
    from tests.model.test_loading import SIGLIP_VISION_CONFIG

    torch.manual_seed(gen.initial_seed() % 2**31)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**{**SIGLIP_VISION_CONFIG, **config})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def test_patched_siglip_matches(device, gen):
    """The vision tower's outputs (after the final LayerNorm, and the pooling head's) with every
    LayerNorm, GELU and attention on the kernels, at SigLIP's head dim 72 (2 heads of a width of 144)."""
    from aurora_kernels.integrations import patch_siglip

    model = _tiny_siglip(gen, hidden_size=144).to(device)
    pixel_values = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        expected = model(pixel_values)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patch_siglip(model)
    with torch.no_grad(), ak.count_calls() as calls:
        got = model(pixel_values)
    assert_parity(got.last_hidden_state, expected.last_hidden_state.double(), torch.float32, "patched SigLIP hidden states")
    assert_parity(got.pooler_output, expected.pooler_output.double(), torch.float32, "patched SigLIP pooled output")
    layers = model.config.num_hidden_layers
    # two LayerNorms a layer, the final one and the pooling head's; an MLP a layer and the head's
    assert dict(calls) == {("layer_norm", "triton"): 2 * layers + 2, ("gelu_tanh", "triton"): layers + 1,
                           ("attention", "triton"): layers}  # fmt: skip
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_patch_siglip_rejects_what_it_cannot_run(gen):
    from aurora_kernels.integrations import patch_siglip

    with pytest.raises(TypeError, match="model: expected a transformers SiglipVisionModel or SiglipModel, got Linear"):
        patch_siglip(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="model.config.hidden_act: expected 'gelu_pytorch_tanh', got 'gelu'"):
        patch_siglip(_tiny_siglip(gen, hidden_act="gelu"))
    model = _tiny_siglip(gen)
    name = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm))  # where transformers keeps it
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, torch.nn.LayerNorm(model.config.hidden_size, elementwise_affine=False))
    with pytest.raises(ValueError, match="model: expected LayerNorms over the last dim with weight and bias, got LayerNorm"):
        patch_siglip(model)
    assert not hasattr(model, "_aurora_backend")  # refused before anything was patched


def test_a_whole_siglip_model_matches(device, gen):
    """SiglipModel: both towers' LayerNorms, GELUs and attention on the kernels; image and text
    embeddings as the unpatched model's."""
    from aurora_kernels.integrations import patch_siglip
    from tests.model.test_loading import SIGLIP_VISION_CONFIG

    text = {"vocab_size": 100, "hidden_size": 128, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(gen.initial_seed() % 2**31)
    config = transformers.SiglipConfig(text_config=text, vision_config=SIGLIP_VISION_CONFIG)
    model = transformers.SiglipModel(config).eval().to(device)
    pixel_values = torch.randn((2, 3, 64, 64), generator=torch.Generator().manual_seed(1)).to(device)
    input_ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        expected = model(input_ids=input_ids, pixel_values=pixel_values)
        patch_siglip(model)
        with ak.count_calls() as calls:
            got = model(input_ids=input_ids, pixel_values=pixel_values)
    assert_parity(got.image_embeds, expected.image_embeds.double(), torch.float32, "SiglipModel image embeddings")
    assert_parity(got.text_embeds, expected.text_embeds.double(), torch.float32, "SiglipModel text embeddings")
    assert calls[("attention", "triton")] == SIGLIP_VISION_CONFIG["num_hidden_layers"] + text["num_hidden_layers"]
