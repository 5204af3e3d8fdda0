"""Every launch config the launchers can pick at the model's shapes compiles for sm_90 (H100) with no
spills, within shared memory, with its dots on tensor cores and its global loads vectorised: checked
on a CPU, ahead of time, in the model's dtype (bf16), with the GPU machines' Triton (3.6, which
`make test` installs in a folder of its own; the installed Triton where it did not). Here: the
configs of the default run options and of direct op calls (`--default-options`); `make bench`
checks every config, those of the opt-in run options too, in every dtype, with both Tritons (the
installed one's ptxas allocates registers differently). Cold, each Triton's list is minutes of
ptxas: the opt-in options' configs, and then the second Triton, put the suite past its 10 minutes
(the figures: docs/performance-log.md)."""

import json
import os

import pytest
from filelock import FileLock

import aurora_kernels as ak
from aurora_kernels.compile_report import problems, run_report
from aurora_kernels.ops import fused_linear
from tests.conftest import TEST_DEVICE

pytestmark = pytest.mark.skipif(TEST_DEVICE != "cpu", reason="the ahead-of-time check is for CPU machines")

# `make test` installs the GPU machines' Triton in a folder and names it here
GPU_IMAGE_TRITON = os.environ.get("AURORA_GPU_IMAGE_TRITON")
GPU_IMAGE_TRITON_VERSION = "3.6"


def _made_once(name: str, make, tmp_path_factory):
    """make() once per test session: the xdist workers share the result through a file (each worker
    would otherwise make its own copy of a module-scoped report: minutes of compiling, twice)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make()
    path = tmp_path_factory.getbasetemp().parent / f"{name}.json"  # the session's, shared by its workers
    with FileLock(f"{path}.lock"):
        if not path.is_file():
            path.write_text(json.dumps(make()))
        return json.loads(path.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if GPU_IMAGE_TRITON:
        result = _made_once(
            "compile-report-gpu-image",
            lambda: run_report(triton_path=GPU_IMAGE_TRITON, dtypes=("bf16",), default_options=True),
            tmp_path_factory,
        )
        # the folder must really hold the GPU machines' Triton, else this would check the installed one
        assert result["toolchain"]["triton"].startswith(GPU_IMAGE_TRITON_VERSION + "."), result["toolchain"]
    else:
        result = _made_once("compile-report-installed", lambda: run_report(dtypes=("bf16",), default_options=True),
                            tmp_path_factory)  # fmt: skip
    assert {row["shape"].split()[-1] for row in result["rows"]} == {"bf16"}
    assert not any(row["run_option"] for row in result["rows"])
    return result


def test_every_config_compiles_without_spills(report):
    bad = [f"{r['op']} {r['kernel']} [{r['shape']}]: {'; '.join(problems(r))}" for r in report["rows"] if problems(r)]
    assert not bad, f"triton {report['toolchain']['triton']}:\n" + "\n".join(bad)


def test_every_kernel_op_is_in_the_report(report):
    assert set(ak.OPS) <= {r["op"] for r in report["rows"]}


def test_pdl_configs_wait_on_the_kernel_before_and_the_others_do_not(report):
    """USE_PDL compiles the grid dependency wait into fused_linear and decode attention; without it the
    kernels are as they were (no wait instruction). (fused_linear's K-split sum waits too: its PDL
    form is fuse_batched_projections', in `make bench`'s report.)"""
    pdl = [r for r in report["rows"] if r["constexprs"].get("USE_PDL")]
    assert {r["kernel"] for r in pdl} == {"_fused_linear_kernel", "_decode_split_kernel", "_decode_merge_kernel"}
    assert all(r.get("grid_dependency_wait") for r in pdl)
    assert not any(r.get("grid_dependency_wait") for r in report["rows"] if not r["constexprs"].get("USE_PDL"))


def test_pdl_configs_read_before_their_wait_only_what_the_kernel_before_cannot_write(report):
    """Under PDL a kernel runs while the one before it finishes (ops/_pdl.py). In the SASS, ahead of
    the wait: the GEMV's first weight tile (one 16-byte load a weight row of the program, and not
    its input), decode attention's length and rotary rows (not q, the new token or the cache), and
    nothing at all in the tensor-core tiles, the K-split sum and the merge."""
    pdl = [r for r in report["rows"] if r["constexprs"].get("USE_PDL")]
    assert pdl
    for r in pdl:
        c = r["constexprs"]
        if r["kernel"] == "_fused_linear_kernel" and not c["USE_DOT"]:
            expected = fused_linear.tile_rows(c["BLOCK_N"], c["EPILOGUE"])
        elif r["kernel"] == "_decode_split_kernel":
            assert not c["PAGED"]  # a paged cache's block table would be read there too
            expected = 1 + 2 * c["ROTARY"]
        else:
            expected = 0
        assert r["loads_before_wait"] == expected, (r["kernel"], r["shape"], c)
    assert {r["kernel"] for r in pdl if r["loads_before_wait"]} == {"_fused_linear_kernel", "_decode_split_kernel"}
    assert not any("loads_before_wait" in r for r in report["rows"] if r not in pdl)


def test_no_config_of_the_default_options_launches_the_next_kernel_before_its_wait(report):
    """A PDL kernel lets the next one launch after its wait, so at most two overlap. Only decode
    attention's merge under NEXT_LAUNCHED does it at its start (the weight prefetch's form, so that
    the o_proj GEMV reads its weights while the split kernel runs: ops/_pdl.py); `problems` holds
    every row to its NEXT_LAUNCHED, and `make bench`'s report has that one."""
    pdl = [r for r in report["rows"] if r["constexprs"].get("USE_PDL")]
    assert pdl and not any(r["next_launched_before_wait"] or r["constexprs"].get("NEXT_LAUNCHED") for r in pdl)


