"""Ahead-of-time compile check for sm_90 (H100), runnable on a machine with no GPU.

Each op file registers, with `@register_compile_configs`, a function that lists the launch configs
its launcher (or autotuner) can pick at the model's shapes, built by the same config-picking code
the launcher uses. This module compiles each one with `triton.compile(..., GPUTarget("cuda", 90, 32))`,
reads the `ptxas -v` log of Triton's own `make_cubin` (the ptxas and the flags this Triton really
builds with: 3.9 adds `--regAllocOptLevel=2`, which moves register counts by a few; a kernel found
in Triton's cache is assembled again for it) and reports registers per thread, spill stores/loads,
shared memory, how many blocks an SM holds at once, whether the matrix ops became tensor-core
instructions (wgmma or mma in the PTX), whether global loads are 16 bytes wide, how many barriers
the loops hold and, where a config asks, how many global loads the SASS (by the nvdisasm that ships
with Triton) issues behind its first barrier; and for a PDL config how many it issues before its
grid dependency wait. It catches what the interpreter lets through (dot tiles under 16, shared
memory over the limit, spills, a barrier at every step of a GEMV's loop, a latency-bound kernel
going to memory twice in a row before its first product, a read ahead of a PDL wait).

Register allocation differs between Triton releases (triton 3.6's ptxas spilled three configs that
3.9's did not), so the check runs twice: with the installed Triton, and with the Triton of the GPU
machines (3.6) installed beside it in a folder (`run_report(triton_path=...)`). `make bench` checks
every config with both. The CI tests check every config with 3.6, the compiler of the GPU runs, and
the model's dtype (bf16) with the installed one (`--dtype`): the whole list cold is minutes of
compiling for each Triton, and fp16 compiles to bf16's code but for its conversions.

It must run without TRITON_INTERPRET (under the interpreter `@triton.jit` gives interpreted functions
that cannot be compiled): `run_report()` starts `python -m aurora_kernels.compile_report` in a
subprocess with that variable removed.

    python -m aurora_kernels.compile_report [--json FILE] [--markdown FILE] [--op OP] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

from aurora_kernels._cli_arguments import output_file
from aurora_kernels._compile import DTYPE_LABELS, H100_SHARED_MEMORY_LIMIT, KernelConfig, all_configs


def _ptxas() -> str:
    """The ptxas this Triton itself assembles sm_90 code with: triton 3.6 uses its CUDA 12.8 `ptxas`,
    triton 3.9 `ptxas-blackwell`. Register and spill counts depend on the assembler, so the report
    shows what a GPU running this Triton would get."""
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path


@contextlib.contextmanager
def _printed_ptxas_logs():
    """Captures what is printed inside the block while Triton's make_cubin prints the `ptxas -v` log
    of each kernel it assembles (TRITON_DUMP_PTXAS_LOG): its ptxas, its flags."""
    previous = os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            yield printed
    finally:
        if previous is None:
            del os.environ["TRITON_DUMP_PTXAS_LOG"]
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = previous


# the ptxas log of a compile, kept beside its cubin in Triton's cache entry (the entry's key covers
# the kernel, its options and the toolchain), so that a report on a warm cache assembles nothing
PTXAS_LOG_FILE = "aurora-ptxas-log.txt"


def _ptxas_log(compiled, printed: str, ptx: str, cfg: KernelConfig) -> str:
    """The ptxas log of `compiled`: what its compile printed, else the one kept in its cache entry,
    else (an entry from before the log was kept) the PTX assembled again."""
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.hash)
    if "Used" not in printed:
        kept = cache.get_file(PTXAS_LOG_FILE)
        if kept:
            with open(kept) as f:
                return f.read()
        printed = _assemble_again(ptx, cfg)
    cache.put(printed, PTXAS_LOG_FILE, binary=False)
    return printed


def _assemble_again(ptx: str, cfg: KernelConfig) -> str:
    """The ptxas log of a kernel that triton.compile found in its cache (and so did not assemble):
    the backend's own make_cubin on the PTX again."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", 90, 32))
    options = backend.parse_options({"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    with _printed_ptxas_logs() as printed:
        backend.make_cubin(ptx, {}, options, 90)
    return printed.getvalue()


# An sm_90 SM's limits (CUDA's occupancy calculator, compute capability 9.0): registers are given to
# a warp in units of 256, shared memory to a block in units of 128 bytes plus 1 KB the runtime keeps
SM90_REGISTERS = 65536
SM90_REGISTER_UNIT = 256
SM90_SHARED_BYTES = 233472  # 228 KB
SM90_SHARED_UNIT = 128
SM90_SHARED_RESERVED = 1024
SM90_MAX_WARPS = 64
SM90_MAX_BLOCKS = 32


def blocks_per_sm(registers: int, shared_bytes: int, num_warps: int) -> int:
    """How many blocks of this config an sm_90 SM holds at once: the least of what its registers,
    shared memory and warp slots allow. A latency-bound kernel hides one block's waits behind
    another's work only with two or more (the overlap FlashAttention-3 schedules by hand)."""
    warp_registers = -(-registers * 32 // SM90_REGISTER_UNIT) * SM90_REGISTER_UNIT
    by_registers = SM90_REGISTERS // warp_registers // num_warps
    block_shared = -(-shared_bytes // SM90_SHARED_UNIT) * SM90_SHARED_UNIT + SM90_SHARED_RESERVED
    by_shared = SM90_SHARED_BYTES // block_shared
    return min(by_registers, by_shared, SM90_MAX_WARPS // num_warps, SM90_MAX_BLOCKS)


def loop_barriers(ptx: str) -> int:
    """The bar.sync instructions inside the PTX's loops: the lines from a label to a branch back to
    it. A barrier in a loop is a reduction or a layout conversion through shared memory at every
    step; in a kernel that streams memory, each one holds a warp's next loads until the block is there."""
    lines = ptx.splitlines()
    label_lines, in_loops = {}, set()
    for index, line in enumerate(lines):
        label = re.match(r"^(\$L__BB\w+):", line)
        if label:
            label_lines[label.group(1)] = index
        branch = re.search(r"\bbra(?:\.uni)?\s+(\$L__BB\w+);", line)
        if branch and branch.group(1) in label_lines:
            in_loops.update(range(label_lines[branch.group(1)], index))
    return sum("bar.sync" in lines[index] for index in in_loops)


def loads_behind_barrier(sass: str) -> int:
    """The global loads (LDG, LDGSTS) in the SASS between its first barrier (BAR.SYNC) and its first
    tensor-core product (HMMA/HGMMA), or its first global store in a kernel with no product: loads
    the program issues only once the loads before that barrier have arrived, although the product
    (or the result) waits for both."""
    first_barrier = re.search(r"\bBAR\.SYNC", sass)
    first_product = re.search(r"\bHG?MMA\.", sass) or re.search(r"\bSTG\.", sass)
    if not first_barrier or not first_product or first_product.start() < first_barrier.start():
        return 0
    return len(re.findall(r"\bLDG(?:STS)?\.", sass[first_barrier.start() : first_product.start()]))


def loads_before_wait(sass: str) -> int:
    """The global loads (LDG, LDGSTS) in the SASS ahead of its grid dependency wait (ACQBULK, what
    griddepcontrol.wait assembles to): what a PDL kernel reads while the kernel before it still
    runs. Only what that kernel cannot be writing may be read there (ops/_pdl.py)."""
    wait = re.search(r"\bACQBULK\b", sass)
    return len(re.findall(r"\bLDG(?:STS)?\.", sass[: wait.start()])) if wait else 0


def next_launched_before_wait(sass: str) -> bool:
    """Whether the SASS lets the next kernel launch (PREEXIT, what griddepcontrol.launch_dependents
    assembles to) ahead of its grid dependency wait (ACQBULK)."""
    wait, launch = re.search(r"\bACQBULK\b", sass), re.search(r"\bPREEXIT\b", sass)
    return bool(wait and launch and launch.start() < wait.start())


# the SASS of a compile, kept beside its cubin as the ptxas log is, so that a warm report disassembles
# nothing again (nvdisasm was most of a warm report's time: docs/performance-log.md, twelfth session)
SASS_FILE = "aurora-sass.txt"


def _sass(compiled) -> str:
    """The SASS of `compiled`'s cubin: the one kept in its cache entry, else disassembled and kept."""
    from triton.runtime.cache import get_cache_manager

    cache = get_cache_manager(compiled.hash)
    kept = cache.get_file(SASS_FILE)
    if kept:
        with open(kept) as f:
            return f.read()
    sass = _disassemble(compiled.asm["cubin"])
    cache.put(sass, SASS_FILE, binary=False)
    return sass


def _disassemble(cubin: bytes) -> str:
    """The cubin's SASS, by the nvdisasm that ships with this Triton (-ndf: without the dataflow
    analysis, whose annotations no check reads; the instructions are the same)."""
    import triton

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([nvdisasm, "-c", "-ndf", f.name], capture_output=True, text=True, check=True).stdout


def compile_one(cfg: KernelConfig) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {
        "op": cfg.op,
        "kernel": cfg.kernel.__name__,
        "shape": cfg.shape,
        "constexprs": {k: (str(v) if not isinstance(v, (int, float, bool)) else v) for k, v in cfg.constexprs.items()},
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
        "uses_dot": cfg.uses_dot,
        "wgmma": cfg.wgmma,
        "barrier_free_loops": cfg.barrier_free_loops,
        "loads_before_barrier": cfg.loads_before_barrier,
        "expected_loads_before_wait": cfg.loads_before_wait,
        "run_option": cfg.run_option,
    }
    names = cfg.kernel.arg_names
    signature = {name: ("constexpr" if name in cfg.constexprs else cfg.signature[name]) for name in names}
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in cfg.aligned}
    try:
        with _printed_ptxas_logs() as printed:
            compiled = triton.compile(
                ASTSource(cfg.kernel, signature, dict(cfg.constexprs), attrs),
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
            )
    except Exception as exc:  # the report lists the failure; the CI test fails on it
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        return row
    ptx = compiled.asm["ptx"]
    row["shared_bytes"] = int(compiled.metadata.shared)
    row["tensor_core"] = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if re.search(r"\bmma\.sync", ptx) else "none")
    # 16-byte global loads: vector loads, or the async copies to shared memory that pipelined tiles use
    row["vector_loads"] = len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]\.|cp\.async\.c[ga]\.shared\.global", ptx))
    # programmatic dependent launch (USE_PDL): the grid dependency wait must be in the code
    row["grid_dependency_wait"] = "griddepcontrol.wait" in ptx
    # PREFETCH_L2: the L2 bulk prefetches of the weight rows must be issued ahead of that wait
    ahead_of_wait = ptx[: ptx.index("griddepcontrol.wait")] if "griddepcontrol.wait" in ptx else ptx
    row["l2_prefetches_before_wait"] = len(re.findall(r"cp\.async\.bulk\.prefetch\.L2", ahead_of_wait))
    row["loop_barriers"] = loop_barriers(ptx)
    if cfg.loads_before_barrier or row["grid_dependency_wait"]:
        try:
            sass = _sass(compiled)
        except (OSError, subprocess.CalledProcessError) as exc:  # the report lists it; the CI test fails on it
            row["error"] = f"nvdisasm: {exc}"
            return row
        if cfg.loads_before_barrier:
            row["loads_behind_barrier"] = loads_behind_barrier(sass)
        if row["grid_dependency_wait"]:
            row["loads_before_wait"] = loads_before_wait(sass)
            row["next_launched_before_wait"] = next_launched_before_wait(sass)
    try:
        log = _ptxas_log(compiled, printed.getvalue(), ptx, cfg)
    except Exception as exc:  # triton's PTXASError: how ptxas failed, then its stderr
        row["error"] = "ptxas: " + " ".join(line for line in str(exc).strip().splitlines()[:3] if line)
        return row
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    row["registers"] = int(regs.group(1)) if regs else None
    row["spill_stores"] = int(spills.group(1)) if spills else None
    row["spill_loads"] = int(spills.group(2)) if spills else None
    row["stack_bytes"] = int(stack.group(1)) if stack else None
    if row["registers"] is not None:
        row["blocks_per_sm"] = blocks_per_sm(row["registers"], row["shared_bytes"], cfg.num_warps)
    return row


_pending: list[KernelConfig] = []


def _compile_pending(index: int) -> dict:
    return compile_one(_pending[index])


def compile_all(configs: list[KernelConfig]) -> list[dict]:
    """compile_one over every config, one process per core (kernels are not picklable, so the forked
    workers inherit the list and receive indices)."""
    _pending[:] = configs
    workers = min(len(configs), os.cpu_count() or 1)
    if workers <= 1:
        return [compile_one(cfg) for cfg in configs]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_compile_pending, range(len(configs))))


