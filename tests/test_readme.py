"""README.md's examples run as written, each in a fresh interpreter (as a user pastes them): on a
CPU machine under the Triton interpreter they switch on themselves, on a GPU machine on CUDA."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_its_two_examples():
    assert len(EXAMPLES) == 2 and len(README.read_text().splitlines()) <= 150


@pytest.mark.parametrize("example", EXAMPLES, ids=["op", "model"])
def test_readme_example_runs_as_written(example, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the example decides
    # the checkout first, as an absolute path (a GPU machine runs from the tree with PYTHONPATH=.)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(README.parent), *(os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    run = subprocess.run([sys.executable, "-c", example], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip(), "the example prints its result"
