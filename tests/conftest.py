"""Test device and seeding.

Tests take their device from AURORA_TEST_DEVICE: "cpu" (default: Triton kernels run under the
interpreter, so TRITON_INTERPRET=1 is set here, before anything imports triton) or "cuda" (the
same tests on a GPU, as `make gpu-check` runs them).
"""

import os
import zlib

TEST_DEVICE = os.environ.get("AURORA_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from aurora_kernels.testing import (  # noqa: E402
    make_generator,
    patch_the_language_once_a_launch_under_the_interpreter,
    round_bf16_to_nearest_even_under_the_interpreter,
)

if TEST_DEVICE == "cpu":
    round_bf16_to_nearest_even_under_the_interpreter()  # as the GPU rounds
    patch_the_language_once_a_launch_under_the_interpreter()  # the same builtins, patched fewer times

# torch.compile's backend in the tests whose point is one graph (no break, no host read) and its
# results: Inductor on a GPU, as users compile there; on a CPU AOTAutograd alone, the same tracing and
# functionalization without Inductor's C++ code generation, which costs a cold run minutes of CPU and
# says nothing of the GPU. Inductor on the CPU keeps tests of its own (tests/model/test_compile.py, the
# model's decode="compile", the benchmarks' warm-up).
FULLGRAPH_BACKEND = "inductor" if TEST_DEVICE == "cuda" else "aot_eager"


@pytest.fixture
def device():
    return torch.device(TEST_DEVICE)


@pytest.fixture
def gen(request, device):
    """A generator seeded from the test's id: fresh inputs for every test, reproducible run to run."""
    return make_generator(zlib.crc32(request.node.nodeid.encode()), device)


def pytest_collection_modifyitems(items):
    """The sm_90 compile reports' tests first (a stable sort): their minutes of compiling then run
    beside the interpreter tests of the other xdist worker, not alone at the end of the session."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_compile_sm90.py"))