def problems(row: dict) -> list[str]:
    """What is wrong with one report row (empty when the config is fine)."""
    if "error" in row:
        return [f"does not compile: {row['error']}"]
    found = []
    if row["spill_stores"] or row["spill_loads"]:
        found.append(f"spills {row['spill_stores']} B stored / {row['spill_loads']} B loaded")
    if row["shared_bytes"] > H100_SHARED_MEMORY_LIMIT:
        found.append(f"shared memory {row['shared_bytes']} B over the sm_90 limit {H100_SHARED_MEMORY_LIMIT} B")
    if row["uses_dot"] and row["tensor_core"] == "none":
        found.append("tl.dot did not become a tensor-core instruction")
    if row.get("wgmma") and row["tensor_core"] != "wgmma":
        found.append(f"tl.dot became {row['tensor_core']}, not wgmma")
    if row.get("vector_loads") == 0:
        found.append("no vectorised global load: every load is one element wide")
    if row.get("barrier_free_loops") and row.get("loop_barriers"):
        found.append(f"{row['loop_barriers']} barriers (bar.sync) inside its loops, which must have none")
    if row.get("loads_behind_barrier"):
        found.append(f"{row['loads_behind_barrier']} global loads behind its first barrier, ahead of its first product or store")
    constexprs = row["constexprs"]
    if constexprs.get("USE_PDL") and not row.get("grid_dependency_wait"):
        found.append("USE_PDL, but no griddepcontrol.wait in the PTX")
    if not constexprs.get("USE_PDL") and row.get("grid_dependency_wait"):
        found.append("a griddepcontrol.wait in the PTX, without USE_PDL")
    if row.get("grid_dependency_wait"):
        expected = row.get("expected_loads_before_wait")
        if expected is None or row["loads_before_wait"] != expected:
            found.append(f"{row['loads_before_wait']} global loads ahead of the grid dependency wait, expected {expected}")
        if row["next_launched_before_wait"] != bool(constexprs.get("NEXT_LAUNCHED")):
            found.append(f"the next kernel launched ahead of the wait: {row['next_launched_before_wait']}, NEXT_LAUNCHED:"
                         f" {bool(constexprs.get('NEXT_LAUNCHED'))}")  # fmt: skip
    prefetches = row.get("expected_loads_before_wait") if constexprs.get("PREFETCH_L2") else 0
    if row.get("l2_prefetches_before_wait", 0) != prefetches:
        found.append(f"{row['l2_prefetches_before_wait']} L2 bulk prefetches ahead of the grid dependency wait, expected"
                     f" {prefetches}")  # fmt: skip
    return found


