"""How the model runs, apart from what it is.

`AuroraConfig` holds the architecture (what a checkpoint fixes); `RunOptions` holds the run-time
choices that change no result beyond rounding: which kernels a step uses and how they are launched.
A model holds one `RunOptions` (`model.options`), replaced whole by `model.set_options(...)`; a
runtime drops what it captured or compiled under the options before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# the most sequences whose decode step fuse_batched_projections fuses: one wgmma tile of rows
# (fused_linear.WGMMA_BLOCK_M)
MAX_FUSED_BATCH = 64


@dataclass(frozen=True)
class RunOptions:
    # One-sequence decode steps: each projection with the norm or activation that feeds it as one
    # kernel (rms_norm_linear, linear, silu_and_mul_linear: a GEMV) instead of cuBLAS plus a
    # separate op. bench/model_e2e.py times both settings; the figures that chose them:
    # docs/performance-log.md.
    fuse_decode_projections: bool = True
    # The same for decode steps of 2..MAX_FUSED_BATCH sequences (up to fused_linear.GEMV_MAX_ROWS on
    # the GEMV, more on the ops' tensor-core tiles, wgmma on sm_90, swapped up to 32 rows; more rows
    # than one tile re-read the weight, so larger batches keep cuBLAS). Off until a GPU run shows these steps beat cuBLAS
    # plus the separate op (bench/bench_fused_linear.py's rows at B > 1, bench/model_e2e.py's
    # "triton-fused-batched" rows; the figures: docs/performance-log.md).
    fuse_batched_projections: bool = False
    # generate launches fused_linear and decode_attention with programmatic dependent launch on
    # GPUs of sm_90+ (ops/_pdl.py): each kernel starts while the one before finishes (the gain:
    # docs/performance-log.md). Scoped to generate, where no kernel writes the weights: the GEMV
    # loads its first weight tile before its wait.
    programmatic_dependent_launch: bool = True
    # Under programmatic dependent launch, each one-row GEMV also asks the L2 for the rest of its
    # program's weight rows before it waits for the kernel before (ops/_pdl.py), so the weights
    # stream in during that kernel's tail; and decode attention's merge lets the o_proj GEMV launch
    # at its start, so that o_proj reads its weights during the attention. Off until a GPU run shows
    # the step gains (bench/model_e2e.py's "triton-fused-prefetch" rows; the figures:
    # docs/performance-log.md).
    weight_prefetch: bool = False
    # Fused decode steps (one sequence; more under fuse_batched_projections) compute SwiGLU's
    # silu(gate) * up in the gate_up projection's epilogue (rms_norm_linear_silu_and_mul), and
    # down_proj as a plain projection (linear), instead of the activation in down_proj's prologue
    # (silu_and_mul_linear), where each of down_proj's programs recomputes it over its K from both
    # halves of gate_up. Off until a GPU run shows the step gains (bench/model_e2e.py's
    # "triton-fused-activation-in-gate-up" rows; the figures: docs/performance-log.md).
    activation_in_gate_up: bool = False
    # Fused decode steps add the residual stream in o_proj's and down_proj's epilogues (linear and
    # silu_and_mul_linear with residual=h), so that the norms' projections after them read h alone,
    # instead of x and the residual, and write no h. Off until a GPU run shows the step gains
    # (bench/model_e2e.py's "triton-fused-residual-in-epilogue" rows; the figures:
    # docs/performance-log.md).
    residual_in_epilogue: bool = False
    # Prefill's image encoder (vision tower, projector, compressor: static shapes, ~300 of a B=1
    # prefill's ~720 launches) replayed from a CUDA graph, one per batch shape, captured on that
    # shape's first prefill and kept (MAX_ENCODER_GRAPHS in model/aurora.py, least recently used
    # dropped): an eager prefill is host-bound. A Runtime's captured prefill holds the encoder too and
    # needs none of this. Needs the model on a CUDA device; in grad mode the encoder runs eagerly (a
    # graph holds no autograd history). Off until a GPU has timed it.
    encoder_cuda_graphs: bool = False

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, bool):
                raise TypeError(f"{field.name}: expected a bool, got {value!r}")

    def fuses_decode_projections(self, batch: int) -> bool:
        """Whether a decode step of `batch` sequences runs its projections on the fused ops."""
        if batch == 1:
            return self.fuse_decode_projections
        return self.fuse_batched_projections and batch <= MAX_FUSED_BATCH

    def puts_activation_in_gate_up(self, batch: int) -> bool:
        """Whether a decode step of `batch` sequences computes SwiGLU in gate_up's epilogue."""
        return self.activation_in_gate_up and self.fuses_decode_projections(batch)

    def adds_residual_in_epilogue(self, batch: int) -> bool:
        """Whether a decode step of `batch` sequences adds the residual stream in the projections'
        epilogues."""
        return self.residual_in_epilogue and self.fuses_decode_projections(batch)

    def replace(self, **changes) -> "RunOptions":
        """These options with `changes`; an unknown name is an error that lists the known ones."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"{', '.join(unknown)}: not a run option; expected one of {sorted(known)}")
        return dataclasses.replace(self, **changes)
