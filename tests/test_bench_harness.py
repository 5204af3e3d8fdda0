"""The benchmark registry and report code, checked without a GPU (timing itself needs one)."""

import dataclasses
import json
import os
import subprocess
import time

import pytest
import torch

from aurora_kernels.ops import fused_linear
from bench import gpu_check, harness, run, sweep_fused_linear


def test_every_case_has_a_registered_op_and_a_floor():
    cases = harness.load_cases()
    assert {c.op for c in cases} == set(harness.OPS), "every op with cases registers its parity inputs, and vice versa"
    import aurora_kernels as ak

    assert set(harness.OPS) == set(ak.OPS), "every public op has benchmark cases"
    for case in cases:
        assert case.bytes > 0 and case.flops > 0, case.name
        seconds, bound = harness.floor_seconds(case, harness.H100_COPY_BANDWIDTH, harness.H100_BF16_GEMM)
        assert seconds > 0 and bound in ("memory", "compute")
    table = harness.floors_markdown(cases)
    assert table.count("\n| ") == len(cases) + 2  # header, separator, one row per case


def test_report_and_summary_show_every_outcome():
    row = {
        "op": "rms_norm", "shape": "rows=8", "dtype": "bfloat16", "bytes": 10**6, "flops": 10**6,
        "floor_ms": 0.001, "bound": "memory",
        "impls": {
            "ours": {"ms": 0.002, "gbps": 500.0, "tflops": 0.5, "frac_copy_bw": 0.5, "frac_gemm": 0.001, "frac_floor": 0.5,
                     "graph_ms": 0.00125, "graph_frac_floor": 0.8, "host_us": 21.4},
            "eager": {"ms": 0.006, "gbps": 1, "tflops": 1, "frac_copy_bw": 0.1, "frac_gemm": 0.1, "frac_floor": 0.1, "host_us": 48.0},
            "liger": {"missing": "liger_kernel not importable: ModuleNotFoundError"},
            "torch.compile": {"error": "RuntimeError: boom"},
            # a peer, on both clocks (our eager reference above is not one)
            "SDPA": {"ms": 0.006, "gbps": 1, "tflops": 1, "frac_copy_bw": 0.1, "frac_gemm": 0.1, "frac_floor": 0.1,
                     "graph_ms": 0.004, "graph_frac_floor": 0.25},
            # our own variant: listed, but "the best peer" is someone else's implementation
            "ours, num_kv_splits=4": {"ms": 0.001, "gbps": 1, "tflops": 1, "frac_copy_bw": 1, "frac_gemm": 1, "frac_floor": 1,
                                      "graph_ms": 0.0009, "graph_frac_floor": 1.0},
        },
    }  # fmt: skip
    facts = {"name": "Test GPU", "commit": "abc", "date": "today", "torch": torch.__version__, "triton": "x"}
    ceilings = {"copy_bandwidth": 3e12, "bf16_gemm": 8e14}
    md = harness.results_markdown(facts, ceilings, [row])
    assert (
        "| 0.0020 | 0.0013 (80% floor) | 0.0060 | error (RuntimeError: boom) | liger missing (liger_kernel not importable" in md
    )
    assert "; SDPA 0.0060 (graph 0.0040); ours, num_kv_splits=4 0.0010 (graph 0.0009) |" in md
    assert "| 3.00x | 3.20x |" in md and "50%" in md  # the best peer over ours, eager and on the device clock
    reference_only = {**row, "impls": {k: v for k, v in row["impls"].items() if k != "SDPA"}}
    assert "| - | - |" in harness.results_markdown(facts, ceilings, [reference_only])  # our reference is not a peer
    # against the datasheet too: 1 MB in 1.25 us (the device clock) is 800 GB/s, 24% of an H100's 3.35 TB/s
    assert "| 24% | 0% |" in harness.results_markdown({**facts, "name": "NVIDIA H100 80GB HBM3"}, ceilings, [row])
    summary = gpu_check.summarise([row])
    assert "3.00x..3.00x" in summary[0] and summary[0].endswith("50..50%; graph replay 80..80%; host 21..21 us a call")
    assert "| 21.4; eager 48.0 |" in md
    # our variants' device times side by side, for choosing the default
    assert (
        summary[1] == "  rms_norm [rows=8] graph replay us: ours 1.2, ours, num_kv_splits=4 0.9; fastest: ours, num_kv_splits=4"
    )


def test_results_record_the_autotuners_choices(tmp_path, monkeypatch):
    """A GPU run writes what each autotuner picked per key beside the timings (under the interpreter
    nothing is autotuned, so a stand-in autotuner is registered here)."""
    import types

    import triton

    from aurora_kernels.ops import _autotune

    config = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3)
    tuner = types.SimpleNamespace(cache={(128, True, True, "torch.bfloat16"): config})
    monkeypatch.setattr(
        _autotune, "_AUTOTUNERS", {"_attention_kernel[dense]": tuner, "_unused[x]": types.SimpleNamespace(cache={})}
    )
    choices = _autotune.chosen_configs()
    assert choices == {"_attention_kernel[dense]": {"128, True, True, torch.bfloat16": str(config)}}
    harness.write_results(str(tmp_path), {"name": "Test GPU"}, {"copy_bandwidth": 3e12, "bf16_gemm": 8e14}, [])
    assert json.loads((tmp_path / "results.json").read_text())["autotune"] == choices
    assert f"- `_attention_kernel[dense]` 128, True, True, torch.bfloat16: {config}" in (tmp_path / "results.md").read_text()


