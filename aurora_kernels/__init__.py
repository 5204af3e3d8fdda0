"""aurora_kernels: fused Triton kernels for the AuroraEdge-V-2B compression-fusion VLM.

Every op takes `backend="triton"` (default: the kernel) or `backend="reference"` (the eager
PyTorch op of the same name in `aurora_kernels.ops.reference`). README.md has the table of ops; docs/ops.md their contracts.
"""

from aurora_kernels import layers
from aurora_kernels._dispatch import count_calls
from aurora_kernels._validation import set_value_checks, value_checks
from aurora_kernels.ops import reference
from aurora_kernels.ops._autotune import autotuning, set_autotuning
from aurora_kernels.ops._pdl import (
    programmatic_dependent_launch,
    set_programmatic_dependent_launch,
    using_programmatic_dependent_launch,  # fmt: skip
)
from aurora_kernels.ops.attention import attention, attention_varlen
from aurora_kernels.ops.decode_attention import decode_attention
from aurora_kernels.ops.fused_linear import linear, rms_norm_linear, rms_norm_linear_silu_and_mul, silu_and_mul_linear
from aurora_kernels.ops.gelu_tanh import gelu_tanh
from aurora_kernels.ops.layer_norm import layer_norm
from aurora_kernels.ops.rms_norm import RMSNorm, rms_norm
from aurora_kernels.ops.rotary import apply_rotary
from aurora_kernels.ops.silu_and_mul import silu_and_mul
from aurora_kernels.ops.token_mlp_compress import token_mlp_compress
from aurora_kernels.ops.token_pool import token_pool

__version__ = "0.1.0"

# The SPEC's public API table, in its order, then the decode projections with their fused prologues
# (ops/fused_linear.py); the references list the same names.
OPS = tuple(reference.__all__)

__all__ = [*OPS, "RMSNorm", "autotuning", "count_calls", "set_autotuning", "set_value_checks", "value_checks", "OPS", "programmatic_dependent_launch",
           "set_programmatic_dependent_launch", "using_programmatic_dependent_launch"]  # fmt: skip
