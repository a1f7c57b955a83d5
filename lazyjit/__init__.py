"""lazyjit: lazy, cached compilation of Pyro programs.

``lazyjit.trace`` replaces ``pyro.ops.jit.trace``; see ``docs/`` for the guide.

``import lazyjit`` imports neither Pyro nor lazyjit's Pyro-facing modules: they load
together on the first use of a name that needs them, so that a service loading an
exported artifact (:func:`load`) needs torch alone and starts without Pyro.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import config as config  # settings users set as lazyjit.config.NAME, before any Pyro name
from .artifact import Artifact, load
from .errors import LazyJitError, LazyJitWarning, StructureWarning

__version__ = "0.1.0"

# Loaded all at once, on the first use of any: importing a submodule binds its name in
# this package, and each name must end up bound to what this table says.
_PYRO_FACING = {
    ".backends": ("BACKENDS", "Backend", "Program", "register_backend"),
    ".elbo": ("JitTrace_ELBO", "JitTraceEnum_ELBO", "JitTraceGraph_ELBO", "JitTraceMeanField_ELBO"),
    ".exporter": ("export",),
    ".installer": ("install", "is_installed", "uninstall"),
    ".jit": ("CompiledFunction", "CompileStats", "Gradients", "clear_caches", "trace"),
    ".mcmc": ("HMC", "NUTS"),
    ".potential": ("CompiledPotential", "ModelPotential", "potential_fn"),
    ".svi": ("SVI",),
    "pyro.util": ("ignore_jit_warnings",),
}


def __getattr__(name: str) -> Any:
    if not any(name in names for names in _PYRO_FACING.values()):
        raise AttributeError(f"module 'lazyjit' has no attribute {name!r}")
    for module_name, names in _PYRO_FACING.items():
        module = importlib.import_module(module_name, __name__)
        globals().update({n: getattr(module, n) for n in names})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Artifact",
    "LazyJitError",
    "LazyJitWarning",
    "StructureWarning",
    "load",
    *(name for names in _PYRO_FACING.values() for name in names),
]
