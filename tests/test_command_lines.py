"""The command lines' typos: a usage error (exit status 2) in one line that names the flag, what was
expected and what was given, before any work starts; never a traceback, and never a run of nothing
(`--ops rms_nrom` once printed an empty table and exited 0) or of everything."""

import argparse
import importlib

import pytest

from aurora_kernels._cli_arguments import (
    existing_directory,
    int_at_least,
    ints_at_least,
    output_directory,
    output_file,
    subset_of,
)

KNOWN_OPS = "expected ops among apply_rotary,attention,"


@pytest.mark.parametrize("module, argv, message", [
    ("bench.run", ["--ops", "rms_nrom"], f"argument --ops: {KNOWN_OPS}"),
    ("bench.run", ["--ops", "rms_norm,"], "('' unknown)"),
    ("bench.run", ["--op", "rms_norm"], "unrecognized arguments: --op"),  # no abbreviations: a typo is not a guess
    ("bench.warm", ["--ops", "rms_norm,silu_and_mull"], "('silu_and_mull' unknown)"),
    ("bench.warm", ["--cases", "1,x"], "argument --cases: expected comma-separated ints >= 0, got '1,x'"),
    ("bench.warm", ["--cases", "100000"], "--cases: expected indices below "),
    ("bench.warm", ["--workers", "0"], "argument --workers: expected an int >= 1, got 0"),
    ("bench.sweep_fused_linear", ["--rows", "1,eight"], "argument --rows: expected comma-separated ints >= 1, got '1,eight'"),
    ("bench.vllm_check", ["--batch", "0"], "argument --batch: expected an int >= 1, got 0"),
    ("bench.plots", ["/nowhere/results"], "argument results_dir: expected an existing directory, got '/nowhere/results'"),
    ("bench.loading", ["--preset", "aurora-edge-v2b"], "argument --preset: invalid choice: 'aurora-edge-v2b'"),
    ("aurora_kernels.model.cost", ["--batch", "0"], "argument --batch: expected an int >= 1, got 0"),
    ("aurora_kernels.model.cost", ["--prompt-len", "-3"], "argument --prompt-len: expected an int >= 1, got -3"),
    ("aurora_kernels.compile_report", ["--op", "rms_nrom"], "argument --op: invalid choice: 'rms_nrom'"),
    # an output file whose folder is missing was found at the end, after minutes of compiling
    ("aurora_kernels.compile_report", ["--json", "/nowhere/report.json"], "argument --json: expected a file in an existing folder"),
    ("bench.sweep_fused_linear", ["--json", "."], "argument --json: expected a file to write, got the folder '.'"),
    ("bench.run", ["--results-dir", "README.md"], "argument --results-dir: expected a folder to write into, got the file 'README.md'"),
    ("bench.gpu_check", ["--archive", "/nowhere/gpu-check.tar.gz"], "argument --archive: expected a file in an existing folder"),
])  # fmt: skip
def test_a_typo_is_a_usage_error_that_names_the_flag(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_the_types_return_what_was_meant():
    assert int_at_least(1)("8") == 8
    assert ints_at_least(1)("1,8,32") == (1, 8, 32)
    phases = subset_of(("tests", "ops", "model"), "phases")
    assert phases("model,tests,model") == ("tests", "model")  # once each, in the known order
    assert existing_directory(".") == "."
    assert output_file("report.json") == "report.json"  # in the current folder
    assert output_directory("/nowhere/yet") == "/nowhere/yet"  # made when the run writes
    for parse, text in ((int_at_least(1), "0"), (int_at_least(0), "1.5"), (ints_at_least(1), ""), (phases, ""),
                        (phases, "tests,,model"), (existing_directory, "/nowhere"), (output_directory, "README.md")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