def test_device_slug():
    assert harness.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_model_e2e_report_and_summary(tmp_path):
    from bench import model_e2e

    # the time per token after the second: a first step that held a capture (graph set-up) is not in it
    times = model_e2e.request_times_ms(
        {"prefill_s": 0.03, "first_step_s": 0.2, "decode_s": 0.4, "decode_steps": 101, "graph_setup_s": 0.19}
    )
    assert times == pytest.approx({"ttft_ms": 30.0, "second_token_ms": 200.0, "tpot_ms": 2.0, "request_ms": 430.0})
    assert model_e2e.request_times_ms({"prefill_s": 0.0, "first_step_s": 0.004, "decode_s": 0.4, "decode_steps": 100})[
        "tpot_ms"
    ] == pytest.approx(396 / 99)
    assert model_e2e.medians([{"tpot_ms": 3.0}, {"tpot_ms": 1.0}, {"tpot_ms": 2.0}]) == {"requests": 3, "tpot_ms": 2.0, "tpot_ms_min": 1.0,
                                                                                          "tpot_ms_max": 3.0}  # fmt: skip
    graphed = {"compressor": "mlp", "visual_tokens": 64, "batch": 1, "floor_ms_per_step": 1.0, "backend": "triton",
               "decode": "cuda_graph", "ttft_ms": 30.0, "ms_per_step": 1.6, "tokens_per_s": 625.0, "frac_floor": 0.625,
               "request_ms": 280.0, "graph_setup_ms": 45.5}  # fmt: skip
    assert "| 1.60 | 1.00 | 62% | 625.0 | 280 | 45.5 |" in model_e2e.markdown([graphed])

    assert (
        model_e2e.prompt_lengths(1) == [32]
        and model_e2e.prompt_lengths(8)[-1] == 512
        and model_e2e.prompt_lengths(1, "long") == [512]
    )
    base = {"compressor": "mlp", "visual_tokens": 64, "batch": 8, "floor_ms_per_step": 1.0}
    kernels = [("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", 900.0, 113), ("_decode_split_kernel", 150.0, 28),
               ("_fused_linear_kernel", 1000.0, 112)]  # fmt: skip
    profile = {
        "steps": 8,
        "kernels": [{"name": n, "group": model_e2e.kernel_group(n), "us_per_step": us, "launches_per_step": k} for n, us, k in kernels],
        "us_per_step_by_group": {"gemm": 900.0, "aurora": 1150.0},
        "op_calls_per_step": {"decode_attention (triton)": 28},
        "projection_weight_bytes": 2.5e9,
        "copy_bandwidth": 4e12,
        "prefill": {"device_ms": 6.25, "launches": 640, "op_calls": {"attention (triton)": 27, "attention_varlen (triton)": 30}},
    }  # fmt: skip
    assert [k["group"] for k in profile["kernels"]] == ["gemm", "aurora", "aurora"]
    # the GEMV's achieved bandwidth over the weights it streams; decode attention per call
    assert model_e2e.kernel_notes(profile) == [
        "_fused_linear_kernel: 1000.0 us a step for 2500 MB of layer weights, 2.50 TB/s, 62% of the copy bandwidth",
        "_decode_split_kernel: 5.36 us a call",
    ]
    assert model_e2e.kernel_group("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>") == "other"
    rows = [
        {**base, "backend": "reference", "decode": "eager", "ttft_ms": 50.0, "ms_per_step": 40.0, "tokens_per_s": 200.0, "frac_floor": 0.025,
         "request_ms": 5130.0},
        {**base, "backend": "triton", "decode": "eager", "ttft_ms": 20.0, "ms_per_step": 8.0, "tokens_per_s": 1000.0, "frac_floor": 0.125,
         "request_ms": 1036.0, "profile": profile},
        {**base, "compressor": "none", "visual_tokens": 256, "backend": "triton", "decode": "eager", "ttft_ms": 40.0, "ms_per_step": 9.0,
         "tokens_per_s": 880.0, "frac_floor": 0.12, "request_ms": 1183.0},
        {**base, "backend": "triton", "decode": "compile", "error": "RuntimeError: boom"},
        {**base, "backend": "triton", "decode": "cuda_graph", "skipped": "time budget of 240 s spent"},
        {**base, "compressor": "none", "visual_tokens": 256, "backend": "triton-fused", "decode": "cuda_graph", "ttft_ms": 40.0,
         "ms_per_step": 4.0, "tokens_per_s": 2000.0, "frac_floor": 0.3, "request_ms": 600.0},
        {**base, "backend": "triton-encoder-graph", "decode": "cuda_graph", "ttft_ms": 12.5, "prefill_ms_median": 11.5, "ms_per_step": 4.0,
         "tokens_per_s": 2000.0, "frac_floor": 0.25, "request_ms": 520.0},
    ]  # fmt: skip
    md = model_e2e.markdown(rows)
    assert "| mlp (64) | 8 | triton | eager | 20.0 | - | 8.00 | 1.00 | 12% | 1000.0 | 1036 | - |" in md
    assert "- B=8, triton eager: 1.14x" in md
    assert "RuntimeError: boom" in md and "time budget of 240 s spent" in md
    assert (
        "Device kernels: 2.050 ms per step (aurora 1.150 ms, gemm 0.900 ms), 253 launches; measured step: eager 8.000 ms; "
        "floor 1.000 ms."
    ) in md
    assert "- _decode_split_kernel: 5.36 us a call." in md
    assert "| _decode_split_kernel | aurora | 150.0 | 28 |" in md and "decode_attention (triton) 28." in md
    model_e2e.write(str(tmp_path), rows)
    summary = gpu_check.summarise_model(str(tmp_path))
    assert summary[0] == ("  model mlp  B= 8: eager 1000 tok/s (5.0x ref), 12% floor; compile RuntimeError: boom; "
                          "cuda_graph time budget of 240 s spent; cuda_graph triton-encoder-graph 2000 tok/s (10.0x ref), 25% floor")  # fmt: skip
    assert summary[1] == "    prefill ms (median of its repeats): triton-encoder-graph cuda_graph 11.5"  # the rows that have one
    assert "| mlp (64) | 8 | triton-encoder-graph | cuda_graph | 12.5 | 11.5 | 4.00 |" in md
    assert summary[2].endswith("; cuda_graph missing; cuda_graph triton-fused 2000 tok/s, 30% floor")  # only where recorded
    assert (
        "  decode step B=8 (mlp, triton): device kernels 2.050 ms (aurora 1.150, gemm 0.900) in 253 launches vs floor 1.000 ms"
        in summary
    )
    assert (
        "    _fused_linear_kernel: 1000.0 us a step for 2500 MB of layer weights, 2.50 TB/s, 62% of the copy bandwidth" in summary
    )
    # the prefill's device time and launches beside the measured time to first token (host-bound when far apart)
    prefill = ("Prefill of the same requests: device kernels 6.250 ms in 640 launches, 57 calls of this package's ops; "
               "measured time to first token 20.0 ms.")  # fmt: skip
    assert prefill in md and f"    {prefill}" in summary


def test_decode_floor_counts_weights_and_cache():
    from aurora_kernels.model import AuroraEdgeV, preset
    from aurora_kernels.model.cost import kv_cache_bytes, part_parameters
    from bench import model_e2e

    with torch.device("meta"):
        model = AuroraEdgeV(preset("aurora-edge-v-2b"), backend="reference")
    floor = model_e2e.decode_floor_s(model, [32], copy_bandwidth=1e12)
    expected = (part_parameters(model.config)["llm"] * 2 + kv_cache_bytes(model.config.llm, 64 + 32 + 64)) / 1e12
    assert floor == expected


