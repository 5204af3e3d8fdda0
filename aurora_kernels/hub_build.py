"""This package as a kernel of the HF kernels Hub (`pip install kernels`), built from the checkout:

    python -m aurora_kernels.hub_build OUT_DIR        # writes OUT_DIR/build/torch-universal/

then, in Python, `kernels.get_local_kernel(Path(OUT_DIR))` imports it, and `kernelize` maps
transformers' layers onto its `layers` module (aurora_kernels/layers.py); the same folder uploaded to
a Hub repository loads with `kernels.get_kernel(repo_id)`.

The layout `kernels` reads: one build variant, `torch-universal` (Triton kernels are Python, so one
variant serves every device and torch version), holding `metadata.json` and the package's files.
`kernels` imports a variant as a package named after the metadata's `id`, so the copy's imports of
`aurora_kernels` are rewritten to that id. The id is a digest of the package's sources: two different
builds import apart, and since the custom-op namespace is the package's import name
(_dispatch.CUSTOM_OP_NAMESPACE) their ops register apart too, so both live in one process (and beside
a pip-installed aurora_kernels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import keyword
import re
import shutil
from pathlib import Path

PACKAGE = "aurora_kernels"
KERNEL_NAME = "aurora-kernels"
VARIANT = "torch-universal"
LICENSE = "Apache-2.0"
# an `import aurora_kernels...` / `from aurora_kernels... import` statement, at any indentation
_IMPORT = re.compile(rf"^(\s*(?:from|import)\s+){PACKAGE}\b", re.MULTILINE)


def package_sources(root: Path | None = None) -> dict[str, str]:
    """The package's Python files: path relative to the package -> text."""
    root = root or Path(__file__).resolve().parent
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in files}


def build_id(sources: dict[str, str]) -> str:
    """`_aurora_kernels_` and 12 hex digits of the sources' digest: a module name of its own per build."""
    digest = hashlib.sha256()
    for path, text in sorted(sources.items()):
        digest.update(path.encode() + b"\0" + text.encode() + b"\0")
    return f"_{PACKAGE}_{digest.hexdigest()[:12]}"


def build(out_dir, kernel_id: str | None = None) -> Path:
    """Write the Hub layout under out_dir (its build/torch-universal/ replaced); returns the variant's
    folder. kernel_id: the module name to build under (a valid identifier), by default build_id."""
    sources = package_sources()
    kernel_id = kernel_id or build_id(sources)
    if not kernel_id.isidentifier() or keyword.iskeyword(kernel_id):
        raise ValueError(f"kernel_id: expected a Python identifier, not a keyword (the package's import name), "
                         f"got {kernel_id!r}")  # fmt: skip
    variant = Path(out_dir) / "build" / VARIANT
    if variant.exists():
        shutil.rmtree(variant)
    for path, text in sources.items():
        target = variant / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_IMPORT.sub(rf"\g<1>{kernel_id}", text), encoding="utf-8")
    metadata = {"name": KERNEL_NAME, "id": kernel_id, "version": 1, "license": LICENSE, "python-depends": [],
                "backend": {"type": "cuda"}}  # fmt: skip
    (variant / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    return variant


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aurora_kernels.hub_build", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)  # fmt: skip
    parser.add_argument("out_dir", help="the kernel repository's folder; its build/torch-universal/ is replaced")
    parser.add_argument("--id", dest="kernel_id", help="the module name to build under (default: from the sources' digest)")
    args = parser.parse_args(argv)
    try:
        variant = build(args.out_dir, args.kernel_id)
    except (ValueError, OSError) as exc:
        parser.exit(2, f"hub_build: error: {exc}\n")
    print(variant)


if __name__ == "__main__":
    main()