def test_the_opt_in_configs_are_named_by_their_run_option():
    """`--default-options` leaves out a config only where an opt-in run option alone launches it: the
    GEMV's L2 prefetch and the merge's early launch (weight_prefetch), and PDL on more than one row,
    the tiles' and their K-split sum's (fuse_batched_projections: only a fused step launches under
    PDL). Each such option is a RunOptions field that is off by default. Without compiling."""
    import dataclasses

    from aurora_kernels._compile import all_configs
    from aurora_kernels.model.options import RunOptions

    defaults = {field.name: field.default for field in dataclasses.fields(RunOptions)}
    configs = all_configs()
    for cfg in configs:
        c = cfg.constexprs
        if c.get("PREFETCH_L2") or c.get("NEXT_LAUNCHED"):
            expected = "weight_prefetch"
        elif c.get("USE_PDL") and (cfg.kernel.__name__ == "_sum_k_splits_kernel" or c.get("BLOCK_M", 1) > 1):
            expected = "fuse_batched_projections"
        else:
            expected = ""
        assert cfg.run_option == expected, (cfg.op, cfg.shape, c)
        assert not cfg.run_option or defaults[cfg.run_option] is False, cfg.run_option
    assert {cfg.run_option for cfg in configs} == {"", "weight_prefetch", "fuse_batched_projections"}


def test_every_pdl_config_declares_what_it_may_read_before_its_wait():
    """`problems` holds a PDL config's SASS to the loads its config declares ahead of the wait (so
    `make bench` checks the configs this suite does not compile); the declarations follow the rule
    of the test above, for every config, the opt-in options' too. Without compiling."""
    from aurora_kernels._compile import all_configs

    for cfg in all_configs():
        c = cfg.constexprs
        if not c.get("USE_PDL"):
            expected = None
        elif cfg.kernel.__name__ == "_fused_linear_kernel" and not c["USE_DOT"]:
            expected = fused_linear.tile_rows(c["BLOCK_N"], c["EPILOGUE"])
        elif cfg.kernel.__name__ == "_decode_split_kernel":
            assert not c["PAGED"]
            expected = 1 + 2 * c["ROTARY"]
        else:
            expected = 0
        assert cfg.loads_before_wait == expected, (cfg.op, cfg.shape, c)