def test_plots_from_a_results_dir(tmp_path):
    import json

    from bench import plots

    ours = {"ms": 0.01, "frac_floor": 0.8}
    rows = [{"op": op, "shape": f"n={n}", "impls": {"ours": dict(ours, ms=0.01 * n, graph_ms=0.004 * n), "eager": {"ms": 0.05 * n},
                                                       "flash-attn": {"missing": "not importable"}}}
            for op in ("rms_norm", "attention") for n in (1, 2, 4)]  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps({"device": {}, "ceilings": {}, "rows": rows}))
    model = [{"compressor": "mlp", "batch": 1, "backend": "triton", "decode": "cuda_graph", "tokens_per_s": 90.0},
             {"compressor": "none", "batch": 1, "backend": "reference", "decode": "eager", "skipped": "budget"}]  # fmt: skip
    (tmp_path / "model-e2e.json").write_text(json.dumps(model))
    written = plots.plot_results_dir(str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == ["attention.png", "model-e2e.png", "rms_norm.png", "roofline.png"]
    assert all(os.path.getsize(p) > 5000 for p in written)
    (tmp_path / "results.json").unlink()  # a model-only run (--phases model)
    assert [os.path.basename(p) for p in plots.plot_results_dir(str(tmp_path))] == ["model-e2e.png"]


def test_attention_peers_compute_the_same_attention(device):
    """The SDPA peers (with their input preparation) answer what the reference does: a peer that
    computed something else would make every speed-up meaningless."""
    from aurora_kernels.ops import reference
    from aurora_kernels.testing import assert_parity, make_generator
    from bench import bench_attention, bench_decode_attention

    harness.load_cases()
    args, kwargs = harness.OPS["attention_varlen"].small_inputs(torch.float32, device, make_generator(0, device))
    expected = reference.attention_varlen(*args, **kwargs)
    per_request = bench_attention.VARLEN_PEERS["SDPA per request"]()
    assert_parity(per_request.fn(*args, **kwargs), expected.double(), torch.float32, "SDPA per request")
    padded = bench_attention.VARLEN_PEERS["SDPA padded batch"]()
    [(padded_args, padded_kwargs)] = harness.prepared_inputs(padded, [(args, kwargs)])
    out = padded.fn(*padded_args, **padded_kwargs)
    bounds = args[3].tolist()
    unpadded = torch.cat([out[b, : bounds[b + 1] - bounds[b]] for b in range(len(bounds) - 1)])
    assert_parity(unpadded, expected.double(), torch.float32, "SDPA padded batch")

    lengths = [0, 3, 40]
    q, k_cache, v_cache, seqlens = (
        bench_decode_attention._inputs(lengths, False, torch.float32, device, make_generator(1, device))
    )[0]
    sdpa = bench_decode_attention.CONTIGUOUS_PEERS["SDPA (GQA, masked)"]()
    [(sdpa_args, sdpa_kwargs)] = harness.prepared_inputs(sdpa, [((q, k_cache, v_cache, seqlens), {})])
    expected = reference.decode_attention(q, k_cache, v_cache, seqlens)
    got = sdpa.fn(*sdpa_args, **sdpa_kwargs)
    # SDPA gives NaN for a sequence with no key (all masked); the reference gives 0: compare the rest
    assert_parity(got[1:], expected[1:].double(), torch.float32, "SDPA over the cache")

    # the model's call (append + rotary) and its unfused peer: the same attention, the same cache
    args, kwargs = bench_decode_attention._model_step_inputs([5, 40], device, make_generator(2, device))
    q, k_cache, v_cache, seqlens, k, v = args
    expected = reference.decode_attention(q, k_cache.clone(), v_cache.clone(), seqlens, k, v, **kwargs)
    unfused = bench_decode_attention.PEERS_OF_THE_MODELS_CALL["ours unfused: apply_rotary + decode_attention"]()
    [(peer_args, peer_kwargs)] = harness.prepared_inputs(unfused, [(args, kwargs)])
    assert_parity(unfused.fn(*peer_args, **peer_kwargs), expected.double(), torch.bfloat16, "apply_rotary + decode_attention")


def test_every_peer_adapter_runs_on_its_smallest_case(device):
    """Each op's smallest benchmark case through every peer installed here (but torch.compile, which
    would compile for minutes): what the GPU run calls, minus the timer. A peer whose output has the
    reference's shape must also give the reference's answer (on the GPU run, liger's and FlashInfer's
    too where they are installed)."""
    from aurora_kernels.testing import assert_parity
    from bench.bench_decode_attention import SPLIT_SWEEP
    from bench.peers import SDPA_BACKENDS

    # the split sweep is our kernel at other split counts (the decode attention tests cover them):
    # its first two, one split and split + merge, stand for the rest (each more costs seconds interpreted)
    swept_beyond = {f"ours, num_kv_splits={n}" for n in SPLIT_SWEEP[2:]}
    FORCED_SDPA = {*SDPA_BACKENDS, *(f"SDPA padded batch, {name[5:]}" for name in SDPA_BACKENDS)}
    cases = harness.load_cases()
    for op in harness.OPS:
        case = min((c for c in cases if c.op == op), key=lambda c: c.bytes)
        args, kwargs = case.build(device, torch.Generator(device=device).manual_seed(0))
        expected = harness.OPS[op].reference(*args, **kwargs)
        expected = expected[0] if isinstance(expected, tuple) else expected
        for name, load in case.peers.items():
            if name.startswith("torch.compile") or name in swept_beyond:
                continue
            peer = load()
            if peer.fn is None:
                continue
            [(peer_args, peer_kwargs)] = harness.prepared_inputs(peer, [(args, kwargs)])
            try:
                out = peer.fn(*peer_args, **peer_kwargs)
            except RuntimeError:  # a forced SDPA backend with no kernel for this device or case: its row says so
                if name not in FORCED_SDPA:
                    raise
                continue
            out = out[0] if isinstance(out, (tuple, list)) else out
            if out.shape == expected.shape and not out.isnan().any():
                assert_parity(out, expected.double(), case.dtype, f"{op} [{case.name}] peer {name}")


def test_the_strongest_peers_are_listed_for_every_case():
    """Each dense attention case races SDPA with each backend forced, each varlen case the padded
    batch with each backend forced, token_mlp_compress a bf16 cuBLAS chain and its compile, each
    fused projection the torch chain (cuBLAS) and our unfused pair."""
    from bench.peers import SDPA_BACKENDS

    for case in harness.load_cases():
        peers = set(case.peers)
        if case.op == "attention":
            assert {"SDPA", *SDPA_BACKENDS} <= peers, case.name
        elif case.op == "attention_varlen":
            assert {f"SDPA padded batch, {name[5:]}" for name in SDPA_BACKENDS} <= peers, case.name
        elif case.op == "token_mlp_compress":
            assert {"cuBLAS chain (bf16)", "torch.compile (bf16 chain)"} <= peers, case.name
        elif case.op in ("rms_norm_linear", "silu_and_mul_linear"):
            assert "torch ops" in peers and any(p.startswith("ours unfused") for p in peers), case.name
        elif case.op == "linear":
            assert "F.linear (cuBLAS)" in peers, case.name


def test_model_e2e_runs_on_the_tiny_preset(device):
    """The end-to-end benchmark's own code path (build, generate with stats, floor, rows, profile,
    report) on the tiny preset: on the CPU the kernels run interpreted and the CUDA-graph run
    records its error instead of stopping the others; the compiled run's warm-up leaves nothing to
    compile inside its timing (a recompile there would be an error in its row)."""
    from aurora_kernels.model import preset
    from bench import model_e2e

    # ("triton-fused", "cuda_graph") goes through the same code as ("triton", "cuda_graph"): warm_model's
    # test runs it, and the model tests check the fused projections themselves
    runs = (("triton", "cuda_graph"), ("triton", "eager"), ("reference", "eager"), ("triton", "compile"))
    # the compiled step runs after every batch's other runs: a spent budget takes it, not B=32
    order = model_e2e.schedule((1, 8), runs)
    assert order[:3] == [(1, "ragged", "mlp", run) for run in runs[:3]]
    assert order[-4:] == [(b, "ragged", c, ("triton", "compile")) for b in (1, 8) for c in ("mlp", "none")]
    # the fused projections cover one-sequence steps: a batch's fused run would repeat "triton"; they
    # also take the long prompt
    fused = ("triton-fused", "cuda_graph")
    assert model_e2e.schedule((1, 8), (fused,)) == [(1, p, c, fused) for p in ("ragged", "long") for c in ("mlp", "none")]
    # and the batched fused run covers batched steps alone
    batched = ("triton-fused-batched", "cuda_graph")
    assert model_e2e.schedule((1, 8, 32), (batched,)) == [(b, "ragged", c, batched) for b in (8, 32) for c in ("mlp", "none")]
    checkpoints = []
    # compressor "mlp" alone (the profiled one), to halve the time: the swap to "none" runs in
    # test_warm_model_compiles_the_decode_step, the mlp-vs-none lines in test_model_e2e_report_and_summary
    rows = model_e2e.run(device, {"copy_bandwidth": 1e11, "bf16_gemm": 1e13}, preset_name="tiny", batches=(1,), runs=runs,
                         compressors=("mlp",), new_tokens=4, dtype=torch.float32,
                         checkpoint=lambda rows_so_far: checkpoints.append(len(rows_so_far)), prefill_repeats=1, request_repeats=2)  # fmt: skip
    # saved after every timed configuration, so a run stopped at its limit keeps what it measured
    assert checkpoints == sorted(checkpoints) and checkpoints[-1] == len(rows)
    assert len(checkpoints) == sum("error" not in r for r in rows)
    assert [(r["compressor"], r["backend"], r["decode"]) for r in rows] == [("mlp", b, d) for b, d in runs]
    for r in rows:
        if r["decode"] == "cuda_graph" and device.type == "cpu":
            assert r["error"] == "ValueError: decode: 'cuda_graph' needs the model on a CUDA device, got cpu"
        else:
            assert "error" not in r and r["ms_per_step"] > 0 and r["request_ms"] > r["ttft_ms"] > 0 and 0 < r["frac_floor"], r
            # the request's times under the keys the runbook reads: medians of its requests, min and max, floors
            assert r["requests"] == (2 if r["backend"] == "triton" else 1), r
            for key in model_e2e.REQUEST_KEYS:
                assert r[f"{key}_ms_min"] <= r[f"{key}_ms"] <= r[f"{key}_ms_max"] and r[f"{key}_floor_ms"] > 0, (key, r)
    assert {r["visual_tokens"] for r in rows} == {16}  # the tiny preset's 64 patches, compressed 4x
    assert "| mlp (16) | 1 | triton | eager |" in model_e2e.markdown(rows)
    assert "| mlp (16) | 1 | triton | eager | 2 | " in model_e2e.markdown(rows)  # the requests' table
    assert all(r["prefill_ms_median"] > 0 for r in rows if "ms_per_step" in r and r["backend"] == "triton")
    assert "prefill_ms_median" not in rows[runs.index(("reference", "eager"))]
    # the decode step's profile: this package's op calls per step (host side) and, on a GPU, kernel times
    [profiled] = [r for r in rows if "profile" in r]
    assert (profiled["compressor"], profiled["backend"], profiled["decode"]) == ("mlp", "triton", "eager")
    layers = preset("tiny").llm.num_layers
    assert profiled["profile"]["op_calls_per_step"] == {
        "decode_attention (triton)": layers,  # with RoPE inside: no apply_rotary in a decode step
        "rms_norm (triton)": 2 * layers + 1, "silu_and_mul (triton)": layers,
    }  # fmt: skip
    # and the prefill of the same requests: every layer's ops, ViT and LLM, in one call each
    prefill = profiled["profile"]["prefill"]
    vision_layers = preset("tiny").vision.num_layers
    # and the fusion's two: its cross-attention to the image, then its decoder layer's self-attention
    assert prefill["op_calls"]["attention_varlen (triton)"] == layers + 2
    assert prefill["op_calls"]["layer_norm (triton)"] == 2 * vision_layers + 1
    if device.type == "cuda":
        assert profiled["profile"]["us_per_step_by_group"]["aurora"] > 0
        assert "_decode_split_kernel" in {k["name"] for k in profiled["profile"]["kernels"]}
        assert prefill["device_ms"] > 0 and prefill["launches"] > 0
    else:
        assert prefill["device_ms"] == prefill["launches"] == 0
    assert "### Where a decode step's time goes: compressor mlp, B=1" in model_e2e.markdown(rows)
    assert f"measured time to first token {profiled['ttft_ms']:.1f} ms" in model_e2e.markdown(rows)


def test_time_case_rows_with_a_stand_in_timer(device):
    """time_case's row building on any device: a stand-in timer calls each implementation on its
    rotating inputs and reports 0.5 ms; a missing peer and a failing one are recorded, not fatal."""
    import aurora_kernels as ak
    from aurora_kernels.ops import reference
    from aurora_kernels.testing import randn

    case = harness.Case(
        op="rms_norm", name="rows=64 N=256", dtype=torch.float32,
        build=lambda dev, gen: ((randn((64, 256), torch.float32, dev, gen), torch.ones(256, device=dev)), {}),
        bytes=2 * 64 * 256 * 4, flops=4 * 64 * 256, peers={},
    )  # fmt: skip
    calls = []

    def timer(fn):
        for _ in range(3):
            calls.append(fn())
        return 0.5

    impls = {"ours": harness.Peer(ak.rms_norm), "eager": harness.Peer(reference.rms_norm),
             "liger": harness.Peer(None, "liger_kernel not importable"), "broken": harness.Peer(lambda *a: 1 / 0)}  # fmt: skip
    graph_timed = []

    def graph_timer(fn):  # every implementation that ran, but the eager reference
        graph_timed.append(fn())
        return 0.25

    impls["ours, no graph"] = harness.Peer(ak.rms_norm)
    failing_graph = iter([0.25, RuntimeError("operation not permitted when stream is capturing")])

    def flaky_graph_timer(fn):
        result = next(failing_graph)
        if isinstance(result, Exception):
            raise result
        return graph_timer(fn)

    host_costs = iter([12.5, 30.0, RuntimeError("host timer broke")])  # ours, eager, ours no graph

    def host_timer(fn):  # every implementation that ran
        fn()
        cost = next(host_costs)
        if isinstance(cost, Exception):
            raise cost
        return cost

    row = harness.time_case(case, impls, {"copy_bandwidth": 1e12, "bf16_gemm": 1e15}, device, timer=timer,
                            graph_timer=flaky_graph_timer, host_timer=host_timer, host_timed_below_ms=1.0)  # fmt: skip
    assert len(calls) == 9 and all(c.shape == (64, 256) for c in calls)
    assert len(graph_timed) == 1 and graph_timed[0].shape == (64, 256)
    ours = row["impls"]["ours"]
    assert ours["ms"] == 0.5 and abs(ours["gbps"] - case.bytes / 5e-4 / 1e9) < 1e-9
    assert ours["graph_ms"] == 0.25 and abs(ours["graph_frac_floor"] - 2 * ours["frac_floor"]) < 1e-12
    assert row["impls"]["ours, no graph"]["graph_error"] == "RuntimeError: operation not permitted when stream is capturing"
    assert "graph_ms" not in row["impls"]["eager"]
    assert ours["host_us"] == 12.5 and row["impls"]["eager"]["host_us"] == 30.0
    assert row["impls"]["ours, no graph"]["host_error"] == "RuntimeError: host timer broke"
    table = harness.results_markdown({"name": "Stand-in GPU"}, {"copy_bandwidth": 1e12, "bf16_gemm": 1e15}, [row])
    assert f"| 0.5000 | 0.2500 ({100 * ours['graph_frac_floor']:.0f}% floor) | 0.5000 |" in table
    assert table.rstrip().endswith("| 12.5; eager 30.0 |")  # ours; the peer that costs the host least
    # a call of 0.5 ms is device-bound: its host cost is not timed by default (101 calls each)
    slow = harness.time_case(case, {"ours": harness.Peer(ak.rms_norm)}, {"copy_bandwidth": 1e12, "bf16_gemm": 1e15}, device,
                             timer=timer, host_timer=lambda fn: pytest.fail("host timed"))  # fmt: skip
    assert "host_us" not in slow["impls"]["ours"]
    assert abs(ours["frac_copy_bw"] - case.bytes / 5e-4 / 1e12) < 1e-12 and row["bound"] == "memory"
    assert row["impls"]["liger"] == {"missing": "liger_kernel not importable"}
    assert row["impls"]["broken"] == {"error": "ZeroDivisionError: division by zero"}


def test_cases_interleave_over_ops_and_skipped_rows_are_reported():
    cases = harness.interleave_ops(harness.load_cases())
    ops = list(harness.OPS)
    assert [c.op for c in cases[: len(ops)]] == sorted(ops, key=[c.op for c in cases].index)
    assert len({c.op for c in cases[: len(ops)]}) == len(ops)  # every op's first case comes first
    row = harness.skipped_row(cases[-1], "time budget of 150 s spent")
    md = harness.results_markdown({"name": "Test GPU"}, {"copy_bandwidth": 3e12, "bf16_gemm": 8e14}, [row])
    assert f"| {cases[-1].op} | {cases[-1].name} | bfloat16 | skipped: time budget of 150 s spent |" in md


def test_gpu_check_narrows_to_known_phases_ops_and_model_runs(capsys):
    """--phases, --ops, --model-runs, --model-batches and --model-compressors name what a focused device
    call times; a typo is a usage error that lists the known values (or says what a batch size is),
    before anything runs. Known names pass through once each, in the order of the known list."""
    from bench import model_e2e

    for argv, message in ((["--phases", "tests,plots"], "--phases: expected phases among tests,ops,sweep,pytest-benchmark,transformers,model, got 'tests,plots' ('plots' unknown)"),
                          (["--ops", "linear,attenton"], "--ops: expected ops among apply_rotary,attention,"),
                          (["--model-runs", "triton:graph"], "--model-runs: expected backend:decode pairs among triton:cuda_graph,"),
                          (["--model-batches", "4,x"], "--model-batches: expected comma-separated ints >= 1, got '4,x'"),
                          (["--model-batches", "0"], "--model-batches: expected comma-separated ints >= 1, got '0'"),
                          (["--model-compressors", "mlp,pol"], "--model-compressors: expected compressors among mlp,none, got 'mlp,pol' ('pol' unknown)"),
                          (["--model-run", "triton:cuda_graph"], "unrecognized arguments: --model-run")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert gpu_check._model_runs("triton-fused-batched:cuda_graph,triton:cuda_graph") == (
        ("triton", "cuda_graph"), ("triton-fused-batched", "cuda_graph"))  # fmt: skip
    assert all(run in model_e2e.RUNS for run in gpu_check._model_runs("triton:cuda_graph"))


def _smallest_case_index(op: str) -> int:
    cases = harness.load_cases()
    return min((i for i, c in enumerate(cases) if c.op == op), key=lambda i: cases[i].bytes)


def test_warm_up_fills_the_compile_caches_of_the_timed_run(device, tmp_path, monkeypatch):
    """bench.warm compiles a case in another process; the timed run's torch.compile peer then finds
    its graph in Inductor's on-disk cache (a fresh one here) instead of compiling it again."""
    from torch._dynamo.utils import counters

    from bench import warm

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # the spawned worker inherits it
    index = _smallest_case_index("rms_norm")
    finished = warm.warm_up([index], device.type, workers=1, deadline_s=240)
    assert [task for task, _, _ in finished] == [index]
    # ours and the torch.compile peer compiled (a carried liger's own failure is the peer test's business)
    assert not [f for f in finished[0][2] if f.startswith(("ours:", "torch.compile:"))], finished
    case = harness.load_cases()[index]
    args, kwargs = case.build(device, torch.Generator(device=device).manual_seed(0))
    torch._dynamo.reset()
    counters.clear()
    harness.implementations(case)["torch.compile"].fn(*args, **kwargs)
    assert counters["inductor"]["fxgraph_cache_hit"] >= 1 and counters["inductor"]["fxgraph_cache_miss"] == 0


def test_warm_up_stops_at_its_deadline_with_at_most_max_workers():
    from bench import warm

    start = time.time()
    summary = warm.run_and_report([warm.MODEL_TASK, *range(20)], "cpu", workers=100, deadline_s=0.5, memory_fraction=0.5)
    assert summary.startswith("warm-up: 0 of 21 tasks in ") and summary.endswith(
        f"s on {warm.MAX_WORKERS} workers, 21 not finished"
    )
    assert time.time() - start < 60  # the workers were stopped, not waited for


def test_warm_model_compiles_the_decode_step(device):
    """The model task: the end-to-end runs that compile, untimed, on the tiny preset."""
    from bench import warm

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    failures = warm.warm_model(device, preset_name="tiny", batches=(1,), new_tokens=3, dtype=torch.float32)
    if device.type == "cpu":
        error = "ValueError: decode: 'cuda_graph' needs the model on a CUDA device, got cpu"
        one_sequence = [run for run in warm.MODEL_RUNS if run[1] == "cuda_graph" and run not in warm.model_e2e.BATCHED_RUNS]
        assert failures == [f"{c} B=1 {b} cuda_graph: {error}" for c in ("mlp", "none") for b, _ in one_sequence] + [
            f"{c} B=1 (512-token prompt) triton-fused cuda_graph: {error}" for c in ("mlp", "none")]  # fmt: skip
    else:
        assert failures == []
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs


def test_gpu_check_warm_up_glue(device, tmp_path):
    """gpu-check's background warm-up: started in its own process group, logged, waited for, and
    summarised. On a CPU machine every task fails at once (no CUDA device), which the summary says."""
    if device.type == "cuda":
        pytest.skip("on a GPU machine `make gpu-check` runs this glue itself, on the real cases")
    proc = gpu_check.start_warm_up(str(tmp_path), ["ops"], beside_tests=True)
    summary = gpu_check.finish_warm_up(proc, str(tmp_path), time.time())
    cases = len(harness.load_cases())
    assert summary.startswith(f"warm-up: {cases} of {cases} tasks in ") and summary.endswith(f", {cases} with failures"), summary
    assert proc.returncode == 0
    log = (tmp_path / "warm-up.log").read_text()
    assert log.count("; failed: ") == cases and "model end to end" not in log


def test_gpu_check_summarises_a_finished_and_a_stopped_test_run():
    """The test phase's summary: pytest's closing line, or for a run stopped at its limit, what its
    verbose lines had reported (here from a real verbose run under xdist, its closing line cut off)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "pytest", "-v", "-rfE", "-p", "no:cacheprovider", "-n", "2",
           "tests/test_bench_harness.py::test_device_slug", "tests/test_bench_harness.py::test_gpu_check_narrows_to_known_phases_ops_and_model_runs"]  # fmt: skip
    output = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert gpu_check.summarise_tests(output).startswith("2 passed in ")
    cut = output[: output.rindex("===")]
    failing = cut + "[gw1] [ 75%] FAILED tests/ops/test_rms_norm.py::test_parity[bf16-64] \n"
    assert gpu_check.summarise_tests(failing, 270) == (
        "stopped after 270 s: 2 passed, 1 failed so far; failed: tests/ops/test_rms_norm.py::test_parity[bf16-64]"
    )
    assert gpu_check.summarise_tests("", 270) == "stopped after 270 s: no test finished so far"


def test_gpu_check_archive_packs_the_results_dir(tmp_path):
    import tarfile

    results = tmp_path / "h100"
    results.mkdir()
    (results / "results.json").write_text("{}")
    (results / "summary.txt").write_text("gpu-check summary\n")
    for path in (tmp_path / "gpu-check.tar.gz", results / "gpu-check.tar.gz"):  # beside it, or inside it
        for _ in range(2):  # rewritten after each phase
            gpu_check.archive(str(results), str(path))
        with tarfile.open(path) as tar:
            assert sorted(tar.getnames()) == ["h100", "h100/results.json", "h100/summary.txt"]
        assert not os.path.exists(str(path) + ".partial")


def test_gpu_check_main_runs_its_phases_and_packs_the_record(device, tmp_path, monkeypatch, capsys):
    """gpu-check's own flow on a CPU, with the device parts stood in for (a CUDA device that says it is
    there, fabricated timings): the warm-up started and finished, the op budget worked out from the
    run's budget, results, plots and summary.txt written, all of it packed into the archive."""
    import tarfile

    if device.type == "cuda":
        pytest.skip("on a GPU machine `make gpu-check` runs this flow itself (here its warm-up would warm every case)")

    results, archive = tmp_path / "results", tmp_path / "gpu-check.tar.gz"
    budgets = []

    def run_gpu_ops(cases, device, facts, ceilings, results_dir, budget_s):
        budgets.append(budget_s)
        assert {c.op for c in cases} == {"rms_norm", "linear"}  # --ops
        case = min((c for c in cases if c.op == "rms_norm"), key=lambda c: c.bytes)
        impls = {"ours": harness.Peer(lambda *a, **k: None), "peer": harness.Peer(lambda *a, **k: None)}
        timings = iter([0.01, 0.02])
        rows = [harness.time_case(case, impls, ceilings, device, timer=lambda fn: next(timings))]
        harness.write_results(results_dir, facts, ceilings, rows)
        return rows

    def run_gpu_model(device, ceilings, results_dir, budget_s, after_each=None, runs=None, batches=None, compressors=None):
        budgets.append(budget_s)
        assert runs == (("triton", "cuda_graph"),)  # --model-runs
        assert batches == (4, 8)  # --model-batches
        assert compressors == ("mlp",)  # --model-compressors
        raise RuntimeError("CUDA out of memory")  # building the model failed: the rest of the record stands

    def sweep(rows_list, budget_s):
        budgets.append(budget_s)
        row = {"projection": "o_proj", "K": 1536, "N": 1536, "rows": 1, "weight_gb_per_s": 1000.0}
        return [{**row, "impl": "gemv (8, 512, 4, 1)", "role": "candidate", "us": 3.0},
                {**row, "impl": "autotuned", "role": "autotuned", "us": 3.5},
                {**row, "impl": "cuBLAS", "role": "baseline", "us": 6.0}]  # fmt: skip

    ceilings = {"copy_bandwidth": 3e12, "bf16_gemm": 8e14}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run, "gpu_context", lambda d: (torch.device("cpu"), {"name": "Stand-in GPU"}, ceilings, d))
    monkeypatch.setattr(run, "run_gpu_ops", run_gpu_ops)
    monkeypatch.setattr(run, "run_gpu_model", run_gpu_model)
    monkeypatch.setattr(sweep_fused_linear, "sweep", sweep)
    monkeypatch.setattr(gpu_check, "run_pytest_benchmark", lambda d: "  pytest-benchmark: 26 benchmarks (exit 0)")
    monkeypatch.setattr(gpu_check, "run_transformers", lambda d: ["  transformers Qwen2 (stand-in):", "    B=1: aurora"])
    code = gpu_check.main(
        ["--phases", "ops,sweep,pytest-benchmark,transformers,model", "--results-dir", str(results), "--archive", str(archive),
         "--ops", "rms_norm,linear", "--model-runs", "triton:cuda_graph", "--model-batches", "4,8", "--model-compressors", "mlp"]
    )  # fmt: skip
    assert code == 0
    # the ops leave the sweep, pytest-benchmark and the model their shares; the model then gets what was left
    ops_budget, sweep_budget, model_budget = budgets
    reserved = gpu_check.MIN_MODEL_BUDGET_S + sweep_budget + gpu_check.PYTEST_BENCHMARK_BUDGET_S + gpu_check.TRANSFORMERS_BUDGET_S
    assert gpu_check.MIN_OPS_BUDGET_S <= ops_budget <= gpu_check.RUN_BUDGET_S - reserved
    assert sweep_budget == gpu_check.SWEEP_BUDGET_S
    assert gpu_check.RUN_BUDGET_S - 60 <= model_budget <= gpu_check.RUN_BUDGET_S
    summary = (results / "summary.txt").read_text()
    assert "  tests on CUDA: not run (--phases) (exit 0)" in summary and "  compile warm-up: " in summary
    assert "  rms_norm             1 cases; vs best peer 2.00x..2.00x" in summary
    assert ("    o_proj M=1: best tile gemv (8, 512, 4, 1) 3.0 us (1000 GB/s), autotuned 3.5 us, cuBLAS 6.0 us\n"
            in summary)  # fmt: skip
    assert "  model end to end failed: RuntimeError: CUDA out of memory" in summary
    assert "  pytest-benchmark: 26 benchmarks (exit 0)" in summary
    assert "  transformers Qwen2 (stand-in):\n    B=1: aurora\n" in summary
    assert summary in capsys.readouterr().out
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    expected = ("results.json", "results.md", "rms_norm.png", "summary.txt", "warm-up.log", "fused-linear-sweep.json")
    assert {f"results/{n}" for n in expected} <= names


