"""patch_qwen2_vl on tiny randomly initialised transformers Qwen2-VL and Qwen2.5-VL models: a
left-padded batch of two prompts, each with an image of its own size, through the patched model
(LLM and vision tower on the kernels) gives the unpatched model's logits and greedy tokens."""

import inspect

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.testing import assert_parity

transformers = pytest.importorskip("transformers")

IMAGE, VIDEO, START, END = 290, 291, 292, 293
PATCH, MERGE, TEMPORAL = 4, 2, 2
GRIDS = ((4, 4), (4, 8))  # each image's height and width in patches


def _tiny_vl(family, gen):
    text = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e6,
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})  # fmt: skip
    # head dim 80 in the vision tower, as the real models'; Qwen2.5-VL: windowed blocks but the last
    vision = dict(depth=2, embed_dim=160, hidden_size=160 if family == "Qwen2_5_VL" else 64, num_heads=2, mlp_ratio=2,
                  intermediate_size=256, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL,
                  in_channels=3, out_hidden_size=64, fullatt_block_indexes=[1], window_size=16)  # fmt: skip
    config = getattr(transformers, family + "Config")(text_config=text, vision_config=vision, image_token_id=IMAGE,
                                                      video_token_id=VIDEO, vision_start_token_id=START,
                                                      vision_end_token_id=END)  # fmt: skip
    torch.manual_seed(gen.initial_seed() % 2**31)
    model = getattr(transformers, family + "ForConditionalGeneration")(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model


def _image_batch(model, device):
    """Two requests, left-padded: text, an image's tokens, text; as the processor would give them."""
    gen = torch.Generator().manual_seed(5)
    rows = []
    for (h, w), before, after in zip(GRIDS, (3, 1), (2, 4)):
        image_tokens = h * w // MERGE**2
        rows.append([*torch.randint(1, 280, (before,), generator=gen).tolist(), START, *[IMAGE] * image_tokens, END,
                     *torch.randint(1, 280, (after,), generator=gen).tolist()])  # fmt: skip
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    patches = sum(h * w for h, w in GRIDS)
    batch = {"input_ids": ids, "attention_mask": mask, "image_grid_thw": torch.tensor([[1, h, w] for h, w in GRIDS]),
             "pixel_values": torch.randn((patches, 3 * TEMPORAL * PATCH * PATCH), generator=gen)}  # fmt: skip
    if "mm_token_type_ids" in inspect.signature(model.forward).parameters:  # transformers 5
        batch["mm_token_type_ids"] = (ids == IMAGE).long()
    return {k: v.to(device) for k, v in batch.items()}


def _patched_copy(model, device, **options):
    from aurora_kernels.integrations import patch_qwen2_vl

    patched = type(model)(model.config).eval()  # model's config: the patch takes a copy of it
    patched.load_state_dict(model.state_dict())
    return patch_qwen2_vl(patched.to(device), **options)


@pytest.fixture(autouse=True)
def restore_transformers_rotary(monkeypatch):
    """The rotary dispatcher is inert outside patched instances; undo it after each test all the same."""
    for family in ("qwen2_vl", "qwen2_5_vl"):
        module = __import__(f"transformers.models.{family}.modeling_{family}", fromlist=["_"])
        for name in ("apply_rotary_pos_emb", "apply_multimodal_rotary_pos_emb"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))


@pytest.mark.parametrize("family", ["Qwen2VL", "Qwen2_5_VL"])
def test_patched_model_matches_on_a_padded_image_batch(family, device, gen):
    model = _tiny_vl(family, gen).to(device)
    batch = _image_batch(model, device)
    with torch.no_grad():
        expected = model(**batch).logits
    patched = _patched_copy(model, device)
    with torch.no_grad(), ak.count_calls() as calls:
        got = patched(**batch).logits
    real = batch["attention_mask"].bool()
    assert_parity(got[real], expected[real].double(), torch.float32, f"patched {family} logits")
    text_layers, vision_blocks = model.config.text_config.num_hidden_layers, model.config.vision_config.depth
    assert calls[("attention_varlen", "triton")] == text_layers + vision_blocks  # the padded LLM, each vision block
    assert calls[("apply_rotary", "triton")] == text_layers + vision_blocks
    assert calls[("silu_and_mul", "triton")] == text_layers + (vision_blocks if family == "Qwen2_5_VL" else 0)
    # the vision tower's norms: LayerNorm in Qwen2-VL, RMSNorm in Qwen2.5-VL (two a block and the merger's)
    vision_norm = "layer_norm" if family == "Qwen2VL" else "rms_norm"
    assert calls[(vision_norm, "triton")] >= 2 * vision_blocks + 1
    assert calls[("rms_norm", "triton")] >= 2 * text_layers + 1


@pytest.mark.parametrize("family", ["Qwen2VL", "Qwen2_5_VL"])
def test_patched_model_generates_as_transformers(family, device, gen):
    model = _tiny_vl(family, gen).to(device)
    batch = _image_batch(model, device)
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        expected = model.generate(**batch, **settings)
        got = _patched_copy(model, device).generate(**batch, **settings)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("family", ["Qwen2VL", "Qwen2_5_VL"])