def test_the_gemv_prefetch_configs_are_held_to_a_prefetch_a_weight_row_before_the_wait():
    """PREFETCH_L2 (under PDL) puts one bulk L2 prefetch a weight row of the program ahead of the grid
    dependency wait; `problems` holds each config to that count (`make bench`'s report compiles
    them) and every other config to none. Without compiling: the configs' counts, and rows that
    break them."""
    from aurora_kernels._compile import all_configs

    prefetching = [cfg for cfg in all_configs() if cfg.constexprs.get("PREFETCH_L2")]
    assert prefetching and all(cfg.constexprs["USE_PDL"] and not cfg.constexprs["USE_DOT"] for cfg in prefetching)
    rows = [fused_linear.tile_rows(cfg.constexprs["BLOCK_N"], cfg.constexprs["EPILOGUE"]) for cfg in prefetching]
    assert [cfg.loads_before_wait for cfg in prefetching] == rows
    ok = {"constexprs": {"USE_PDL": True, "PREFETCH_L2": True}, "spill_stores": 0, "spill_loads": 0, "shared_bytes": 0,
          "uses_dot": False, "tensor_core": "none", "vector_loads": 4, "grid_dependency_wait": True, "loads_before_wait": 4,
          "expected_loads_before_wait": 4, "next_launched_before_wait": False, "l2_prefetches_before_wait": 4}  # fmt: skip
    assert problems(ok) == []
    assert problems({**ok, "l2_prefetches_before_wait": 3}) == [
        "3 L2 bulk prefetches ahead of the grid dependency wait, expected 4"
    ]
    assert problems({**ok, "constexprs": {"USE_PDL": True}}) == [
        "4 L2 bulk prefetches ahead of the grid dependency wait, expected 0"
    ]
    assert problems({**ok, "loads_before_wait": 5}) == ["5 global loads ahead of the grid dependency wait, expected 4"]
    assert problems({**ok, "next_launched_before_wait": True}) == [
        "the next kernel launched ahead of the wait: True, NEXT_LAUNCHED: False"
    ]
    assert problems({**ok, "constexprs": {}, "l2_prefetches_before_wait": 0}) == [
        "a griddepcontrol.wait in the PTX, without USE_PDL"
    ]
    from aurora_kernels.compile_report import markdown

    named = {**ok, "op": "linear", "kernel": "k", "shape": "s", "num_warps": 4, "num_stages": 1, "registers": 40,
             "loop_barriers": 0, "run_option": "weight_prefetch"}  # fmt: skip
    assert markdown([named]).splitlines()[-1].endswith("| 4 | weight_prefetch | ok |")  # the report names the option


def test_the_gemv_configs_are_held_to_loops_without_barriers(report):
    """The one-row fused_linear tiles (the batch-1 decode step's projections) are checked for
    barriers in their loop, and have none; the other kernels are not held to it."""
    gemv = [r for r in report["rows"] if r["kernel"] == "_fused_linear_kernel" and not r["constexprs"]["USE_DOT"]]
    assert gemv and all(r["barrier_free_loops"] and r["loop_barriers"] == 0 for r in gemv)
    assert not any(r["barrier_free_loops"] for r in report["rows"] if r not in gemv)


def test_the_batched_projection_tiles_are_wgmma(report):
    """The fused_linear tiles the launcher picks for 5..64 fp16/bf16 rows on sm_90 (the weight by TMA;
    swapped, the rows in the MMA's N, at 16 and 32 rows) are held to Hopper's warpgroup MMA, and
    compile to it; the mma.sync tiles, for weights TMA cannot read and for GPUs before sm_90, are not
    held to it."""
    tma = [r for r in report["rows"] if r["constexprs"].get("WEIGHT_TMA")]
    assert tma and all(r["wgmma"] and r["tensor_core"] == "wgmma" for r in tma)
    assert {r["constexprs"]["BLOCK_M"] for r in tma if r["constexprs"]["SWAP_AB"]} == {16, 32}
    assert {r["op"] for r in tma} == set(fused_linear.OP_NAMES.values())  # the SwiGLU epilogue's too
    assert not any(r["wgmma"] for r in report["rows"] if r not in tma)


