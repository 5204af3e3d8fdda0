"""argparse types shared by the package's and the benchmarks' command lines.

A value that does not parse is a usage error (exit status 2) naming the flag, what was expected and
what was given, before any work starts: a typo in `--ops` must not run nothing, or everything.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable, Iterable


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def ints_at_least(minimum: int) -> Callable[[str], tuple[int, ...]]:
    """Comma-separated ints, each >= minimum, in the order given: "1,8,32" -> (1, 8, 32)."""
    one = int_at_least(minimum)

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(one(part) for part in text.split(","))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated ints >= {minimum}, got {text!r}") from None

    parse.__name__ = f"ints >= {minimum}"
    return parse


def subset_of(known: Iterable[str], what: str) -> Callable[[str], tuple[str, ...]]:
    """Comma-separated names among `known` ("what" names them in the error), returned once each in
    the order of `known`, whatever the order given: "model,tests" -> ("tests", "model")."""
    known = tuple(known)

    def parse(text: str) -> tuple[str, ...]:
        names = text.split(",")
        unknown = [name for name in names if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"expected {what} among {','.join(known)}, got {text!r} ({', '.join(map(repr, unknown))} unknown)"
            )
        return tuple(name for name in known if name in names)

    parse.__name__ = what
    return parse


def output_file(text: str) -> str:
    """A file to write at the end of a run: its folder must exist now, not after minutes of work."""
    folder = os.path.dirname(text) or "."
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"expected a file in an existing folder, got {text!r} (no folder {folder!r})")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a file to write, got the folder {text!r}")
    return text


def output_directory(text: str) -> str:
    """A folder to write into, made if missing: not the path of a file."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected a folder to write into, got the file {text!r}")
    return text


def existing_directory(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"expected an existing directory, got {text!r}")
    return text