def test_gpu_check_pytest_benchmark_phase(tmp_path, monkeypatch):
    """The phase runs tests/benchmarks on CUDA at each op's ends, and says what it got: the JSON's
    count, or that it ran out of its budget."""
    seen = []

    def finished(cmd, env, stdout, stderr, timeout):
        seen.append((cmd, env))
        out = next(a.split("=", 1)[1] for a in cmd if a.startswith("--benchmark-json="))
        with open(out, "w") as f:
            json.dump({"benchmarks": [{}, {}, {}]}, f)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(gpu_check.subprocess, "run", finished)
    assert gpu_check.run_pytest_benchmark(str(tmp_path)) == "  pytest-benchmark: 3 benchmarks (exit 0) in pytest-benchmark.json"
    cmd, env = seen[0]
    assert "tests/benchmarks" in cmd and env["AURORA_TEST_DEVICE"] == "cuda" and env["AURORA_BENCH_CASES"] == "ends"

    def too_long(cmd, env, stdout, stderr, timeout):
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(gpu_check.subprocess, "run", too_long)
    (tmp_path / "pytest-benchmark.json").unlink()
    assert "stopped at its 45 s budget (no JSON)" in gpu_check.run_pytest_benchmark(str(tmp_path))


def test_transformers_e2e_times_each_attention_and_the_patched_model(device):
    """bench.transformers_e2e at tiny widths: a row per batch and implementation; SDPA and the patched
    model timed, with the patched logits' error against SDPA's; flash-attn's row missing where it
    is not installed; rows past the budget skipped, not lost."""
    import importlib.util

    from aurora_kernels.model.config import LLMConfig
    from bench import transformers_e2e

    llm = LLMConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                    intermediate_size=128, max_position_embeddings=256)  # fmt: skip
    rows = transformers_e2e.run(device, torch.float32, llm, batches=(1, 3), new_tokens=2, prompt_tokens=(3, 8), repeats=1)
    assert [(r["batch"], r["implementation"]) for r in rows] == [(b, i) for b in (1, 3) for i in transformers_e2e.IMPLEMENTATIONS]
    for r in rows:
        if r["implementation"] == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            assert r["missing"] == "flash-attn is not installed"
            continue
        assert r["prefill_ms"] > 0 and r["generate_ms"] > 0 and r["new_tokens_per_s"] > 0, r
        assert r["logits_rel_error"] <= (0.0 if r["implementation"] == "sdpa" else 1e-5), r
    assert rows[3]["prompt_tokens"] > 8  # B=3: a longest prompt of 8 and two more
    lines = transformers_e2e.summary_lines(rows)
    assert len(lines) == 2 and lines[1].startswith("B=3 (") and "x SDPA)" in lines[1]
    skipped = transformers_e2e.run(device, torch.float32, llm, batches=(2,), new_tokens=1, prompt_tokens=(3, 8), budget_s=-1)
    assert all(r.get("skipped") == "the phase's time budget ran out" or "missing" in r for r in skipped)


