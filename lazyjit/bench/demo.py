"""``python -m lazyjit demo``: what a new user gets, beside eager Pyro and Pyro's jit.

Every lazyjit row uses the default backend (``"auto"``: no backend argument) and runs as
it would in a user's script, auto's own tier rule included. All contenders share this
process and go through :func:`lazyjit.bench.timing.alternate`: a first call each
(compilation included), then rounds in turn. ``python -m lazyjit bench`` compares every
backend, each contender in its own process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pyro
import pyro.infer
import pyro.ops.jit
import torch

from .. import NUTS, SVI, JitTrace_ELBO, trace
from .. import examples as models
from .contenders import NutsRun, auto_rule, gaussian_svi
from .report import table
from .timing import InProcess, Step, alternate


def log_prob_table(steps: int) -> str:
    """The seed's log-prob example, called repeatedly on fixed data."""
    x, y = torch.randn(100), torch.randn(100)

    # The contenders share the param store, as they would in one user's process.
    def setup(compile_fn: Callable) -> Callable[[], Step]:
        def build() -> Step:
            fn = compile_fn(models.scale_log_prob)
            return lambda: fn(x, y)

        return build

    contenders = [
        InProcess("Pyro eager", setup(lambda fn: fn)),
        InProcess(
            "pyro.ops.jit.trace", setup(lambda fn: pyro.ops.jit.trace(fn, ignore_warnings=True))
        ),
        InProcess("lazyjit.trace", setup(lambda fn: trace(fn, ignore_warnings=True))),
    ]
    results = alternate(contenders, steps, repeats=3)
    return table("Log-prob example (seed 000), 100 points", results, baseline="pyro.ops.jit.trace")


def svi_table(steps: int) -> str:
    """SVI steps on the seed Gaussian model: Pyro's ELBOs, lazyjit's drop-in
    ``JitTrace_ELBO`` and ``lazyjit.SVI``, all with ``AutoDiagonalNormal`` and Adam."""
    data = models.gaussian_data(100)
    elbos = {
        "Pyro Trace_ELBO": lambda: gaussian_svi(pyro.infer.Trace_ELBO(), data),
        "Pyro JitTrace_ELBO": lambda: gaussian_svi(
            pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True), data
        ),
        "lazyjit.JitTrace_ELBO": lambda: gaussian_svi(
            JitTrace_ELBO(ignore_jit_warnings=True), data
        ),
        "lazyjit.SVI": lambda: gaussian_svi(JitTrace_ELBO(ignore_jit_warnings=True), data, SVI),
    }
    # A few untimed steps after the first: lazyjit.SVI captures its fused step at its
    # second, TorchScript optimizes a graph over its first runs.
    contenders = [InProcess(name, setup, warmup=5) for name, setup in elbos.items()]
    results = alternate(contenders, steps, repeats=5)
    title = "SVI step, seed Gaussian model (100 points, AutoDiagonalNormal, Adam)"
    note = (
        f"lazyjit's rows as they run, by auto's rule ({auto_rule()}); "
        "`python -m lazyjit bench` measures their steady state."
    )
    return table(title, results, "Pyro JitTrace_ELBO", "step") + "\n\n" + note


def nuts_table(n: int) -> str:
    """Whole NUTS runs on the seed Gaussian model (100 points): one call is one
    ``MCMC.run`` of ``n`` warmup and ``n`` samples from a fresh kernel, setup and
    compilation included."""
    model, args = models.gaussian_model, (models.gaussian_data(100),)
    kernels = {
        "Pyro NUTS": lambda m: pyro.infer.NUTS(m),
        "Pyro NUTS jit_compile": lambda m: pyro.infer.NUTS(
            m, jit_compile=True, ignore_jit_warnings=True
        ),
        "lazyjit.NUTS jit_compile": lambda m: NUTS(m, jit_compile=True, ignore_jit_warnings=True),
    }
    contenders = [
        InProcess(name, lambda k=k: NutsRun(k, model, args, n)) for name, k in kernels.items()
    ]
    results = alternate(contenders, 1, repeats=3)
    title = f"NUTS run ({n} warmup + {n} samples), seed Gaussian model"
    return table(title, results, "Pyro NUTS jit_compile", "run")


def main(quick: bool = False) -> None:
    """Prints the demo's tables."""
    warnings.filterwarnings("ignore", category=UserWarning)  # TorchScript's, via Pyro's jit
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    print(log_prob_table(steps=200 if quick else 2000))
    print()
    print(svi_table(steps=50 if quick else 300))
    print()
    print(nuts_table(50 if quick else 200))