def markdown(rows: list[dict]) -> str:
    lines = [
        "| op | kernel | shape | constexprs | warps | stages | regs | spills (st/ld B) | shared B | blocks/SM | tensor core "
        "| vector loads | loop barriers | loads behind a barrier | loads before the PDL wait | only under | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        constexprs = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        issues = problems(r)
        status = "ok" if not issues else "; ".join(issues)
        option = r.get("run_option") or "-"
        if "error" in r:
            lines.append(
                f"| {r['op']} | {r['kernel']} | {r['shape']} | {constexprs} | {r['num_warps']} | {r['num_stages']} "
                f"| - | - | - | - | - | - | - | - | - | {option} | {status} |"
            )
            continue
        tc = r["tensor_core"] if r["uses_dot"] else "n/a"
        behind = r.get("loads_behind_barrier", "-")
        lines.append(
            f"| {r['op']} | {r['kernel']} | {r['shape']} | {constexprs} | {r['num_warps']} | {r['num_stages']} "
            f"| {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes']} | {r.get('blocks_per_sm', '-')} | {tc} "
            f"| {r['vector_loads']} | {r['loop_barriers']} | {behind} | {r.get('loads_before_wait', '-')} | {option} | {status} |"
        )
    return "\n".join(lines) + "\n"


def toolchain() -> dict:
    """The Triton and ptxas versions the report was made with (register counts depend on both)."""
    import triton

    ptxas = _ptxas()
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release ([\d.]+)", version)
    return {"triton": triton.__version__, "ptxas": f"{os.path.basename(ptxas)} (CUDA {release.group(1) if release else '?'})"}


def document(report: dict) -> str:
    """The Markdown file: title, what was compiled with which toolchain, the table."""
    tools = report["toolchain"]
    return (
        "# sm_90 compile report\n\nEvery launch config the launchers can pick at the model's shapes, compiled "
        "ahead of time for the H100 on a CPU machine (`python -m aurora_kernels.compile_report`): registers "
        "per thread, spills, shared memory, how many blocks an SM holds at once (by those and the warps), "
        "whether the dots became tensor-core instructions, how many "
        "16-byte global loads the PTX has, how many barriers (bar.sync) its loops hold (a GEMV's must "
        "hold none), for the latency-bound decode attention's kernels how many global loads the SASS issues "
        "behind the first barrier, ahead of the first product or store (must be none), and for the kernels "
        "launched under programmatic dependent launch how many it issues before waiting for the kernel before "
        '(only reads of what that kernel cannot be writing). "Only under": the run option (`RunOptions`, off by '
        "default) without which no launcher picks the config; the test suite compiles the others "
        f"(`--default-options`).\n\nToolchain: triton {tools['triton']}, {tools['ptxas']}.\n\n" + markdown(report["rows"])
    )


def run_report(
    timeout: float = 900, triton_path: str | None = None, dtypes: tuple = (), ops: tuple = (), default_options: bool = False
) -> dict:
    """Run the report in a subprocess without TRITON_INTERPRET; returns {"toolchain", "rows"}.
    triton_path: a folder holding another Triton (`pip install --target DIR triton==3.6.0`), put first
    on the subprocess's path, to check the kernels with the compiler a GPU machine has. dtypes: only
    the configs of these dtype labels ("bf16", "fp16", "fp32"); all when empty. ops: only these ops'
    configs; all when empty. default_options: leave out the configs that only an opt-in run option
    launches (`KernelConfig.run_option`)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(triton_path), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "aurora_kernels.compile_report",
                "--json",
                out,
                "--quiet",
                *[arg for label in dtypes for arg in ("--dtype", label)],
                *[arg for op in ops for arg in ("--op", op)],
                *(["--default-options"] if default_options else []),
            ],
            env=env,
            check=False,  # exit status 1 means some config has problems: the caller reads them from the rows
            timeout=timeout,
        )
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--json", type=output_file, help="write the rows as JSON here")
    parser.add_argument("--markdown", type=output_file, help="write the table as Markdown here")
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    parser.add_argument(
        "--op", action="append", choices=sorted({cfg.op for cfg in all_configs()}), help="only this op's configs (repeatable)"
    )
    parser.add_argument(
        "--dtype", action="append", choices=sorted(DTYPE_LABELS.values()), help="only the configs of this dtype (repeatable)"
    )
    parser.add_argument(
        "--default-options",
        action="store_true",
        help="leave out the configs that only an opt-in run option (RunOptions, off by default) launches",
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("run without TRITON_INTERPRET=1: interpreted kernels cannot be compiled")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silences triton 3.9's notice; same default
    rows = compile_all(
        [
            cfg
            for cfg in all_configs()
            if (not args.op or cfg.op in args.op)
            and (not args.dtype or cfg.dtype in args.dtype)
            and not (args.default_options and cfg.run_option)
        ]
    )
    report = {"toolchain": toolchain(), "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(document(report))
    if not args.quiet:
        print(f"triton {report['toolchain']['triton']}, {report['toolchain']['ptxas']}\n")
        print(markdown(rows))
    bad = [r for r in rows if problems(r)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
