"""lazyjit: lazy, cached compilation of Pyro programs.

``lazyjit.trace`` replaces ``pyro.ops.jit.trace``; see ``docs/`` for the guide.
"""

from pyro.util import ignore_jit_warnings

from .backends import BACKENDS, Backend, Program, register_backend
from .elbo import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO
from .errors import LazyJitError, LazyJitWarning, StructureWarning
from .install import install, is_installed, uninstall
from .jit import CompiledFunction, CompileStats, Gradients, clear_caches, trace
from .mcmc import HMC, NUTS
from .potential import CompiledPotential, ModelPotential, potential_fn
from .svi import SVI

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Backend",
    "CompileStats",
    "CompiledFunction",
    "CompiledPotential",
    "Gradients",
    "HMC",
    "JitTraceEnum_ELBO",
    "JitTraceGraph_ELBO",
    "JitTraceMeanField_ELBO",
    "JitTrace_ELBO",
    "LazyJitError",
    "LazyJitWarning",
    "ModelPotential",
    "NUTS",
    "Program",
    "SVI",
    "StructureWarning",
    "clear_caches",
    "ignore_jit_warnings",
    "install",
    "is_installed",
    "potential_fn",
    "register_backend",
    "trace",
    "uninstall",
]
