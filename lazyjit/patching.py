"""Attributes patched process-wide while anyone needs them.

Tracing needs a few of torch's and Pyro's attributes replaced (tensor conversions that
guards sort, the tracing-state flag that Pyro reads, Pyro's ``potential_grad``). Threads
trace at once, so a patch is reference-counted: the first holder sets it, the last one
to leave restores the originals.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

# What a patch sets: (owner, attribute name, new value) triples.
Patches = list[tuple[Any, str, Any]]
_ABSENT = object()  # the owner had no attribute of its own (a class inheriting it)


class SharedPatch:
    """Sets the attributes that ``make()`` lists while at least one thread holds the patch.

    ``make`` runs when the first holder arrives, so a replacement may wrap whatever the
    attribute is at that moment. Use ``with patch(): ...``.
    """

    def __init__(self, make: Callable[[], Patches]):
        self._make = make
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: list[tuple[Any, str, Any]] = []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                for owner, name, value in self._make():
                    self._saved.append((owner, name, vars(owner).get(name, _ABSENT)))
                    setattr(owner, name, value)
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    for owner, name, original in reversed(self._saved):
                        if original is _ABSENT:
                            delattr(owner, name)  # uncovers the inherited attribute
                        else:
                            setattr(owner, name, original)
                    self._saved.clear()