def test_fused_linear_sweep_times_every_tile_and_summarises(device, monkeypatch):
    """bench.sweep_fused_linear's own code on small projections, the timer stood in for: a row per tile,
    the autotuned op and the baseline, each of which runs; a spent budget skips a projection."""
    monkeypatch.setattr(
        sweep_fused_linear,
        "MODEL_PROJECTIONS",
        (("qkv", "rms_norm", "none", 64, 24, True, True), ("o_proj", "none", "none", 64, 16, False, False),
         ("gate_up -> silu_and_mul", "rms_norm", "silu_and_mul", 64, 24, True, False)),
    )  # fmt: skip
    monkeypatch.setattr(sweep_fused_linear, "cold_copies", lambda weight: [weight, weight.clone()])
    calls = []

    def graph_median_ms(fn, weights):
        for w in weights:
            fn(w)  # each implementation runs, on each weight copy
        calls.append(len(weights))
        return 0.001 * len(calls)

    monkeypatch.setattr(sweep_fused_linear, "graph_median_ms", graph_median_ms)
    results = sweep_fused_linear.sweep([1], dtype=torch.float32, device=device.type)
    tiles, unrolled = len(fused_linear._GPU_CONFIGS["gemv"]), sweep_fused_linear.UNROLLED_TILES
    per_projection = tiles + 2 + unrolled
    assert len(results) == 3 * per_projection and calls == [2] * len(results)
    assert [r["role"] for r in results[:per_projection]] == ["candidate"] * tiles + ["autotuned", "baseline"] + [
        "candidate"
    ] * unrolled
    # the fastest tiles (here the first ones: the stand-in timer counts up) again, unrolled
    configs = fused_linear._GPU_CONFIGS["gemv"]
    assert [r["impl"] for r in results[tiles + 2 : per_projection]] == [f"gemv {c} unroll 2" for c in configs[:unrolled]]
    lines = sweep_fused_linear.summary_lines(results)
    assert (
        lines[0] == f"qkv M=1: best tile gemv {configs[0]} 1.0 us ({results[0]['weight_gb_per_s']:.0f} GB/s), "
        f"autotuned {tiles + 1:.1f} us, unfused (ours + cuBLAS) {tiles + 2:.1f} us"
    )
    assert lines[1].startswith("o_proj M=1: ") and lines[1].endswith(f", cuBLAS {per_projection + tiles + 2:.1f} us")
    assert lines[2].endswith(f", unfused (ours + cuBLAS + ours) {2 * per_projection + tiles + 2:.1f} us")
    skipped = sweep_fused_linear.sweep([1], dtype=torch.float32, device=device.type, budget_s=-1.0)
    assert sweep_fused_linear.summary_lines(skipped) == [
        "qkv M=1: time budget of -1 s spent",
        "o_proj M=1: time budget of -1 s spent",
        "gate_up -> silu_and_mul M=1: time budget of -1 s spent",
    ]


