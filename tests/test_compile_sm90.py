"""Every launch config the launchers can pick at the model's shapes compiles for sm_90 (H100) with no
spills, within shared memory, with its dots on tensor cores: checked on a CPU, ahead of time."""

import pytest

import aurora_kernels as ak
from aurora_kernels.compile_report import problems, run_report
from tests.conftest import TEST_DEVICE

pytestmark = pytest.mark.skipif(
    TEST_DEVICE != "cpu", reason="the ahead-of-time check is for CPU machines (triton 3.9's ptxas-blackwell)"
)


@pytest.fixture(scope="module")
def report():
    return run_report()


def test_every_config_compiles_without_spills(report):
    bad = [f"{r['op']} {r['kernel']} [{r['shape']}]: {'; '.join(problems(r))}" for r in report if problems(r)]
    assert not bad, "\n".join(bad)


def test_every_kernel_op_is_in_the_report(report):
    assert set(ak.OPS) <= {r["op"] for r in report}