def test_one_request_generates_as_transformers_over_a_static_cache(family, device, gen):
    """One request, no padding, a static cache (whose unwritten slots the patched model attended
    when generate dropped the mask of ones: scores 25% and 80% off, other tokens): the unpatched
    model's scores and tokens."""
    model = _tiny_vl(family, gen).to(device)
    batch = _image_batch(model, device)
    real = batch["attention_mask"][1].bool()  # the second request of the batch, alone
    first_image_patches = GRIDS[0][0] * GRIDS[0][1]
    one = {**batch, "input_ids": batch["input_ids"][1:2, real], "attention_mask": batch["attention_mask"][1:2, real],
           "pixel_values": batch["pixel_values"][first_image_patches:], "image_grid_thw": batch["image_grid_thw"][1:]}  # fmt: skip
    if "mm_token_type_ids" in batch:
        one["mm_token_type_ids"] = batch["mm_token_type_ids"][1:2, real]
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "cache_implementation": "static",
                "output_scores": True, "return_dict_in_generate": True}  # fmt: skip
    with torch.no_grad():
        expected = model.generate(**one, **settings)
        got = _patched_copy(model, device).generate(**one, **settings)
    assert torch.equal(got.sequences, expected.sequences)
    assert_parity(torch.stack(got.scores), torch.stack(expected.scores).double(), torch.float32, f"{family} scores")


def test_vision_off_leaves_the_tower_to_transformers_and_unpatch_restores(device, gen):
    from aurora_kernels.integrations import patched, unpatch

    model = _tiny_vl("Qwen2_5_VL", gen).to(device)
    batch = _image_batch(model, device)
    with torch.no_grad():
        expected = model(**batch).logits
        with patched(model, vision=False):
            with ak.count_calls() as calls:
                model(**batch)
            # the LLM only: its padded attention, its rotary; nothing at the vision tower's shapes
            assert calls[("attention_varlen", "triton")] == model.config.text_config.num_hidden_layers
            assert calls[("apply_rotary", "triton")] == model.config.text_config.num_hidden_layers
        with ak.count_calls() as calls:
            restored = model(**batch).logits
    assert not calls and torch.equal(restored, expected)
    assert unpatch(model) is model
    # a nested config's field assigned while patched is kept; the attention implementations are not
    implementations = [c._attn_implementation for c in (model.config, model.config.text_config, model.config.vision_config)]
    with patched(model, vision=False):
        model.config.text_config.use_cache = False
    assert model.config.text_config.use_cache is False
    assert implementations == [
        c._attn_implementation for c in (model.config, model.config.text_config, model.config.vision_config)
    ]


def test_the_vision_blocks_read_each_grouping_once():
    """transformers hands one cu_seqlens tensor to every vision block (Qwen2.5-VL: one per window,
    one per image, in turns); its blocks read the longest group from it in each, a host sync each
    on a GPU. The patched blocks read each tensor once, and again after it changed in place."""
    from aurora_kernels.integrations.qwen2_vl import _longest_group
    from bench.transformers_e2e import CountOpsAndReads

    windows, images = torch.tensor([0, 4, 8, 16, 20]), torch.tensor([0, 16, 20])
    counting = CountOpsAndReads()
    with counting:
        for _ in range(3):  # blocks taking turns
            assert _longest_group(windows) == 8 and _longest_group(images) == 16
    assert counting.reads == 2
    windows[4] = 30  # same tensor, new version
    with counting:
        assert _longest_group(windows) == 14 and _longest_group(windows.clone()) == 14
    assert counting.reads == 4


def test_the_compiled_vision_tower_reads_each_grouping_once(monkeypatch, gen):
    """Under torch.compile the patched tower breaks its graph where transformers' does (at each
    block's read of the longest group), no more often (its traced read broke twice for each
    grouping), and reads each grouping once a forward, as in eager mode."""
    from aurora_kernels.integrations import patch_qwen2_vl, qwen2_vl

    class CountingCache(qwen2_vl.PerTensorCache):
        made = 0

        def get(self, tensor, key, make):
            def counted():
                self.made += 1
                return make()

            return super().get(tensor, key, counted)

    model = _tiny_vl("Qwen2_5_VL", gen)
    batch = _image_batch(model, torch.device("cpu"))
    tower = getattr(model, "model", model).visual
    inputs = (batch["pixel_values"], batch["image_grid_thw"])
    with torch.no_grad():
        torch._dynamo.reset()
        unpatched = torch._dynamo.explain(tower)(*inputs)
        patch_qwen2_vl(model, rms_norm=False, rotary=False, mlp=False, attention=False)
        tower(*inputs)  # the SwiGLU MLPs' first call fuses their weights: a graph break, once
        monkeypatch.setattr(qwen2_vl, "_LONGEST_GROUPS", CountingCache(2))
        torch._dynamo.reset()
        patched = torch._dynamo.explain(tower)(*inputs)
        compiled = torch.compile(tower, backend="eager")
        compiled(*inputs)
        qwen2_vl._LONGEST_GROUPS.made = 0
        compiled(*inputs)  # the graphs compiled: what a forward reads
    assert qwen2_vl._LONGEST_GROUPS.made == 2  # Qwen2.5-VL: per window and per image
    assert patched.graph_count <= unpatched.graph_count, (patched.break_reasons, unpatched.break_reasons)


def test_rejects_other_models():
    from aurora_kernels.integrations import patch_qwen2_vl

    with pytest.raises(TypeError, match="model: expected a transformers Qwen2VLForConditionalGeneration or .* got Linear"):
        patch_qwen2_vl(torch.nn.Linear(2, 2))