def test_a_case_whose_inputs_cannot_be_built_is_a_row_not_a_crash(tmp_path):
    def build(device, gen):
        raise RuntimeError("CUDA out of memory")

    harness.load_cases()  # registers the ops (alone on a test worker, nothing else has)
    case = harness.Case(op="rms_norm", name="huge", dtype=torch.bfloat16, build=build, bytes=1, flops=1)
    rows = run.run_gpu_ops([case], torch.device("cpu"), {"name": "Stand-in GPU"}, {"copy_bandwidth": 3e12, "bf16_gemm": 8e14},
                           str(tmp_path))  # fmt: skip
    assert rows == [harness.skipped_row(case, "error: RuntimeError: CUDA out of memory")]
    assert "skipped: error: RuntimeError: CUDA out of memory" in (tmp_path / "results.md").read_text()


def test_results_name_the_commit_of_the_timed_tree(monkeypatch):
    """A device machine's copy of the tree may carry stale git metadata: AURORA_COMMIT names the
    commit outright; otherwise HEAD, marked -dirty when tracked files differ from it."""
    monkeypatch.setenv("AURORA_COMMIT", "2521b7e")
    assert harness.source_commit() == "2521b7e"
    monkeypatch.delenv("AURORA_COMMIT")
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    expected = head.stdout.strip() + ("-dirty" if dirty else "") if head.returncode == 0 else "unknown"  # no git: a tarball
    assert harness.source_commit() == expected


