import pytest
import torch

from aurora_kernels import generate
from aurora_kernels.model import preset
from aurora_kernels.model.cost import comparison_markdown, kv_cache_bytes, stage_costs


def test_stage_costs_follow_the_token_counts():
    mlp, none = (stage_costs(preset("aurora-edge-v-2b", compressor=k), batch=1, prompt_len=32) for k in ("mlp", "none"))
    by_stage = lambda costs: {c.stage: c for c in costs}  # noqa: E731
    mlp, none = by_stage(mlp), by_stage(none)
    assert mlp["vision"].flops == none["vision"].flops  # the vision tower sees all 256 patches either way
    assert none["compressor"].flops == 0 < mlp["compressor"].flops
    # prefill matmuls scale with the tokens (64 + 32 vs 256 + 32); attention with their square
    assert 0.30 < mlp["prefill"].flops / none["prefill"].flops < 96 / 288
    llm = preset("aurora-edge-v-2b").llm
    assert kv_cache_bytes(llm, 96) == 2 * 28 * 2 * 128 * 96 * 2
    assert none["decode step"].bytes - mlp["decode step"].bytes == pytest.approx(kv_cache_bytes(llm, 288 - 96), rel=1e-9)


def test_comparison_states_the_verdict():
    text = comparison_markdown("aurora-edge-v-2b", batch=1, prompt_len=32)
    assert "Parameters: 2.017 B" in text
    assert "Paper's claim" in text and ("holds" in text or "does not hold" in text)


def test_generate_command(capsys):
    assert generate.main(["--preset", "tiny", "--prompt-len", "7", "--max-new-tokens", "3", "--batch", "2",
                          "--backend", "reference", "--device", "cpu", "--cache", "paged"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "request 0: prompt 3 tokens" in out and "request 1: prompt 7 tokens" in out
    assert "prefill:" in out and "2 steps" in out and "tokens/s over 2 request(s)" in out


def test_generate_command_loads_weights(tmp_path, capsys):
    """--llm-dir / --vision-dir / --aurora-weights go through from_pretrained."""
    from aurora_kernels.model.loading import qwen2_names, siglip_names
    from tests.model.test_loading import QWEN2_CONFIG, SIGLIP_VISION_CONFIG, TINY, write_checkpoint

    gen = torch.Generator().manual_seed(0)
    write_checkpoint(tmp_path / "qwen2", QWEN2_CONFIG, qwen2_names(TINY.llm), gen)
    write_checkpoint(
        tmp_path / "siglip", {"model_type": "siglip_vision_model", **SIGLIP_VISION_CONFIG}, siglip_names(TINY.vision), gen
    )
    assert generate.main(["--llm-dir", str(tmp_path / "qwen2"), "--vision-dir", str(tmp_path / "siglip"), "--compressor", "pool",
                          "--max-new-tokens", "2", "--backend", "reference", "--device", "cpu"]) == 0  # fmt: skip
    assert "compressor pool (16 visual tokens into the LLM)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--prompt-len", "0"], "argument --prompt-len: expected an int >= 1, got 0"),
    (["--prompt-len", "-5"], "argument --prompt-len: expected an int >= 1, got -5"),
    (["--batch", "0"], "argument --batch: expected an int >= 1, got 0"),
    (["--max-new-tokens", "2.5"], "argument --max-new-tokens: expected an int >= 1, got '2.5'"),
    (["--max-new"], "unrecognized arguments: --max-new"),  # no abbreviations: a typo is not a guess
    (["--device", "gpu"], "argument --device: expected cpu, cuda or cuda:N, got 'gpu'"),
    (["--vision-dir", "siglip"], "--vision-dir needs --llm-dir"),
    (["--aurora-weights", "aurora.safetensors"], "--aurora-weights needs --llm-dir"),
    (["--llm-dir", "/nowhere/qwen2"], "--llm-dir: no such directory: /nowhere/qwen2"),
    (["--eos-token-id", "-1"], "argument --eos-token-id: expected an int >= 0, got -1"),
])  # fmt: skip
def test_generate_command_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_generate_command_cuda_without_a_gpu_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        generate.parse_args(["--device", "cuda"])
    assert "--device cuda: no CUDA GPU is available here; use --device cpu" in capsys.readouterr().err


def test_generate_command_reports_an_unloadable_checkpoint_in_one_line(tmp_path, capsys):
    (tmp_path / "qwen2").mkdir()
    (tmp_path / "qwen2" / "config.json").write_text("{not json")
    assert generate.main(["--llm-dir", str(tmp_path / "qwen2"), "--backend", "reference", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "config.json: not valid JSON" in err and len(err.strip().splitlines()) == 1


def test_generate_command_takes_several_eos_ids(capsys):
    assert generate.main(["--preset", "tiny", "--max-new-tokens", "2", "--eos-token-id", "1", "2",
                          "--backend", "reference", "--device", "cpu"]) == 0  # fmt: skip
