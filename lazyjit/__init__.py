"""lazyjit: lazy, cached compilation of Pyro programs.

``lazyjit.trace`` replaces ``pyro.ops.jit.trace``; see ``docs/`` for the guide.
"""

from pyro.util import ignore_jit_warnings

from .backends import BACKENDS, Backend, Program
from .elbo import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO
from .errors import LazyJitError, LazyJitWarning, StructureWarning
from .install import install, is_installed, uninstall
from .jit import CompiledFunction, CompileStats, Gradients, trace
from .mcmc import HMC, NUTS, CompiledPotential, ModelPotential, potential_fn
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
    "ignore_jit_warnings",
    "install",
    "is_installed",
    "potential_fn",
    "trace",
    "uninstall",
]
