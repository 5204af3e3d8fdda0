"""Run-time switches that cannot be arguments, because they reach every launch of a kernel however
deep the call: whether value checks read tensors, programmatic dependent launch, autotuning.

Each is a ThreadSetting: a process default (`set_default`) and a per-thread override for the
length of a block (`within`), so a model generating in one thread does not switch another's
launches.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


def a_bool(value) -> bool:
    """The check of an on/off setting: True or False, not anything truthy (set_autotuning("no")
    would switch it on)."""
    if not isinstance(value, bool):
        raise TypeError(f"enabled: expected a bool, got {type(value).__name__}")
    return value


class ThreadSetting(Generic[T]):
    def __init__(self, default: T, check: Callable[[object], T]):
        """check(value) -> the value to store, or an error naming what was expected."""
        self._check = check
        self._default = check(default)
        self._this_thread = threading.local()  # .value: the calling thread's override (None: the default)

    def set_default(self, value) -> None:
        """The setting of every thread not inside a `within` block of its own."""
        self._default = self._check(value)

    def get(self) -> T:
        """The setting in force in the calling thread."""
        value = getattr(self._this_thread, "value", None)
        return self._default if value is None else value

    @contextlib.contextmanager
    def within(self, value):
        """`value` for the calling thread only, inside the block."""
        value = self._check(value)
        before = getattr(self._this_thread, "value", None)
        self._this_thread.value = value
        try:
            yield
        finally:
            self._this_thread.value = before
