"""Compiler backends: each turns a pure function of flat tensors into a :class:`Program`.

One module per backend (``torchscript``, ``aten``, ``aten_jit``, ``inductor``, ``auto``),
on the interface of :mod:`lazyjit.backends.base`; ``tiers`` holds the rule and the
mechanism of ``"auto"``, ``threads`` the compiler thread and its locks. Adding a backend
is a :class:`Backend` subclass and one :func:`register_backend` call::

    class MyBackend(lazyjit.backends.Backend):
        name = "mine"

        def compile(self, fn, inputs, options):
            return lazyjit.Program(fn)

    lazyjit.backends.register_backend(MyBackend())
    lazyjit.trace(fn, backend="mine")
"""

from __future__ import annotations

from ..errors import LazyJitError
from .aten import AtenBackend, GraphProgram
from .aten_jit import AtenJitBackend
from .auto import AutoBackend, TieredProgram
from .base import Backend, EagerBackend, Program
from .inductor import InductorBackend
from .threads import PYRO_LOCK, compiles_started, wait_for_compiles
from .tiers import Lane, TierPolicy
from .torchscript import TorchScriptBackend, TorchScriptProgram

# {name: backend}: what ``backend="name"`` selects. Register with register_backend.
BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend, replace: bool = False) -> None:
    """Makes ``backend`` selectable by its ``name``; an existing name needs ``replace``."""
    if not isinstance(backend, Backend):
        raise TypeError(
            f"a lazyjit backend must be a Backend instance, got {type(backend).__name__}"
        )
    if backend.name in BACKENDS and not replace:
        raise LazyJitError(f"a lazyjit backend named {backend.name!r} is registered already")
    BACKENDS[backend.name] = backend


def get_backend(name: str | Backend) -> Backend:
    """The registered backend called ``name`` (a :class:`Backend` is returned as is)."""
    if isinstance(name, Backend):
        return name
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise LazyJitError(
            f"unknown lazyjit backend {name!r}; choose one of {sorted(BACKENDS)}"
        ) from None


for _backend in (
    EagerBackend(),
    TorchScriptBackend(),
    AtenBackend(),
    AtenJitBackend(),
    InductorBackend(),
    AutoBackend(),
):
    register_backend(_backend)
del _backend

__all__ = [
    "BACKENDS",
    "PYRO_LOCK",
    "AtenBackend",
    "AtenJitBackend",
    "AutoBackend",
    "Backend",
    "EagerBackend",
    "GraphProgram",
    "InductorBackend",
    "Lane",
    "Program",
    "TierPolicy",
    "TieredProgram",
    "TorchScriptBackend",
    "TorchScriptProgram",
    "compiles_started",
    "get_backend",
    "register_backend",
    "wait_for_compiles",
]
