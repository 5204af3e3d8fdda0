"""Registry of launch configs for the ahead-of-time sm_90 compile check (`compile_report`).

Op modules register with `@register_compile_configs` a function listing the KernelConfigs their
launcher can pick at the model's shapes, built by the same config-picking code the launcher uses.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

H100_SHARED_MEMORY_LIMIT = 232448  # bytes of shared memory one block may use on sm_90 (227 KB)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One launch config of one kernel, as the launcher would pick it for `shape`.

    signature: the kernel's runtime arguments, name -> Triton type ("*bf16", "i32", "i64", "fp32");
    constexprs: the constexpr arguments; aligned: arguments the launcher's runtime specialisation
    would see as divisible by 16 (pointers from the caching allocator, strides of aligned rows);
    uses_dot: its tl.dot must become tensor-core instructions; wgmma: Hopper's warpgroup MMA ones,
    not sm_80's mma.sync; barrier_free_loops: its loops must
    hold no barrier (a stream over memory whose every step would otherwise wait for the block);
    loads_before_barrier: every global load ahead of its first tensor-core product (or, with none,
    its first global store) must be issued before its first barrier (a latency-bound kernel: a load
    issued behind a barrier waits for the values that barrier waits for, so the program goes to
    memory twice in a row). loads_before_wait (USE_PDL configs): how many global loads its SASS issues
    ahead of its grid dependency wait, while the kernel before it still runs (ops/_pdl.py: only what
    that kernel cannot write); with PREFETCH_L2, also how many L2 prefetches (one a weight row).
    run_option: the RunOptions field, off by default, without which nothing launches this config
    (`compile_report --default-options` leaves such configs out).
    """

    op: str
    shape: str
    kernel: object
    signature: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    aligned: tuple = ()
    uses_dot: bool = False
    wgmma: bool = False
    barrier_free_loops: bool = False
    loads_before_barrier: bool = False
    dtype: str = ""  # the label of the dtype the config is typed for ("bf16", "fp16", "fp32")
    loads_before_wait: int | None = None
    run_option: str = ""


def pointer_type(dtype) -> str:
    """Triton's signature type for a pointer to a tensor of torch dtype `dtype`."""
    names = {"torch.bfloat16": "*bf16", "torch.float16": "*fp16", "torch.float32": "*fp32", "torch.int32": "*i32"}
    return names[str(dtype)]


_config_sources: list[Callable[[], list[KernelConfig]]] = []


def register_compile_configs(source: Callable[[], list[KernelConfig]]):
    """Decorator for an op's function listing its KernelConfigs at the model's shapes."""
    _config_sources.append(source)
    return source


def all_configs() -> list[KernelConfig]:
    import aurora_kernels  # noqa: F401  (imports every op module, which registers its configs)

    return [cfg for source in _config_sources for cfg in source()]


DTYPE_LABELS = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}


def configs_per_dtype(dtypes, *, shape: str, signature: dict, **fields) -> list[KernelConfig]:
    """One KernelConfig per dtype: "*T" in the signature becomes a pointer to that dtype (and
    "tensordesc<T[BN, BK]>" a TMA descriptor of it), and a kernel's
    STRIDE_MULTIPLE constexprs (see `ops._layout.stride_multiple`) are the 16-byte multiples that the
    model's strides (head dims 64/72/128, row widths 1152/1536/8960, fused projections) all are;
    cos/sin tables (TABLE_STRIDE_MULTIPLE) are taken as fp32."""
    configs = []
    kernel_args = fields["kernel"].arg_names
    for dtype in dtypes:
        element = pointer_type(dtype)[1:]
        typed = {
            name: (pointer_type(dtype) if kind == "*T" else kind.replace("<T[", f"<{element}["))
            for name, kind in signature.items()
        }
        multiples = {name: 16 // size for name, size in (("STRIDE_MULTIPLE", dtype.itemsize), ("TABLE_STRIDE_MULTIPLE", 4))
                     if name in kernel_args}  # fmt: skip
        per_dtype = {**fields, "constexprs": {**multiples, **fields.get("constexprs", {})}}
        label = DTYPE_LABELS[str(dtype)]
        configs.append(KernelConfig(shape=f"{shape} {label}", signature=typed, dtype=label, **per_dtype))
    return configs