def test_persistent_attention_grids_fit_on_the_sm_at_once(report):
    """A persistent attention grid is PERSISTENT_BLOCKS_PER_SM programs an SM: each must be able to
    start at once (a program left waiting for another to walk all its items doubles the time), so
    the number may not exceed the blocks an SM holds by the tile's registers and shared memory. That
    Triton flattened the item loop into the key loop shows in shared memory: the next item's q tile
    is buffered beside this one's (more than the same tile takes with one item a program)."""
    from aurora_kernels.ops.attention import PERSISTENT_BLOCKS_PER_SM

    rows = [r for r in report["rows"] if r["kernel"] == "_attention_kernel" and r["constexprs"]["PERSISTENT"]]
    assert {(r["constexprs"]["BLOCK_M"], r["constexprs"]["BLOCK_N"]) for r in rows} == set(PERSISTENT_BLOCKS_PER_SM)
    for r in rows:
        tile = (r["constexprs"]["BLOCK_M"], r["constexprs"]["BLOCK_N"])
        assert PERSISTENT_BLOCKS_PER_SM[tile] <= r["blocks_per_sm"], (r["shape"], tile, r["blocks_per_sm"])
        one_item = [o for o in report["rows"] if o["shape"] == r["shape"] and o["num_warps"] == r["num_warps"]
                    and o["constexprs"] == {**r["constexprs"], "PERSISTENT": False}]  # fmt: skip
        assert len(one_item) == 1 and r["shared_bytes"] > one_item[0]["shared_bytes"], (r["shape"], tile)


def test_the_decode_attention_issues_its_loads_before_its_first_barrier(report):
    """The split kernel's fp16/bf16 configs (tensor-core products) and the merge kernel are checked
    for global loads behind their first barrier, and have none: a batch-1 call is one K/V tile a
    program, so each load behind a barrier is a second trip to memory before the product (or, in
    the merge, before the result). The other kernels are not held to it."""
    held = [r for r in report["rows"] if r["kernel"] == "_decode_merge_kernel"
            or (r["kernel"] == "_decode_split_kernel" and r["uses_dot"])]  # fmt: skip
    assert held and all(r["loads_before_barrier"] and r["loads_behind_barrier"] == 0 for r in held)
    assert not any(r["loads_before_barrier"] for r in report["rows"] if r not in held)


def test_blocks_per_sm_is_the_least_of_registers_shared_memory_and_warps():
    """The occupancy column: registers go to a warp in units of 256, shared memory to a block in units
    of 128 bytes plus the runtime's 1 KB; an SM has 64K registers, 228 KB, 64 warps and 32 blocks."""
    from aurora_kernels.compile_report import blocks_per_sm

    assert blocks_per_sm(186, 114688, 4) == 2  # 192 x 32 registers a warp: 10 warps; 2 x 113 KB
    assert blocks_per_sm(124, 40960, 4) == 4  # 128 x 32 a warp: 16 warps (shared memory allows 5)
    assert blocks_per_sm(148, 65536, 4) == 3  # 152 x 32: 13 warps; 3 x 65 KB fit, 4 do not
    assert blocks_per_sm(245, 229376, 8) == 1
    assert blocks_per_sm(140, 36864, 8) == 1  # 144 x 32 x 8 warps = 36864 registers: not twice in 64K
    assert blocks_per_sm(32, 0, 8) == 8  # the 64 warp slots
    assert blocks_per_sm(16, 0, 1) == 32  # the 32 block slots
    assert blocks_per_sm(64, 116736, 1) == 1  # 114 KB + 1 KB twice is over 228 KB