def test_vit_images_per_s_and_the_requests_summary(device, tmp_path):
    """The ViT alone (eager on a CPU, graph replays on a GPU) and the summary lines the next GPU run
    is read by: the default run's request times against their floors, and the ViT's images/s."""
    from bench import model_e2e

    vit = model_e2e.vit_images_per_s(device, torch.float32, batches=(1, 2), repeats=1, preset_name="tiny")
    assert [v["batch"] for v in vit] == [1, 2] and all(v["images_per_s"] > 0 and v["ms"] > 0 for v in vit)
    assert all(v["graph_replay"] == (device.type == "cuda") for v in vit)
    times = {f"{k}_ms": 2.0 for k in model_e2e.REQUEST_KEYS} | {f"{k}_floor_ms": 1.0 for k in model_e2e.REQUEST_KEYS}
    row = {"compressor": "mlp", "visual_tokens": 64, "batch": 1, "prompt": "long", "backend": "triton-fused", "decode": "cuda_graph",
           "floor_ms_per_step": 1.0, "ttft_ms": 2.0, "ms_per_step": 2.0, "tokens_per_s": 500.0, "frac_floor": 0.5, "request_ms": 2.0,
           "requests": 5, **times, **{f"{k}_ms_{end}": 2.0 for k in model_e2e.REQUEST_KEYS for end in ("min", "max")}}  # fmt: skip
    model_e2e.write(str(tmp_path), [row])
    model_e2e.write_vit(str(tmp_path), vit)
    summary = gpu_check.summarise_model(str(tmp_path))
    assert summary[0].startswith("  model mlp  B=1 (512-token prompt): ")
    assert summary[1] == ("    requests, triton-fused cuda_graph, median of 5: ttft 2.00 (2.00x floor), second_token 2.00 (2.00x floor), "
                          "tpot 2.00 (2.00x floor), request 2.00 (2.00x floor)")  # fmt: skip
    assert summary[2].startswith("  ViT alone: B=1 ") and "images/s" in summary[2]
    assert "| mlp (64) | 1 (512-token prompt) | triton-fused | cuda_graph | 5 | 2.00 (2.00..2.00) (1.00) |" in model_e2e.markdown(
        [row]
    )


