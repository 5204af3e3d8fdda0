"""torch.library.opcheck on every custom op the package registers (torch.ops.aurora_kernels.*), with
the arguments its public function really passes: the schema declares what the op writes in place,
the fake gives the real output's shapes, dtypes and strides, the autograd registration is complete,
and AOT dispatch traces it with dynamic shapes. These are what torch.compile and CUDA-graph capture
rely on; a wrong fake or an undeclared mutation compiles into a wrong graph without an error."""

import importlib
import pkgutil

import pytest
import torch

import aurora_kernels as ak
import aurora_kernels.ops
from aurora_kernels._dispatch import CUSTOM_OP_NAMESPACE
from aurora_kernels.ops import fused_linear
from bench import harness

OPCHECK_TESTS = ("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")


def _registered_ops() -> set[str]:
    namespace = getattr(torch.ops, CUSTOM_OP_NAMESPACE)
    return {name for name in namespace._dir if name != "no_backward"}  # no_backward: the backward's signal


@pytest.fixture
def recorded(monkeypatch):
    """Each op's launcher wrapped to keep the arguments of its calls (copies, before the call)."""
    calls: dict[str, list[tuple]] = {}

    def recording(launch):
        def record(*args):
            calls.setdefault(launch.custom_op._qualified_op_name.split("::")[1], []).append(
                tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
            )
            return launch(*args)

        return record

    for module_info in pkgutil.iter_modules(aurora_kernels.ops.__path__):
        module = importlib.import_module(f"aurora_kernels.ops.{module_info.name}")
        for attribute, value in list(vars(module).items()):
            if hasattr(value, "custom_op"):
                monkeypatch.setattr(module, attribute, recording(value))
    for op, launch in list(fused_linear._LAUNCH_AS.items()):
        monkeypatch.setitem(fused_linear._LAUNCH_AS, op, recording(launch))
    return calls


def _call_every_path(device, gen):
    """Every op at the benchmark suite's small shapes in fp32 and bf16, and the paths those leave out:
    decode's append with rotary tables and splits and its write into out, the rotary cache write and
    rows by position, the residual epilogues."""
    harness.load_cases()
    for entry in harness.OPS.values():
        for dtype in (torch.float32, torch.bfloat16):
            args, kwargs = entry.small_inputs(dtype, device, gen)
            entry.public(*args, **kwargs)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    q, cache, new = randn(3, 1, 4, 32), randn(3, 24, 2, 32), randn(3, 1, 2, 32)
    lengths = torch.tensor([3, 0, 10], dtype=torch.int32, device=device)
    ak.decode_attention(q, cache, cache.clone(), lengths, new, new.clone(), rotary_cos=randn(64, 32), rotary_sin=randn(64, 32),
                        num_kv_splits=2)  # fmt: skip
    ak.decode_attention(q, cache, cache.clone(), lengths, num_kv_splits=2, out=torch.empty_like(q))
    ak.decode_attention(q, cache, cache.clone(), lengths, key_mask=randn(3, 30)[:, 6:] > 0)
    slots = torch.arange(10, dtype=torch.int64, device=device)
    q, k = randn(2, 5, 4, 32), randn(2, 5, 2, 32)
    ak.apply_rotary(
        q, k, randn(5, 32), randn(5, 32), v=k.clone(), k_cache=randn(16, 2, 32), v_cache=randn(16, 2, 32), cache_slots=slots
    )
    positions = torch.tensor([[7, 0, 3, 3, 1]], device=device)
    ak.apply_rotary(q, k, randn(8, 16), randn(8, 16), positions=positions)
    ak.apply_rotary(q, k, randn(8, 32), randn(8, 32), positions=positions, v=k.clone(), k_cache=randn(16, 2, 32),
                    v_cache=randn(16, 2, 32), cache_slots=slots)  # fmt: skip
    ak.linear(randn(2, 1, 48), randn(40, 48), randn(40), residual=randn(2, 1, 40))
    ak.silu_and_mul_linear(randn(2, 1, 96), randn(40, 48), residual=randn(2, 1, 40))
    ak.layer_norm(randn(4, 5, 64), randn(64), randn(64), residual=randn(4, 5, 64))


def test_every_custom_op_passes_opcheck(recorded, device, gen):
    _call_every_path(device, gen)
    assert set(recorded) == _registered_ops()  # every registered op was reached, and checked below
    namespace = getattr(torch.ops, CUSTOM_OP_NAMESPACE)
    for name, calls in sorted(recorded.items()):
        for args in calls:
            torch.library.opcheck(getattr(namespace, name), args, test_utils=OPCHECK_TESTS)