def test_stride_multiple_claims_only_what_holds():
    """STRIDE_MULTIPLE tells the compiler that row offsets are 16-byte multiples; a wrong claim would
    misalign vector loads on a GPU (the interpreter cannot notice), so the rule itself is tested."""
    from aurora_kernels.ops._layout import stride_multiple

    assert stride_multiple(2, (3 * 1152, 72)) == 8  # the ViT's fused qkv, head dim 72
    assert stride_multiple(2, (3 * 1152, 36)) == 1
    assert stride_multiple(2, (0, 8960)) == 8  # a packed input's batch stride of 0
    assert stride_multiple(4, (1536, 12)) == 4
    assert stride_multiple(4, (1536, 6)) == 1
    assert stride_multiple(2, ()) == 8


_BROKEN_KERNELS = """
import json, sys
import triton
import triton.language as tl
from aurora_kernels._compile import KernelConfig
from aurora_kernels.compile_report import compile_one, problems


@triton.jit
def small_dot(x_ptr, out_ptr, TILE: tl.constexpr):
    offsets = tl.arange(0, TILE)[:, None] * TILE + tl.arange(0, TILE)[None, :]
    x = tl.load(x_ptr + offsets)
    tl.store(out_ptr + offsets, tl.dot(x, x))


@triton.jit
def huge_tile(x_ptr, out_ptr, TILE: tl.constexpr):
    offsets = tl.arange(0, TILE)[:, None] * TILE + tl.arange(0, TILE)[None, :]
    x = tl.load(x_ptr + offsets)
    tl.store(out_ptr + offsets, x * tl.sum(x, 0)[None, :] + tl.sum(x, 1)[:, None])


@triton.jit
def column_sums_in_loop(x_ptr, out_ptr, num_tiles, TILE: tl.constexpr):
    offsets = tl.arange(0, TILE)[:, None] * TILE + tl.arange(0, TILE)[None, :]
    total = tl.zeros((TILE,), tl.float32)
    for tile in range(0, num_tiles):
        total += tl.sum(tl.load(x_ptr + tile * TILE * TILE + offsets).to(tl.float32), 0)
    tl.store(out_ptr + tl.arange(0, TILE), total.to(tl.float16))


@triton.jit
def load_after_a_sum(x_ptr, out_ptr, TILE: tl.constexpr):
    offsets = tl.arange(0, TILE)[:, None] * TILE + tl.arange(0, TILE)[None, :]
    x = tl.load(x_ptr + offsets)
    rows = tl.sum(x.to(tl.float32), 0).to(tl.int32) & (TILE - 1)  # a sum across warps: a barrier
    y = tl.load(x_ptr + rows[:, None] * TILE + tl.arange(0, TILE)[None, :])  # addressed by it
    tl.store(out_ptr + offsets, tl.dot(x, y).to(tl.float16))


signature = {"x_ptr": "*fp16", "out_ptr": "*fp16"}
rows = [
    compile_one(KernelConfig("small dot", "8x8", small_dot, signature, {"TILE": 8}, 4, 1, uses_dot=True)),
    compile_one(KernelConfig("narrow dot", "16x16 on 4 warps", small_dot, signature, {"TILE": 16}, 4, 1, uses_dot=True,
                             wgmma=True)),
    compile_one(KernelConfig("huge tile", "128x128 on one warp", huge_tile, signature, {"TILE": 128}, 1, 1)),
    compile_one(KernelConfig("reduction in a loop", "64x64 tiles on 4 warps", column_sums_in_loop,
                             {**signature, "num_tiles": "i32"}, {"TILE": 64}, 4, 1, barrier_free_loops=True)),
    compile_one(KernelConfig("load after a sum", "64x64 tiles on 4 warps", load_after_a_sum, signature, {"TILE": 64}, 4, 1,
                             uses_dot=True, loads_before_barrier=True)),
]
json.dump([problems(row) for row in rows], sys.stdout)
"""


