"""The public API matches the SPEC's table: names, references, backends, no silent fall back."""

import inspect

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels.ops import reference
from aurora_kernels.testing import randn


@pytest.mark.parametrize("name", ak.OPS)
def test_every_op_has_a_reference_with_its_signature(name):
    public, ref = getattr(ak, name), getattr(reference, name)
    params = [p for p in inspect.signature(public).parameters.values() if p.name != "backend"]
    assert params == list(inspect.signature(ref).parameters.values())
    backend = inspect.signature(public).parameters["backend"]
    assert backend.default == "triton" and backend.kind is inspect.Parameter.KEYWORD_ONLY


def _example_args(name, device, gen):
    f = lambda *shape: randn(shape, torch.float32, device, gen)  # noqa: E731
    q = f(1, 3, 2, 16)
    seqlens = torch.tensor([2], dtype=torch.int32, device=device)
    cu = torch.tensor([0, 3], dtype=torch.int32, device=device)
    return {
        "token_pool": (f(1, 16, 8), (4, 4)),
        "token_mlp_compress": (f(1, 16, 8), f(16, 16), f(16), f(4, 16), f(4)),
        "attention": (q, q, q),
        "attention_varlen": (q[0], q[0], q[0], cu, cu, 3, 3),
        "decode_attention": (q[:, :1], f(1, 8, 2, 16), f(1, 8, 2, 16), seqlens),
        "rms_norm": (f(3, 16), f(16)),
        "layer_norm": (f(3, 16), f(16), f(16)),
        "apply_rotary": (q, q, f(3, 16), f(3, 16)),
        "silu_and_mul": (f(3, 16),),
        "gelu_tanh": (f(3, 16),),
        "linear": (f(3, 16), f(4, 16)),
        "rms_norm_linear": (f(3, 16), f(16), f(4, 16)),
        "silu_and_mul_linear": (f(3, 16), f(4, 8)),
        "rms_norm_linear_silu_and_mul": (f(3, 16), f(16), f(8, 16)),
    }[name]


@pytest.mark.parametrize("name", ak.OPS)
def test_calls_are_counted_per_backend(name, device, gen):
    args = _example_args(name, device, gen)
    with ak.count_calls() as calls:
        getattr(ak, name)(*args, backend="reference")
        getattr(ak, name)(*args)
    assert dict(calls) == {(name, "reference"): 1, (name, "triton"): 1}


@pytest.mark.parametrize("name", ak.OPS)
def test_the_kernels_are_inference_only(name, device, gen):
    """In grad mode an op still runs (the same kernel, the same answer), and a backward through it
    raises, where it used to drop the gradient without a word; decode_attention, which writes its
    cache in place and so cannot take an autograd formula, refuses grad mode outright."""
    args = _example_args(name, device, gen)
    with torch.no_grad():
        expected = getattr(ak, name)(*args)
    args = (args[0].detach().requires_grad_(), *args[1:])
    if name == "decode_attention":
        with pytest.raises(RuntimeError, match=r"decode_attention: writes k_cache, v_cache in place .* torch.no_grad\(\)"):
            getattr(ak, name)(*args)
        return
    out = getattr(ak, name)(*args)
    outs, expected = (out, expected) if isinstance(out, tuple) else ((out,), (expected,))
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o.detach(), e, rtol=0, atol=0)
    # the message names the function the user called (attention_varlen, rms_norm_linear), not a shared kernel
    with pytest.raises(RuntimeError, match=rf"^{name}: .*no backward \(inference only\).*backend='reference'"):
        sum(o.sum() for o in outs).backward()
    assert args[0].grad is None
