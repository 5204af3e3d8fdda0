"""The one place that decides how a kernel's tl.dot runs.

- fp16/bf16 operands on a GPU: tensor cores (wgmma/mma), fp32 accumulation.
- fp32 operands: input_precision="ieee", so fp32 inputs meet the fp32 parity bound (Triton's default
  for fp32 dots is tf32, about 3e-4 relative error).
- under the Triton interpreter, bf16 operands are up-cast to fp32 first: the interpreter stores bf16
  as uint16 and would multiply the raw bits (SPEC, Environments).
"""

import torch
import triton
import triton.language as tl

from aurora_kernels.ops._autotune import INTERPRETER


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """Whether a kernel's dots on `dtype` operands run in fp32 (the DOT_IN_FP32 constexpr)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and INTERPRETER)


@triton.jit
def dot_acc(a, b, acc, DOT_IN_FP32: tl.constexpr):
    """acc + a @ b with fp32 accumulation."""
    if DOT_IN_FP32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)
