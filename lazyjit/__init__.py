"""lazyjit: lazy, cached compilation of Pyro programs.

``lazyjit.trace`` replaces ``pyro.ops.jit.trace``; see ``docs/`` for the guide.
"""

from pyro.util import ignore_jit_warnings

from .backends import BACKENDS, Backend, Program
from .errors import LazyJitError, LazyJitWarning, StructureWarning
from .jit import CompiledFunction, CompileStats, Gradients, trace

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "Backend",
    "CompileStats",
    "CompiledFunction",
    "Gradients",
    "LazyJitError",
    "LazyJitWarning",
    "Program",
    "StructureWarning",
    "ignore_jit_warnings",
    "trace",
]
