"""``lazyjit.install()``: make Pyro's own jit entry points resolve to lazyjit's.

While installed, every name that an imported Pyro module (``pyro`` or ``pyro.*``) binds to
one of Pyro's jit entry points is bound to lazyjit's: the Jit ELBOs, ``pyro.ops.jit.trace``,
``HMC``/``NUTS`` and MiniPyro's ``JitTrace_ELBO`` (see :data:`REPLACEMENTS`). That covers
the packages (``pyro.infer.JitTrace_ELBO``), the defining modules
(``pyro.infer.trace_elbo.JitTrace_ELBO``) and every Pyro module that imported a name
before ``install()`` (``pyro.contrib.epidemiology.compartmental.NUTS``), so an unmodified
script (Pyro's examples run with ``--jit``) compiles with lazyjit. A module imported
after ``install()`` that does ``from pyro.infer import JitTrace_ELBO`` gets lazyjit's
class too, since the package's attribute is lazyjit's then. Names bound outside Pyro
before ``install()`` (a script's own ``from pyro.infer import NUTS``) keep Pyro's objects.
"""

from __future__ import annotations

import sys
from types import ModuleType, TracebackType
from typing import Any

import pyro.infer.mcmc.hmc
import pyro.infer.mcmc.nuts
import pyro.infer.trace_elbo
import pyro.infer.trace_mean_field_elbo
import pyro.infer.traceenum_elbo
import pyro.infer.tracegraph_elbo
import pyro.ops.jit

from . import elbo, jit, mcmc

# (Pyro's original, lazyjit's replacement), read from the defining modules at import,
# before any install() can have replaced them.
REPLACEMENTS: list[tuple[Any, Any]] = [
    (pyro.ops.jit.trace, jit.trace),
    (pyro.infer.trace_elbo.JitTrace_ELBO, elbo.JitTrace_ELBO),
    (pyro.infer.traceenum_elbo.JitTraceEnum_ELBO, elbo.JitTraceEnum_ELBO),
    (pyro.infer.tracegraph_elbo.JitTraceGraph_ELBO, elbo.JitTraceGraph_ELBO),
    (pyro.infer.trace_mean_field_elbo.JitTraceMeanField_ELBO, elbo.JitTraceMeanField_ELBO),
    # lazyjit's HMC/NUTS compile the potential with jit_compile=True, else are Pyro's.
    (pyro.infer.mcmc.hmc.HMC, mcmc.HMC),
    (pyro.infer.mcmc.nuts.NUTS, mcmc.NUTS),
]
try:
    import pyro.contrib.minipyro

    from . import minipyro
except ImportError:  # a Pyro without MiniPyro
    pass
else:
    REPLACEMENTS.append((pyro.contrib.minipyro.JitTrace_ELBO, minipyro.JitTrace_ELBO))

# By id: module attributes need not be hashable, and identity is what counts.
_BY_ID = {id(original): replacement for original, replacement in REPLACEMENTS}

# (module name, attribute) -> (module, original) for every attribute install() replaced.
_replaced: dict[tuple[str, str], tuple[ModuleType, Any]] = {}


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
    """Binds every attribute of an imported Pyro module that is one of Pyro's originals in
    :data:`REPLACEMENTS` to lazyjit's replacement.

    Idempotent; calling it again also covers Pyro modules imported since. Use as
    ``lazyjit.install()`` (undo with :func:`uninstall`) or as
    ``with lazyjit.install(): ...``. lazyjit's own modules are not Pyro's, so the classes
    lazyjit derives from Pyro's keep their bases.

    Example (a script written for Pyro's jit, unchanged)::

        import lazyjit

        lazyjit.install()
        import pyro.infer  # pyro.infer.JitTrace_ELBO is lazyjit's from here on
        svi = pyro.infer.SVI(model, guide, optim, pyro.infer.JitTrace_ELBO())
    """
    owner = not _replaced
    # A copy: importing is not expected here, but another thread may import meanwhile.
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "pyro" or name.startswith("pyro.")):
            continue
        for attribute, value in list(vars(module).items()):
            replacement = _BY_ID.get(id(value))
            if replacement is not None:
                _replaced.setdefault((name, attribute), (module, value))
                setattr(module, attribute, replacement)
    return Installation(owner)


def uninstall() -> None:
    """Restores every attribute :func:`install` replaced. A no-op if not installed."""
    for (_, attribute), (module, original) in _replaced.items():
        setattr(module, attribute, original)
    _replaced.clear()


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_replaced)
