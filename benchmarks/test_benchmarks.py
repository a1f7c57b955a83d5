"""pytest-benchmark versions of the main calls, for those who track them with it.

    pytest benchmarks/ --benchmark-enable [--benchmark-json=out.json]

The repository's pytest configuration collects ``tests/`` only and disables benchmarks,
so plain ``pytest`` never runs these; ``pytest benchmarks/`` without
``--benchmark-enable`` runs each once, as a smoke test. Unlike ``python -m lazyjit bench``
everything runs in this one process, one contender after the other: compare ratios
from one run only. Every contender is compiled (auto: stepped into its steady state)
before the timing starts.
"""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch

import lazyjit
from lazyjit import examples as models
from lazyjit.bench.contenders import gaussian_contenders, nuts_kernels
from lazyjit.bench.timing import steady
from lazyjit.bench.workloads import LAZYJIT_BACKENDS

SVI = ["Pyro JitTrace_ELBO", *(f"lazyjit JitTrace_ELBO ({b})" for b in LAZYJIT_BACKENDS)]
POTENTIALS = ["Pyro jit", *(f"lazyjit ({b})" for b in LAZYJIT_BACKENDS)]


@pytest.fixture(autouse=True)
def fresh_pyro():
    """One torch thread, as in ``python -m lazyjit bench``; a fresh param store and seed;
    TorchScript's warnings (via Pyro's jit) hidden, lazyjit's raised."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # ... but not lazyjit's (a fallback to eager): an error, as in the test suite.
        warnings.filterwarnings("error", category=lazyjit.LazyJitWarning)
        yield
    torch.set_num_threads(threads)
    pyro.clear_param_store()


@pytest.mark.parametrize("name", SVI)
def test_svi_gaussian_step(benchmark, name):
    """One SVI step on the seed Gaussian model (100 points, AutoDiagonalNormal, Adam)."""
    setup = gaussian_contenders(LAZYJIT_BACKENDS)[name]
    if name.endswith("(auto)"):
        setup = steady(setup, 7.0)  # seconds: long enough for auto's lanes to reach inductor
    step = setup()
    step()  # the first step compiles
    benchmark(step)


@pytest.mark.parametrize("name", POTENTIALS)
def test_nuts_potential_and_grad(benchmark, name):
    """One potential energy and gradient evaluation of the seed Gaussian model, as the
    NUTS integrator makes it."""
    make = nuts_kernels(LAZYJIT_BACKENDS)[name][1]
    with pyro.validation_enabled(False):  # as in MCMC.run
        call = make(models.gaussian_model, (models.gaussian_data(100),))
        call()  # the first call compiles
        benchmark(call)