def test_model_host_cost_with_stubbed_launches(device):
    """The host's share of a prefill and a decode step, every Triton launch stubbed (and counted):
    the model at the full preset's depth launches each layer's kernels, and the stub is undone after."""
    if device.type != "cpu":
        pytest.skip("the stub replaces the interpreter's launches")
    from triton.runtime.interpreter import InterpretedFunction

    from bench import model_host

    run = InterpretedFunction.run
    [row] = model_host.host_costs(repeats=1, prompt_lengths={1: [8]})
    assert InterpretedFunction.run is run
    assert row["prefill_host_us"] > 0 and row["step_host_us"] > 0
    # per decode step at one sequence: 28 layers' decode attention, two fused projections a layer and
    # more, the final norm; the prefill: 27 ViT layers and 28 LLM layers' kernels at least
    assert row["step_triton_launches"] >= 28 * 4 and row["prefill_triton_launches"] >= 27 * 4 + 28 * 3
    assert row["step_torch_ops"] > 0 and row["prefill_torch_ops"] > row["step_torch_ops"]
    assert "| 1 | 8 |" in model_host.markdown([row])


def test_transformers_host_cost_with_stubbed_launches():
    """The patched transformers model's host share (CPU, 2 layers here): every forward launches our
    kernels, and none reads the device more often than the unpatched model (the padded batch's
    plan reads nothing; transformers' mask builder still does)."""
    from bench import transformers_e2e

    llm = dataclasses.replace(transformers_e2e.HOST_LLM, num_layers=2)
    rows = transformers_e2e.host_rows(llm, repeats=1)
    assert [r["forward"] for r in rows] == ["padded prefill", "padded decode step", "unpadded decode step"]
    for r in rows:
        assert r["host_us"] > 0 and r["triton_launches"] > 0 and 0 < r["torch_ops"] < r["unpatched_torch_ops"], r
        assert r["unpatched_host_us"] > 0, r
        assert r["host_reads"] <= r["unpatched_host_reads"], r
    assert "| padded prefill |" in transformers_e2e.host_markdown(rows, llm)


def test_a_partial_bench_run_leaves_the_committed_records_alone(monkeypatch, capsys, device, tmp_path):
    """`python -m bench --ops X` writes its reports to a temporary folder (or --results-dir), never
    over bench/results/, whose files hold every op's rows."""
    if device.type != "cpu":
        pytest.skip("the CPU flow (a GPU machine times the op instead)")
    import subprocess
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the folder is the test's, not left in /tmp

    from aurora_kernels import compile_report

    committed = subprocess.run(["git", "status", "--porcelain", "bench/results"], capture_output=True, text=True).stdout
    seen = []
    monkeypatch.setattr(
        compile_report,
        "run_report",
        lambda **kwargs: seen.append(kwargs) or {"toolchain": {"triton": "x", "ptxas": "y"}, "rows": []},
    )
    assert run.main(["--ops", "gelu_tanh"]) == 0
    out = capsys.readouterr().out
    folder = out.split("results go to ")[1].split()[0]
    assert os.path.dirname(folder) == str(tmp_path)
    assert "roofline-floors-h100.md" in os.listdir(folder) and "compile-sm90.md" in os.listdir(folder)
    assert seen and all(kwargs["ops"] == ("gelu_tanh",) for kwargs in seen)  # the op's configs alone
    assert subprocess.run(["git", "status", "--porcelain", "bench/results"], capture_output=True, text=True).stdout == committed


def test_results_csv_in_ligers_layout_and_losses_first(tmp_path):
    import csv

    row = {"op": "gelu_tanh", "shape": "ViT 32 images", "dtype": "bfloat16", "bytes": 10**6, "flops": 10**6, "floor_ms": 0.001,
           "bound": "memory", "impls": {
               "ours": {"ms": 0.06, "gbps": 1, "tflops": 1, "frac_copy_bw": 0.8, "frac_gemm": 0, "frac_floor": 0.8, "graph_ms": 0.058,
                        "graph_frac_floor": 0.82},
               "F.gelu(tanh)": {"ms": 0.055, "gbps": 1, "tflops": 1, "frac_copy_bw": 0.9, "frac_gemm": 0, "frac_floor": 0.9,
                                "graph_ms": 0.052, "graph_frac_floor": 0.91},
               "eager": {"ms": 0.2, "gbps": 1, "tflops": 1, "frac_copy_bw": 0.2, "frac_gemm": 0, "frac_floor": 0.2},
               "liger": {"missing": "liger_kernel not importable"}}}  # fmt: skip
    facts = {"name": "NVIDIA H100 80GB HBM3", "date": "2026-12-05"}
    harness.write_results(str(tmp_path), facts, {"copy_bandwidth": 3e12, "bf16_gemm": 8e14}, [row])
    with open(tmp_path / "results.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == harness.LIGER_CSV_COLUMNS
        written = list(reader)
    assert {(w["kernel_provider"], w["kernel_operation_mode"]) for w in written} == {
        ("ours", "forward"), ("ours", "forward, graph replay"), ("F.gelu(tanh)", "forward"),
        ("F.gelu(tanh)", "forward, graph replay"), ("eager", "forward")}  # fmt: skip
    assert all(w["kernel_name"] == "gelu_tanh" and w["metric_unit"] == "ms" and w["x_value"] == "ViT 32 images" for w in written)
    assert json.load(open(tmp_path / "results.json"))["spec_ceilings"] == {"copy_bandwidth": 3.35e12, "bf16_gemm": 989e12}
    # a case where a peer wins is listed first in the summary, on each clock it wins
    summary = gpu_check.summarise([row])
    assert summary[0] == "  a peer beats ours: gelu_tanh [ViT 32 images] ms 0.92x; gelu_tanh [ViT 32 images] graph_ms 0.90x"
    assert "(device clock 0.90x..0.90x)" in summary[1]


def test_vllm_check_compares_tokens_and_its_serving_script_parses():
    from bench import vllm_check

    compile(vllm_check._SERVE, "vllm_check._SERVE", "exec")  # run only on a GPU machine with vLLM
    report = vllm_check.agreement([[1, 2, 3], [4, 5, 9]], [[1, 2, 3], [4, 6, 9]])
    assert report == {"identical_share": 5 / 6, "first_difference": [None, 1]}


def test_the_pytest_benchmark_suite_runs_in_its_cpu_mode_and_writes_its_json(tmp_path):
    """tests/benchmarks through pytest-benchmark, as a user runs it (a few rounds of each op's eager
    reference on a CPU, seconds): one benchmark per op, each saying what it timed and where."""
    import sys

    out = tmp_path / "benchmarks.json"
    # a CPU run as a user starts it: not an xdist worker (pytest-benchmark turns itself off inside one)
    env = {k: v for k, v in os.environ.items() if k != "AURORA_TEST_DEVICE" and not k.startswith("PYTEST_")}
    run = subprocess.run([sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only", "-p", "no:xdist", "-q",
                          "-p", "no:cacheprovider", f"--benchmark-json={out}"], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = json.loads(out.read_text())
    benchmarks = record["benchmarks"]
    assert {b["extra_info"]["op"] for b in benchmarks} == {c.op for c in harness.load_cases()}
    for b in benchmarks:
        info = b["extra_info"]
        assert info["implementation"] == "eager" and info["device"] == "cpu" and "need a GPU" in info["note"]
        assert {"shape", "dtype", "bytes", "flops"} <= info.keys()
        assert b["stats"]["rounds"] == 3 and b["stats"]["median"] > 0
