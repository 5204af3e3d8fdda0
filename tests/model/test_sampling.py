"""Sampling on the device: a seed reproduces a request whichever way its steps run, top_k=1 is
greedy, the draws follow the kept tokens' softmax, and bad parameters are refused by name."""

import pytest
import torch

from aurora_kernels.runtime import Runtime
from aurora_kernels.runtime.sampling import SamplingParams, sample, uniform_noise
from tests.conftest import FULLGRAPH_BACKEND
from tests.model.test_model import requests, tiny_model
from tests.model.test_runtime import mocked_capture  # noqa: F401  (the fixture)


def _draws(logits, n, **params):
    p = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 3} | params
    tensors = (
        torch.tensor([p["temperature"]]),
        torch.tensor([p["top_k"]]),
        torch.tensor([p["top_p"]]),
        torch.tensor([p["seed"]]),
    )
    counts = torch.zeros(logits.shape[-1])
    for step in range(n):
        counts[sample(logits, *tensors, torch.tensor([step]))] += 1
    return counts / n


def test_draws_follow_the_kept_tokens_softmax():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    n = 4000  # 3 standard deviations of a frequency near 0.5: 0.024
    assert torch.allclose(_draws(logits, n), probs[0], atol=0.03)
    assert torch.allclose(_draws(logits, n, top_k=2), torch.tensor([0.625, 0.375, 0, 0]), atol=0.03)
    assert torch.allclose(_draws(logits, n, top_p=0.7), torch.tensor([0.625, 0.375, 0, 0]), atol=0.03)  # 0.5 + 0.3 reach 0.7
    hot = torch.softmax(logits / 2.0, -1)[0]
    assert torch.allclose(_draws(logits, n, temperature=2.0), hot, atol=0.03)
    assert _draws(logits, 50, top_k=1).tolist() == [1.0, 0, 0, 0]


def test_noise_is_uniform_and_a_function_of_seed_and_step():
    u = uniform_noise(torch.tensor([7]), torch.tensor([3]), (2, 50000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005 and abs(u.std() - 12**-0.5) < 0.005
    assert torch.equal(u, uniform_noise(torch.tensor([7]), torch.tensor([3]), (2, 50000)))
    other = uniform_noise(torch.tensor([7]), torch.tensor([4]), (2, 50000))
    assert abs(torch.corrcoef(torch.stack([u.flatten(), other.flatten()]))[0, 1]) < 0.02


def test_sampling_compiles_to_one_graph(device):
    compiled = torch.compile(sample, fullgraph=True, backend=FULLGRAPH_BACKEND)
    logits = torch.randn(3, 50, device=device)
    args = tuple(torch.tensor([value], device=device) for value in (0.7, 5, 0.9, 11, 2))
    assert torch.equal(compiled(logits, *args), sample(logits, *args))


def test_params_are_checked_by_name():
    for kwargs, error, message in (({"temperature": 0.0}, ValueError, "temperature: expected a float > 0, got 0.0"),
                                   ({"top_p": 1.5}, ValueError, r"top_p: expected a float in \(0, 1\], got 1.5"),
                                   ({"top_k": -1}, ValueError, "top_k: expected an int >= 0, got -1"),
                                   ({"top_k": 2.0}, TypeError, "top_k: expected an int, got float"),
                                   ({"do_sample": "yes"}, TypeError, "do_sample: expected a bool, got str")):  # fmt: skip
        with pytest.raises(error, match=message):
            SamplingParams(**({"do_sample": True} | kwargs))


def test_a_seed_reproduces_a_request_eager_or_replayed_and_top_k_1_is_greedy(mocked_capture, device, gen):  # noqa: F811
    model = tiny_model(device, backend="reference" if device.type == "cpu" else "triton")
    pixel_values, ids = requests(model, device, gen, lengths=[5, 12, 1])
    greedy = model.generate(pixel_values, ids, 6, decode="eager")
    assert model.generate(pixel_values, ids, 6, decode="eager", do_sample=True, top_k=1, seed=5) == greedy
    first = model.generate(pixel_values, ids, 6, decode="eager", do_sample=True, temperature=1.5, seed=5)
    assert model.generate(pixel_values, ids, 6, decode="eager", do_sample=True, temperature=1.5, seed=5) == first
    assert model.generate(pixel_values, ids, 6, decode="eager", do_sample=True, temperature=1.5, seed=6) != first
    runtime = Runtime(model, max_batch=4, max_length=64, decode="cuda_graph", prefill="eager")
    assert runtime.generate(pixel_values, ids, 6, do_sample=True, temperature=1.5, seed=5) == first  # the captured step
    assert runtime.generate(pixel_values, ids, 6) == greedy  # greedy again: its own capture, the same buffers
    assert runtime.captures == 2
    drawn = torch.Generator().manual_seed(0)
    assert model.generate(pixel_values, ids, 3, decode="eager", do_sample=True, generator=drawn)  # a seed drawn from it