def test_the_check_fails_on_a_dot_under_16_a_spill_a_barrier_in_a_loop_and_a_load_behind_a_barrier(tmp_path):
    """What the interpreter accepts but sm_90 does not: an 8x8 tl.dot (the compiler wants M, N, K >= 16)
    is a "does not compile" row; a 16x16 dot held to wgmma becomes mma.sync (wgmma's M is 64); a 128x128 fp16 tile on one warp (512 values a thread) spills; a sum
    across warps at every step of a loop puts barriers in it, which a GEMV config may not have; a load
    addressed by a sum across warps is issued behind that sum's barrier, which the decode attention's
    configs may not have ahead of their first product. The check that passes on the shipped configs
    would fail on these."""
    import subprocess
    import sys

    script = tmp_path / "broken_kernels.py"
    script.write_text(_BROKEN_KERNELS)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    small_dot, narrow_dot, huge_tile, reduction_in_loop, load_after_a_sum = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(small_dot) == 1 and small_dot[0].startswith("does not compile"), small_dot
    assert "tl.dot became mma, not wgmma" in narrow_dot, narrow_dot
    assert any(p.startswith("spills") for p in huge_tile), huge_tile
    assert any("barriers (bar.sync) inside its loops" in p for p in reduction_in_loop), reduction_in_loop
    assert any("global loads behind its first barrier" in p for p in load_after_a_sum), load_after_a_sum


def test_the_report_names_a_bad_dtype_filter(capsys):
    from aurora_kernels.compile_report import main

    with pytest.raises(SystemExit):
        main(["--dtype", "fp8"])
    assert "--dtype: invalid choice: 'fp8'" in capsys.readouterr().err


def test_a_warm_report_reads_the_ptxas_log_kept_in_the_cache_entry(monkeypatch, tmp_path):
    """A compile that Triton finds in its cache prints no ptxas log; the report keeps each log beside
    its cubin, so a warm report assembles nothing again, and an entry from before the log was kept
    is assembled once more and kept."""
    from types import SimpleNamespace

    from aurora_kernels import compile_report

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    assembled = []
    monkeypatch.setattr(compile_report, "_assemble_again", lambda ptx, cfg: assembled.append(ptx) or "Used 40 registers")
    cold, warm = SimpleNamespace(hash="c0" * 32), SimpleNamespace(hash="e1" * 32)
    printed = "ptxas info    : Used 96 registers, 0 bytes spill stores, 0 bytes spill loads"
    assert compile_report._ptxas_log(cold, printed, "cold ptx", None) == printed
    assert compile_report._ptxas_log(cold, "", "cold ptx", None) == printed and assembled == []
    assert compile_report._ptxas_log(warm, "", "warm ptx", None) == "Used 40 registers" and assembled == ["warm ptx"]
    assert compile_report._ptxas_log(warm, "", "warm ptx", None) == "Used 40 registers" and assembled == ["warm ptx"]


def test_a_warm_report_reads_the_sass_kept_in_the_cache_entry(monkeypatch, tmp_path):
    """The SASS that the barrier and PDL checks read is kept beside its cubin too: a warm report
    disassembles nothing again."""
    from types import SimpleNamespace

    from aurora_kernels import compile_report

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    disassembled = []
    monkeypatch.setattr(compile_report, "_disassemble", lambda cubin: disassembled.append(cubin) or f"SASS of {cubin!r}")
    first, second = (SimpleNamespace(hash=h * 32, asm={"cubin": h.encode()}) for h in ("c0", "e1"))
    assert compile_report._sass(first) == "SASS of b'c0'" and disassembled == [b"c0"]
    assert compile_report._sass(first) == "SASS of b'c0'" and disassembled == [b"c0"]
    assert compile_report._sass(second) == "SASS of b'e1'" and disassembled == [b"c0", b"e1"]
