"""Tensors on a GPU other than the current one: Triton launches on the current device, so every op
makes its tensors' device current for the launch, and the model's generate (CUDA graphs, streams)
runs with the model's device current. The logic is checked here with the CUDA calls mocked; the
same behaviour on two real GPUs where a machine has them."""

import contextlib
import types

import pytest
import torch

import aurora_kernels as ak
from aurora_kernels import _dispatch
from aurora_kernels.ops import reference
from aurora_kernels.runtime import runtime as runtime_module
from aurora_kernels.testing import check_op, make_generator, randn

two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")


@pytest.fixture
def cuda_device_calls(monkeypatch):
    """cuda:0 current, and a record of each device made current through torch.cuda.device."""
    made_current = []

    @contextlib.contextmanager
    def device(d):
        made_current.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", device)
    return made_current


def _on(device_name: str):
    return types.SimpleNamespace(device=torch.device(device_name))


def test_a_launch_makes_its_tensors_device_current(cuda_device_calls):
    seen = []
    launch = _dispatch.on_first_tensors_device(lambda x, n: seen.append((x.device, list(cuda_device_calls))) or n)

    assert launch(_on("cuda:1"), 7) == 7
    assert seen.pop() == (torch.device("cuda:1"), [torch.device("cuda:1")])
    cuda_device_calls.clear()
    launch(_on("cuda:0"), 7)  # already current: no switch
    launch(_on("cpu"), 7)  # the interpreter: never asks CUDA
    assert cuda_device_calls == []


def test_generate_runs_with_the_models_device_current(cuda_device_calls):
    ran = []
    method = runtime_module._on_model_device(lambda self, n: ran.append(list(cuda_device_calls)) or n)

    assert method(_on("cuda:1"), 3) == 3
    assert ran.pop() == [torch.device("cuda:1")]
    cuda_device_calls.clear()
    assert method(_on("cpu"), 3) == 3
    assert cuda_device_calls == []


@two_gpus
def test_ops_on_the_second_gpu_while_the_first_is_current():
    second = torch.device("cuda", 1)
    gen = make_generator(0, second)
    with torch.cuda.device(0):
        x, weight = randn((33, 1536), torch.bfloat16, second, gen), randn((1536,), torch.bfloat16, second, gen, 0.1, 1.0)
        check_op(ak.rms_norm, reference.rms_norm, x, weight)
        check_op(ak.linear, reference.linear, x[:1], randn((256, 1536), torch.bfloat16, second, gen, 0.03))


@two_gpus
def test_a_model_on_the_second_gpu_generates_from_a_cuda_graph():
    from tests.model.test_model import requests, tiny_model

    model = tiny_model(torch.device("cuda", 1), backend="triton").to(torch.bfloat16)
    pixel_values, ids = requests(model, torch.device("cuda", 1), make_generator(0, torch.device("cuda", 1)))
    with torch.cuda.device(0):
        eager = model.generate(pixel_values.to(torch.bfloat16), ids, max_new_tokens=6)
        graphed = model.generate(pixel_values.to(torch.bfloat16), ids, max_new_tokens=6, decode="cuda_graph")
    assert graphed == eager
