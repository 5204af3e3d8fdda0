"""Every class of bad argument gets a ValueError/TypeError naming the argument, before any launch.

Run with backend="reference" too: validation is the same for both backends, so these tests hold
whether or not an op's kernel exists yet.
"""

import os
import subprocess
import sys

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels import _validation
from aurora_kernels.testing import randn
from tests.catalogue import cu_seqlens

BACKENDS = ["triton", "reference"]


@pytest.fixture
def f32(device, gen):
    return lambda *shape: randn(shape, torch.float32, device, gen)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_type(backend, f32):
    with pytest.raises(TypeError, match="x: expected a torch.Tensor, got list"):
        ak.gelu_tanh([1.0, 2.0], backend=backend)
    # an index argument given as a list is named too, not met with an AttributeError deep inside
    q, cache = f32(2, 1, 4, 16), f32(2, 8, 2, 16)
    with pytest.raises(TypeError, match="cache_seqlens: expected a torch.Tensor, got list"):
        ak.decode_attention(q, cache, cache.clone(), [3, 5], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_dtype(backend, f32):
    with pytest.raises(TypeError, match="x: expected dtype float16/bfloat16/float32, got torch.int64"):
        ak.silu_and_mul(torch.arange(8).view(2, 4), backend=backend)
    q = f32(1, 4, 2, 16)
    with pytest.raises(TypeError, match="v: expected dtype torch.float32"):
        ak.attention(q, q, q.half(), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_shape(backend, f32):
    q, k = f32(2, 4, 6, 16), f32(2, 4, 4, 16)
    with pytest.raises(ValueError, match="k: expected a number of KV heads that divides the 6 query heads"):
        ak.attention(q, k, k, backend=backend)
    with pytest.raises(ValueError, match="q: expected 4 dims \\[B, Lq, Hq, D\\]"):
        ak.attention(q[0], k, k, backend=backend)
    big = f32(1, 2, 1, 320)
    with pytest.raises(ValueError, match="q: expected a head dim D in \\[1, 256\\], got 320"):
        ak.attention(big, big, big, backend=backend)
    with pytest.raises(
        ValueError, match="grid_size: expected \\(H, W\\) with H\\*W = 15, the tokens of x \\(dim 1\\), got \\(4, 4\\)"
    ):
        ak.token_pool(f32(1, 15, 8), (4, 4), backend=backend)
    x, w1, b1, w2, b2 = f32(2, 16, 8), f32(32, 16), f32(32), f32(4, 32), f32(4)
    with pytest.raises(ValueError, match="w2: expected shape \\[4, 32\\] \\[M, D\\]"):
        ak.token_mlp_compress(x, w1, b1, f32(4, 31), b2, backend=backend)
    with pytest.raises(ValueError, match="b1: expected shape \\[32\\]"):
        ak.token_mlp_compress(x, w1, f32(31), w2, b2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_device(backend, f32):
    x = f32(4, 32)
    meta_weight = torch.empty(32, device="meta")
    with pytest.raises(ValueError, match="weight: expected a tensor on .* \\(the device of x\\), got meta"):
        ak.rms_norm(x, meta_weight, backend=backend)


def test_triton_backend_needs_cuda_or_interpreter(monkeypatch, device, f32):
    if device.type != "cpu":
        pytest.skip("the CPU-without-interpreter error is about CPU tensors")
    monkeypatch.setattr(_validation, "INTERPRETER", False)  # as in a process started without it
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="x: backend='triton' expects a CUDA tensor"):
        ak.gelu_tanh(f32(4, 4))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="x: TRITON_INTERPRET=1 was set after triton or aurora_kernels was imported"):
        ak.gelu_tanh(f32(4, 4))


@pytest.mark.parametrize("first", ["triton", "aurora_kernels"])
def test_interpreter_switched_on_after_import_is_explained(first):
    """Setting TRITON_INTERPRET=1 after an import is our one-line explanation, not Triton's
    "0 active drivers" (or its "outside of the scope of a kernel")."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = (f"import os, {first}, torch\nos.environ['TRITON_INTERPRET'] = '1'\nimport aurora_kernels as ak\n"
              "ak.gelu_tanh(torch.ones(4, 4))")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith("ValueError: x: TRITON_INTERPRET=1 was set after triton"), run.stderr[
        -2000:
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_last_dim(backend, f32):
    x = f32(16, 8).t()
    with pytest.raises(ValueError, match="x: expected the last dim to be contiguous \\(stride 1\\)"):
        ak.layer_norm(x, x[0], x[0], backend=backend)
    q = f32(1, 16, 2, 4).transpose(1, 3)  # [1, 4, 2, 16] with a strided last dim
    with pytest.raises(ValueError, match="q: expected the last dim to be contiguous"):
        ak.attention(q, q, q, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_divisibility(backend, f32):
    with pytest.raises(ValueError, match="grid_size\\[1\\]: expected a multiple of kernel_size \\(2\\), got 5"):
        ak.token_pool(f32(1, 20, 8), (4, 5), 2, backend=backend)
    with pytest.raises(ValueError, match="x: expected an even last dim"):
        ak.silu_and_mul(f32(2, 7), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_choices(backend, f32):
    with pytest.raises(ValueError, match="mode: expected one of \\('avg', 'max'\\), got 'sum'"):
        ak.token_pool(f32(1, 16, 8), (4, 4), 2, "sum", backend=backend)
    x = f32(1, 4, 8)
    with pytest.raises(ValueError, match="activation: expected one of"):
        ak.token_mlp_compress(x, f32(8, 4), f32(8), f32(2, 8), f32(2), "relu", backend=backend)
    with pytest.raises(ValueError, match="backend: expected one of \\('triton', 'reference'\\), got 'cuda'"):
        ak.gelu_tanh(x, backend="cuda")


def _varlen_args(f32, device, lengths=(3, 0, 5)):
    total = sum(lengths)
    q, k = f32(total, 4, 16), f32(total, 2, 16)
    return q, k, cu_seqlens(lengths, device), max(lengths)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cu_seqlens(backend, f32, device):
    q, k, cu, longest = _varlen_args(f32, device)
    with pytest.raises(TypeError, match="cu_seqlens_q: expected dtype int32, got torch.int64"):
        ak.attention_varlen(q, k, k, cu.long(), cu, longest, longest, backend=backend)
    with pytest.raises(ValueError, match="cu_seqlens_k: expected shape \\[4\\]"):
        ak.attention_varlen(q, k, k, cu, cu[:3], longest, longest, backend=backend)
    with ak.value_checks("always"):
        bad = torch.tensor([0, 5, 3, 8], dtype=torch.int32, device=device)
        with pytest.raises(ValueError, match="cu_seqlens_q: expected non-decreasing offsets"):
            ak.attention_varlen(q, k, k, bad, cu, longest, longest, backend=backend)
        with pytest.raises(ValueError, match="max_seqlen_k: expected >= the longest sequence in cu_seqlens_k \\(5\\), got 4"):
            ak.attention_varlen(q, k, k, cu, cu, longest, 4, backend=backend)
        short = torch.tensor([0, 3, 3, 7], dtype=torch.int32, device=device)
        with pytest.raises(ValueError, match="cu_seqlens_q: expected the last offset to equal the number of packed rows \\(8\\)"):
            ak.attention_varlen(q, k, k, short, cu, longest, longest, backend=backend)


def _decode_args(f32, device, paged):
    q = f32(2, 1, 4, 16)
    if paged:
        k_cache = f32(6, 16, 2, 16)
        block_table = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32, device=device)
    else:
        k_cache, block_table = f32(2, 40, 2, 16), None
    seqlens = torch.tensor([3, 20], dtype=torch.int32, device=device)
    return q, k_cache, seqlens, block_table


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("paged", [False, True])
def test_decode_cache_limits(backend, paged, f32, device):
    q, k_cache, seqlens, block_table = _decode_args(f32, device, paged)
    capacity = 48 if paged else 40
    too_long = torch.tensor([3, capacity], dtype=torch.int32, device=device)
    new_kv = f32(2, 1, 2, 16)
    with ak.value_checks("always"):
        with pytest.raises(ValueError, match=f"cache_seqlens: sequence 1 needs {capacity} \\+ 1 appended token positions"):
            ak.decode_attention(
                q, k_cache, k_cache.clone(), too_long, k=new_kv, v=new_kv, block_table=block_table, backend=backend
            )
    with pytest.raises(TypeError, match="cache_seqlens: expected dtype int32"):
        ak.decode_attention(q, k_cache, k_cache, seqlens.long(), block_table=block_table, backend=backend)
    with pytest.raises(ValueError, match="k, v: expected both"):
        ak.decode_attention(q, k_cache, k_cache, seqlens, k=new_kv, block_table=block_table, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_table(backend, f32, device):
    q, k_cache, seqlens, block_table = _decode_args(f32, device, paged=True)
    out_of_range = block_table.clone()
    out_of_range[1, 1] = 6  # sequence 1 (20 tokens) uses blocks 0 and 1 of its row
    with ak.value_checks("always"):
        with pytest.raises(ValueError, match="block_table: expected block indices in \\[0, 6\\), got 6 at \\[1, 1\\]"):
            ak.decode_attention(q, k_cache, k_cache, seqlens, block_table=out_of_range, backend=backend)
    unused = block_table.clone()
    unused[0, 2] = -1  # sequence 0 (3 tokens) never reads its third entry: padding is allowed
    ak.decode_attention(q, k_cache, k_cache, seqlens, block_table=unused, backend="reference")
    with pytest.raises(TypeError, match="block_table: expected dtype int32"):
        ak.decode_attention(q, k_cache, k_cache, seqlens, block_table=block_table.long(), backend=backend)
    with pytest.raises(ValueError, match="k_cache: expected a paged block size in"):
        ak.decode_attention(q, f32(6, 12, 2, 16), f32(6, 12, 2, 16), seqlens, block_table=block_table, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_rotary_tables(backend, f32, device):
    q, k_cache, seqlens, _ = _decode_args(f32, device, paged=False)
    new_kv, table = f32(2, 1, 2, 16), f32(64, 16)
    with pytest.raises(ValueError, match="rotary_cos, rotary_sin: expected both"):
        ak.decode_attention(q, k_cache, k_cache, seqlens, new_kv, new_kv, rotary_cos=table, backend=backend)
    with pytest.raises(ValueError, match="rotary_cos, rotary_sin: expected k and v too"):
        ak.decode_attention(q, k_cache, k_cache, seqlens, rotary_cos=table, rotary_sin=table, backend=backend)
    with pytest.raises(ValueError, match="rotary_sin: expected shape \\[\\*, 16\\] \\[max_positions, D\\], got \\[64, 8\\]"):
        ak.decode_attention(
            q, k_cache, k_cache, seqlens, new_kv, new_kv, rotary_cos=table, rotary_sin=table[:, :8], backend=backend
        )
    with pytest.raises(
        ValueError, match="rotary_sin: expected shape \\[64, 16\\] \\(the shape of rotary_cos\\), got \\[10, 16\\]"
    ):
        ak.decode_attention(
            q, k_cache, k_cache, seqlens, new_kv, new_kv, rotary_cos=table, rotary_sin=table[:10], backend=backend
        )
    with pytest.raises(TypeError, match="rotary_sin: expected a torch.Tensor, got list"):
        ak.decode_attention(
            q, k_cache, k_cache, seqlens, new_kv, new_kv, rotary_cos=table, rotary_sin=[0.0] * 16, backend=backend
        )
    with pytest.raises(TypeError, match="rotary_cos: expected dtype float16/bfloat16/float32, got torch.int64"):
        ak.decode_attention(
            q, k_cache, k_cache, seqlens, new_kv, new_kv, rotary_cos=table.long(), rotary_sin=table, backend=backend
        )
    with pytest.raises(ValueError, match="rotary_cos: expected the last dim to be contiguous"):
        ak.decode_attention(
            q, k_cache, k_cache, seqlens, new_kv, new_kv, rotary_cos=f32(16, 64).t(), rotary_sin=table, backend=backend
        )
    with ak.value_checks("always"):
        with pytest.raises(
            ValueError, match="rotary_cos: expected a row for every position cache_seqlens\\[b\\], got 20 rows and position 20"
        ):
            ak.decode_attention(
                q,
                k_cache,
                k_cache.clone(),
                seqlens,
                new_kv,
                new_kv,
                rotary_cos=table[:20],
                rotary_sin=table[:20],
                backend=backend,
            )
    odd_q, odd_cache, odd_kv, odd_table = f32(2, 1, 4, 15), f32(2, 40, 2, 15), f32(2, 1, 2, 15), f32(64, 15)
    with pytest.raises(ValueError, match="q: expected an even head dim D with rotary_cos/rotary_sin, got 15"):
        ak.decode_attention(
            odd_q, odd_cache, odd_cache, seqlens, odd_kv, odd_kv, rotary_cos=odd_table, rotary_sin=odd_table, backend=backend
        )


def test_value_checks_can_be_switched_off(f32, device):
    q, k, cu, longest = _varlen_args(f32, device)
    with ak.value_checks("never"):
        # the wrong max_seqlen is now the caller's contract: validation reads no tensor contents
        ak.attention_varlen(q, k, k, cu, cu, longest, longest, backend="reference")
    with pytest.raises(ValueError, match="mode: expected one of"):
        ak.set_value_checks("sometimes")


def test_switches_and_modules_refuse_what_they_would_read_as_truthy(monkeypatch):
    """set_autotuning("no") and using_programmatic_dependent_launch("off") used to switch them on."""
    from aurora_kernels.ops import _autotune, _pdl

    for switch in (ak.set_autotuning, ak.set_programmatic_dependent_launch):
        with pytest.raises(TypeError, match="enabled: expected a bool, got str"):
            switch("no")
    for block in (ak.autotuning, ak.using_programmatic_dependent_launch, _pdl.using_weight_prefetch):
        with pytest.raises(TypeError, match="enabled: expected a bool, got NoneType"):
            block(None).__enter__()
    assert ak.programmatic_dependent_launch() is False  # nothing was switched on on the way
    monkeypatch.setenv("AURORA_AUTOTUNE", "off")
    with pytest.raises(ValueError, match="AURORA_AUTOTUNE: expected 0 or 1 in the environment, got 'off'"):
        _autotune._autotune_from_environment()
    with pytest.raises(ValueError, match="hidden_size: expected an int >= 1, got 0"):
        ak.RMSNorm(0)
    with pytest.raises(ValueError, match="eps: expected a non-negative float, got -1.0"):
        ak.RMSNorm(8, eps=-1.0)
