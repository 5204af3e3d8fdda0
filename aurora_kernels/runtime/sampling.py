"""Sampling the next token on the device, inside the decode step: no host work per step, static
shapes, nothing a CUDA graph or torch.compile cannot hold.

Greedy is the argmax. Sampling draws from softmax(logits / temperature) restricted to the top_k
most likely tokens (0: all) whose cumulative probability before them is under top_p (the nucleus;
the most likely token always stays), by the Gumbel-max trick: the argmax of the kept logits plus
Gumbel noise is a sample of their softmax. The noise is not drawn from a torch Generator (whose
state a CUDA graph would have to be told about): it is a hash of (seed, step, row, vocabulary
index), integer arithmetic on the device, so a seed reproduces a request exactly, eager or
replayed, and every step of a graph replay draws fresh noise from the step counter it already
keeps. The parameters are device tensors, so one captured step serves any temperature, top_k,
top_p and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aurora_kernels._validation import check_int

# A 32-bit integer hash (x ^= x >> 16; x *= A; x ^= x >> 15; x *= B; x ^= x >> 15; constants from the
# "hash prospector"), both multipliers under 2**31: a product of a 32-bit value and one stays under
# 2**63, so int64 arithmetic never overflows, eager or compiled (Inductor folds constants exactly).
_HASH_A, _HASH_B = 0x21F0AAAD, 0x735A2D97
_LOW_32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. do_sample False: greedy (the other fields unused)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # keep the k most likely tokens; 0: all
    top_p: float = 1.0  # keep the most likely tokens up to this cumulative probability
    seed: int = 0  # taken modulo 2**32

    def __post_init__(self):
        if not isinstance(self.do_sample, bool):
            raise TypeError(f"do_sample: expected a bool, got {type(self.do_sample).__name__}")
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected a float > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: expected a float in (0, 1], got {self.top_p}")
        check_int("top_k", self.top_k, minimum=0)
        check_int("seed", self.seed, minimum=0)


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijection of 32-bit values (held in int64) that spreads every input bit over the output."""
    x = x ^ (x >> 16)
    x = (x * _HASH_A) & _LOW_32
    x = x ^ (x >> 15)
    x = (x * _HASH_B) & _LOW_32
    return x ^ (x >> 15)


def uniform_noise(seed: torch.Tensor, step: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Uniform floats in (0, 1), [rows, vocab], a function of (seed, step, row, column) alone."""
    rows, cols = shape
    device = seed.device
    stream = _hash32(_hash32(seed & _LOW_32) ^ (step & _LOW_32))  # [1]: one stream per (seed, step)
    row_keys = _hash32(stream ^ torch.arange(rows, device=device, dtype=torch.int64))[:, None]
    bits = _hash32(row_keys ^ torch.arange(cols, device=device, dtype=torch.int64))
    return ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # the 24 high bits: exact in float32


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, seed: torch.Tensor,
           step: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Tokens [B] sampled from logits [B, V] (device tensors temperature, top_p float32 [1]; top_k,
    seed, step int64 [1]; top_k 0 keeps every token)."""
    scaled = logits.float() / temperature
    ordered, order = scaled.sort(-1, descending=True)
    probs = torch.softmax(ordered, -1)
    before = probs.cumsum(-1) - probs  # the probability of the tokens ranked before each
    ranks = torch.arange(ordered.shape[-1], device=logits.device)
    k = torch.where(top_k > 0, top_k, ordered.shape[-1])
    keep = (ranks < k) & (before < top_p)
    keep[:, 0] = True
    gumbel = -torch.log(-torch.log(uniform_noise(seed, step, tuple(ordered.shape))))
    choice = torch.where(keep, ordered + gumbel, float("-inf")).argmax(-1, keepdim=True)
    return order.gather(-1, choice)[:, 0]
