"""Value guards: what a compiled program does where the function reads a tensor's value.

While a backend traces or captures a function (TorchScript's tracer, lazyjit's
recorder), each conversion of a tensor to a Python value (``bool``, ``int``,
``float``, ``__index__``, ``.item()``, ``.tolist()``, ``.numpy()``) is sorted into one
of three kinds:

* **static**: the tensor follows from shapes and constants alone, which the cache key
  fixes, or the conversion only decides whether to warn (Pyro's ``warn_if_nan`` and
  ``warn_if_inf``). The value is used as it is, with no check.
* **guarded**: the tensor depends on the inputs' data. The value is used, the branch it
  selects is traced, and a check that the tensor still has that value becomes one more
  output of the program (:func:`all_hold`). :class:`lazyjit.CompiledFunction` tests it
  after every call, and runs a call whose check fails again, from the random state it
  started with, on a program specialized for its values (or eagerly).
* **refused**: a value read while no guards are collected (``strict=True``): the
  tracer's own complaint stands, and the backend raises ``StructureError``.

Indexing with a 0-dim integer tensor that depends on the data (``locs[i]`` for a sampled
``i``) becomes an index op of the graph, as TorchScript's tracer records it, instead of
a read.

lazyjit's recorder also guards what no conversion sees: a value torch reads in C++
(``x[(i,)]``), and the size of a selection the data made (a boolean mask's), which Python
code can read as a shape. What bypasses all of this is refused, and such an entry runs
eagerly (``docs/reliability.md``).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyro.util
import torch

from . import torch_shim
from .patching import Patches, SharedPatch

_CONVERSIONS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy")
# Pyro's checks whose value only decides whether to warn: the conversion happens in their
# own frame (`if torch_isnan(value): warnings.warn(...)`).
_WARN_ONLY = frozenset({pyro.util.warn_if_nan.__code__, pyro.util.warn_if_inf.__code__})

# Per thread: `depends` (the running trace's test of a tensor, None when no trace runs),
# `checks` (the guards collected; False where they are refused, None outside a function's
# own code), `reading` (a guarded or static value is being read: the recorder lets it
# through).
_local = threading.local()


def _conversion_patches() -> Patches:
    patches = [(torch.Tensor, name, _sorted(getattr(torch.Tensor, name))) for name in _CONVERSIONS]
    return [*patches, (torch.Tensor, "__getitem__", _indexing(torch.Tensor.__getitem__))]


_conversions_sorted = SharedPatch(_conversion_patches)


@contextlib.contextmanager
def watching(depends: Callable[[torch.Tensor], bool]) -> Iterator[None]:
    """While a trace runs on this thread: sort its value reads with ``depends(tensor)``
    (whether the tensor depends on the trace's input data).

    The conversions are patched process-wide while any thread traces; the patch looks
    only at the calling thread's state.
    """
    outer, _local.depends = getattr(_local, "depends", None), depends
    try:
        with _conversions_sorted():
            yield
    finally:
        _local.depends = outer


@contextlib.contextmanager
def collecting(enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """The scope of a function's own code in the traces run inside (not, say, the
    autograd engine's backward after it): its value reads are guarded, and the list
    yielded collects their checks (0-dim boolean tensors computed by traced ops); with
    ``enabled`` false they are refused instead."""
    checks: list[torch.Tensor] = []
    outer, _local.checks = getattr(_local, "checks", None), checks if enabled else False
    try:
        yield checks
    finally:
        _local.checks = outer


def add_check(check: torch.Tensor) -> bool | None:
    """Adds a check that a tracer made itself (for a shape the data chose): ``True``;
    ``False`` where the function's reads are refused (the tracer must refuse too);
    ``None`` outside a function's own code, where no Python code can have read it."""
    checks = getattr(_local, "checks", None)
    if isinstance(checks, list):
        checks.append(check)
        return True
    return None if checks is None else False


def reading() -> bool:
    """Whether this thread is reading a value that a guard or a static rule covers."""
    return getattr(_local, "reading", False)


def all_hold(checks: Sequence[torch.Tensor]) -> torch.Tensor:
    """One 0-dim boolean tensor: whether every check holds."""
    return checks[0] if len(checks) == 1 else torch.stack(list(checks)).all()


def _sorted(convert: Callable) -> Callable:
    @functools.wraps(convert)
    def conversion(tensor: torch.Tensor, *args: Any) -> Any:
        depends = getattr(_local, "depends", None)
        if depends is None:
            return convert(tensor, *args)
        if sys._getframe(1).f_code in _WARN_ONLY or not depends(tensor):
            return _read(convert, tensor, args)
        checks = getattr(_local, "checks", None)
        if not isinstance(checks, list):
            return _refused(convert, tensor, args)
        value = _read(convert, tensor, args)
        checks.append(_holds(tensor, value, convert.__name__))
        return value

    return conversion


def _indexing(getitem: Callable) -> Callable:
    @functools.wraps(getitem)
    def index(tensor: torch.Tensor, key: Any) -> Any:
        depends = getattr(_local, "depends", None)
        if (
            depends is not None
            and isinstance(key, torch.Tensor)
            and key.dim() == 0
            and not key.is_floating_point()
            and key.dtype is not torch.bool
            and depends(key)
        ):
            # `x[i]` for a 0-dim integer tensor reads `i` inside torch (a select); as an
            # index op, as TorchScript's tracer records it, it stays a graph op.
            return torch.ops.aten.index.Tensor(tensor, [key])
        return getitem(tensor, key)

    return index


def _read(convert: Callable, tensor: torch.Tensor, args: tuple) -> Any:
    _local.reading = True
    try:
        if torch_shim.get_tracing_state() is None:
            return convert(tensor, *args)
        with warnings.catch_warnings():  # TorchScript's TracerWarning: covered here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return convert(tensor, *args)
    finally:
        _local.reading = False


def _refused(convert: Callable, tensor: torch.Tensor, args: tuple) -> Any:
    """The conversion with the tracer's complaint re-issued at the line that converted,
    under that line's filters (so that ``ignore_jit_warnings()`` still silences it)."""
    if torch_shim.get_tracing_state() is None:
        return convert(tensor, *args)  # the recorder raises
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = convert(tensor, *args)
    for w in caught:
        warnings.warn(w.message, stacklevel=3)
    return value


def _holds(tensor: torch.Tensor, value: Any, conversion: str) -> torch.Tensor:
    """The traced check that ``tensor`` converts to ``value`` again."""
    if conversion in ("tolist", "numpy"):  # every element: a constant of the trace
        with torch_shim.untraced():
            expected = torch.as_tensor(
                value if conversion == "tolist" else value.copy(), device=tensor.device
            ).to(tensor.dtype)
        same = tensor.detach() == expected
        if tensor.is_floating_point():
            same = same | (tensor.detach().isnan() & expected.isnan())
        return same.all()
    t = tensor.detach().reshape(())
    if conversion == "__bool__":
        return t != 0 if value else t == 0
    if conversion in ("__int__", "__index__") and t.is_floating_point():
        t = t.trunc()
    if value != value:  # NaN
        return torch.isnan(t)
    return t == value
