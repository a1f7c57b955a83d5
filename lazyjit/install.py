"""``lazyjit.install()``: make Pyro's own jit entry points resolve to lazyjit's.

While installed, ``pyro.infer.JitTrace_ELBO`` and friends, ``pyro.ops.jit.trace`` and
``pyro.infer.HMC``/``NUTS`` are lazyjit's, so an unmodified script (Pyro's examples run
with ``--jit``) compiles with lazyjit. Names a script imported *before* ``install()``
keep the objects they were bound to.
"""

from __future__ import annotations

import importlib
import sys
from types import TracebackType
from typing import Any

from .elbo import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO
from .jit import trace
from .mcmc import HMC, NUTS

# (module, attribute, replacement). A class is bound both in its defining module and in
# the package that re-exports it; code may look it up in either.
PATCHES: list[tuple[str, str, Any]] = [
    ("pyro.ops.jit", "trace", trace),
    ("pyro.infer", "JitTrace_ELBO", JitTrace_ELBO),
    ("pyro.infer.trace_elbo", "JitTrace_ELBO", JitTrace_ELBO),
    ("pyro.infer", "JitTraceEnum_ELBO", JitTraceEnum_ELBO),
    ("pyro.infer.traceenum_elbo", "JitTraceEnum_ELBO", JitTraceEnum_ELBO),
    ("pyro.infer", "JitTraceGraph_ELBO", JitTraceGraph_ELBO),
    ("pyro.infer.tracegraph_elbo", "JitTraceGraph_ELBO", JitTraceGraph_ELBO),
    ("pyro.infer", "JitTraceMeanField_ELBO", JitTraceMeanField_ELBO),
    ("pyro.infer.trace_mean_field_elbo", "JitTraceMeanField_ELBO", JitTraceMeanField_ELBO),
    # HMC/NUTS: lazyjit's compile the potential with jit_compile=True, else are Pyro's.
    ("pyro.infer", "HMC", HMC),
    ("pyro.infer.mcmc", "HMC", HMC),
    ("pyro.infer.mcmc.hmc", "HMC", HMC),
    ("pyro.infer", "NUTS", NUTS),
    ("pyro.infer.mcmc", "NUTS", NUTS),
    ("pyro.infer.mcmc.nuts", "NUTS", NUTS),
]

_originals: dict[tuple[str, str], Any] = {}


class Installation:
    """Returned by :func:`install`; as a context manager, undoes that install on exit.

    An ``install()`` made while lazyjit was already installed leaves it installed on exit.
    """

    def __init__(self, owner: bool):
        self._owner = owner

    def __enter__(self) -> Installation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owner:
            uninstall()


def install() -> Installation:
    """Points every entry of ``PATCHES`` at lazyjit's replacement.

    Idempotent. Use as ``lazyjit.install()`` (undo with :func:`uninstall`) or as
    ``with lazyjit.install(): ...``.
    """
    owner = not _originals
    for module_name, attribute, replacement in PATCHES:
        module = importlib.import_module(module_name)
        _originals.setdefault((module_name, attribute), getattr(module, attribute))
        setattr(module, attribute, replacement)
    return Installation(owner)


def uninstall() -> None:
    """Restores every attribute :func:`install` replaced. A no-op if not installed."""
    for (module_name, attribute), original in _originals.items():
        setattr(sys.modules[module_name], attribute, original)
    _originals.clear()


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_originals)
