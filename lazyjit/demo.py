"""``python -m lazyjit demo``: eager Pyro, Pyro's jit and lazyjit side by side."""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable

import pyro
import pyro.infer
import pyro.infer.mcmc as pyro_mcmc
import pyro.ops.integrator
import pyro.ops.jit
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.infer.mcmc.util import initialize_model
from pyro.optim import Adam

from . import examples
from .elbo import JitTrace_ELBO, JitTraceEnum_ELBO
from .jit import trace
from .mcmc import NUTS, CompiledLeaf, potential_fn
from .svi import SVI
from .timing import Step, compare, table


def log_prob_rows(steps: int) -> str:
    """The seed's log-prob example, called repeatedly on fixed data."""
    x, y = torch.randn(100), torch.randn(100)

    # The contenders share the param store, as they would in one user's process.
    def setup(compile_fn):
        fn = compile_fn(examples.scale_log_prob)
        return lambda: fn(x, y)

    results = compare(
        {
            "Pyro eager": lambda: setup(lambda fn: fn),
            "pyro.ops.jit.trace": lambda: setup(
                lambda fn: pyro.ops.jit.trace(fn, ignore_warnings=True)
            ),
            "lazyjit.trace": lambda: setup(lambda fn: trace(fn, ignore_warnings=True)),
        },
        steps=steps,
    )
    return table("Log-prob example (seed 000), 100 points", results, baseline="pyro.ops.jit.trace")


def gaussian_contenders(backends: list[str]) -> dict:
    """SVI steps on the tutorial Gaussian model with AutoDiagonalNormal (100 points)."""
    data = examples.gaussian_data(100)

    def setup(elbo):
        guide = AutoDiagonalNormal(examples.gaussian_model)
        guide(data)  # the tutorial's lazy initialisation, before compiling
        svi = pyro.infer.SVI(examples.gaussian_model, guide, Adam({"lr": 0.01}), elbo)
        return lambda: svi.step(data)

    contenders = {
        "Pyro Trace_ELBO": lambda: setup(pyro.infer.Trace_ELBO()),
        "Pyro JitTrace_ELBO": lambda: setup(pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True)),
    }
    for b in backends:
        contenders[f"lazyjit JitTrace_ELBO ({b})"] = lambda b=b: setup(
            JitTrace_ELBO(ignore_jit_warnings=True, backend=b)
        )
    return contenders


def hmm_contenders(backends: list[str], small: bool) -> dict:
    """SVI epochs on the tutorial HMM, three sequence lengths passed as kwargs."""
    sequences = examples.hmm_data(small)
    model = examples.hmm_model

    def setup(elbo):
        guide = AutoDiagonalNormal(poutine.block(model, expose=examples.HMM_LATENTS))
        guide(sequences[0], num_sequences=len(sequences), length=len(sequences[0]))
        svi = pyro.infer.SVI(model, guide, Adam({"lr": 0.01}), elbo)

        def epoch():
            for seq in sequences:
                svi.step(seq, num_sequences=len(sequences), length=len(seq))

        return epoch

    contenders = {
        "Pyro TraceEnum_ELBO": lambda: setup(pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)),
        "Pyro JitTraceEnum_ELBO": lambda: setup(
            pyro.infer.JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
        ),
    }
    for b in backends:
        contenders[f"lazyjit JitTraceEnum_ELBO ({b})"] = lambda b=b: setup(
            JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True, backend=b)
        )
    return contenders


def nuts_contenders(backends: list[str], num_samples: int) -> dict:
    """NUTS on the tutorial Gaussian model (100 points): one step is a whole run of
    ``num_samples`` warmup and ``num_samples`` samples, setup and compilation included."""
    data = examples.gaussian_data(100)

    def setup(make_kernel):
        def run():
            kernel = make_kernel()
            mcmc = pyro.infer.MCMC(
                kernel, num_samples=num_samples, warmup_steps=num_samples, disable_progbar=True
            )
            mcmc.run(data)

        return run

    model = examples.gaussian_model
    contenders = {
        "Pyro NUTS": lambda: setup(lambda: pyro.infer.NUTS(model)),
        "Pyro NUTS jit_compile": lambda: setup(
            lambda: pyro.infer.NUTS(model, jit_compile=True, ignore_jit_warnings=True)
        ),
    }
    for b in backends:
        contenders[f"lazyjit NUTS jit_compile ({b})"] = lambda b=b: setup(
            lambda: NUTS(model, jit_compile=True, ignore_jit_warnings=True, backend=b)
        )
    return contenders


def fused_svi(data: torch.Tensor) -> Step:
    """``lazyjit.SVI`` (loss, gradients and Adam in one graph) on the tutorial Gaussian
    model with ``AutoDiagonalNormal``; its first steps capture, inductor compiles later."""
    guide = AutoDiagonalNormal(examples.gaussian_model)
    guide(data)
    elbo = JitTrace_ELBO(ignore_jit_warnings=True)
    svi = SVI(examples.gaussian_model, guide, Adam({"lr": 0.01}), elbo)
    return lambda: svi.step(data)


def pyro_svi_floor(data: torch.Tensor) -> Step:
    """What ``pyro.infer.SVI.step`` costs around any loss: the param trace, the params
    a Jit ELBO announces, and Pyro's optimizer loop, with the gradients already there."""
    guide = AutoDiagonalNormal(examples.gaussian_model)
    guide(data)
    names = list(pyro.get_param_store().keys())
    grads = {name: torch.zeros_like(pyro.param(name).unconstrained()) for name in names}

    # Trace_ELBO, not the abstract ELBO, which cannot be instantiated.
    class PrecomputedLoss(pyro.infer.Trace_ELBO):
        def loss_and_grads(self, model, guide, *args, **kwargs):
            for name in names:
                pyro.param(name).unconstrained().grad = grads[name]
            return 0.0

    svi = pyro.infer.SVI(examples.gaussian_model, guide, Adam({"lr": 0.01}), PrecomputedLoss())
    return lambda: svi.step(data)


def numpyro_svi(data: torch.Tensor) -> Step:
    """NumPyro's ``svi.update`` under ``jax.jit``, the same model, guide and optimizer."""
    import jax
    import numpyro
    from numpyro.infer import SVI as NumPyroSVI
    from numpyro.infer import Trace_ELBO as NumPyroTrace_ELBO
    from numpyro.infer.autoguide import AutoDiagonalNormal as NumPyroAutoDiagonalNormal

    model = examples.numpyro_gaussian_model
    values = jax.numpy.asarray(data.numpy())
    svi = NumPyroSVI(
        model, NumPyroAutoDiagonalNormal(model), numpyro.optim.Adam(0.01), NumPyroTrace_ELBO()
    )
    state = [svi.init(jax.random.PRNGKey(0), values)]
    update = jax.jit(svi.update)

    def step() -> float:
        state[0], loss = update(state[0], values)
        return float(loss)  # a Python float, as Pyro's step returns

    return step


# A NUTS contender: (kernel factory, potential+gradient factory for the isolated timing).
NutsContender = tuple[Callable[[Callable], object], Callable[[Callable, tuple], Step]]


def pyro_potential_grad(jit: bool) -> Callable[[Callable, tuple], Step]:
    """A factory of Pyro's potential+gradient evaluation of ``model(*args)``, as its
    HMC/NUTS integrator calls it (``jit``: ``jit_compile=True``)."""

    def make(model: Callable, args: tuple) -> Step:
        z, potential, _, _ = initialize_model(model, args, jit_compile=jit, skip_jit_warnings=True)
        return lambda: pyro.ops.integrator.potential_grad(potential, z)

    return make


def lazyjit_potential_grad(backend: str) -> Callable[[Callable, tuple], Step]:
    """A factory of lazyjit's compiled potential+gradient of ``model(*args)``."""

    def make(model: Callable, args: tuple) -> Step:
        potential = potential_fn(model, args, backend=backend, ignore_jit_warnings=True)
        z = potential.initial_params
        return lambda: potential.value_and_grad(z)

    return make


def nuts_kernels(backends: list[str]) -> dict[str, NutsContender]:
    """NUTS contenders: Pyro eager, Pyro ``jit_compile=True`` and lazyjit
    ``jit_compile=True`` with each of ``backends``."""
    result: dict[str, NutsContender] = {
        "Pyro eager": (lambda m: pyro_mcmc.NUTS(m), pyro_potential_grad(False)),
        "Pyro jit": (
            lambda m: pyro_mcmc.NUTS(m, jit_compile=True, ignore_jit_warnings=True),
            pyro_potential_grad(True),
        ),
    }
    for backend in backends:
        result[f"lazyjit ({backend})"] = (
            lambda m, b=backend: NUTS(m, jit_compile=True, ignore_jit_warnings=True, backend=b),
            lazyjit_potential_grad(backend),
        )
    return result


class LeapfrogCounter:
    """Counts leapfrog steps (one potential+gradient evaluation each): ``velocity_verlet``
    looks ``_single_step_verlet`` up in its module on every step, whichever kernel runs,
    and a :class:`lazyjit.mcmc.CompiledLeaf` call is one step (the steps its eager tier
    runs inside are not counted again)."""

    def __init__(self) -> None:
        self.count = 0
        self._in_leaf = False
        self._step = pyro.ops.integrator._single_step_verlet
        self._leaf = CompiledLeaf.__call__

    def __enter__(self) -> LeapfrogCounter:
        def step(*args, **kwargs):
            self.count += not self._in_leaf
            return self._step(*args, **kwargs)

        def leaf(*args, **kwargs):
            self.count += 1
            self._in_leaf = True
            try:
                return self._leaf(*args, **kwargs)
            finally:
                self._in_leaf = False

        pyro.ops.integrator._single_step_verlet = step
        CompiledLeaf.__call__ = leaf
        return self

    def __exit__(self, *exc: object) -> None:
        pyro.ops.integrator._single_step_verlet = self._step
        CompiledLeaf.__call__ = self._leaf


def run_nuts(kernel_factory: Callable, model: Callable, args: tuple, n: int) -> tuple[float, int]:
    """One ``MCMC.run`` of ``n`` warmup and ``n`` samples from a fresh kernel and seed 1:
    (wall seconds, kernel setup and compilation included; leapfrog steps)."""
    pyro.set_rng_seed(1)
    kernel = kernel_factory(model)
    with LeapfrogCounter() as counter:
        start = time.perf_counter()
        pyro.infer.MCMC(kernel, num_samples=n, warmup_steps=n, disable_progbar=True).run(*args)
        wall = time.perf_counter() - start
    return wall, counter.count


# TorchScript compiles over its first calls too: it profiles the first and optimizes the
# graph in the second (21 s of a 1,000-site chain's, against a 3 s trace).
FIRST_CALLS = 3


def time_grad(make: Callable, model: Callable, args: tuple, calls: int) -> tuple[float, float]:
    """(the compile: seconds of the first :data:`FIRST_CALLS` evaluations minus as many
    steady ones; median steady seconds) of the evaluation that ``make(model, args)``
    returns; a steady figure is the mean of ``calls`` calls."""
    pyro.set_rng_seed(0)
    grad = make(model, args)
    start = time.perf_counter()
    for _ in range(FIRST_CALLS):
        grad()
    first = time.perf_counter() - start
    for _ in range(20):  # past any lazy work of the first runs
        grad()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            grad()
        samples.append((time.perf_counter() - start) / calls)
    steady = statistics.median(samples)
    return first - FIRST_CALLS * steady, steady


def main(quick: bool = False) -> None:
    """Prints the demo's tables."""
    warnings.filterwarnings("ignore", category=UserWarning)  # TorchScript's, via Pyro's jit
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    print(log_prob_rows(steps=200 if quick else 2000))
    print()
    # TorchScript as Pyro's jit uses it, and the captured value-and-grad graph run by it.
    backends = ["torchscript", "aten-jit"]
    results = compare(gaussian_contenders(backends), steps=50 if quick else 300, repeats=5)
    print(
        table("SVI step, seed Gaussian model (100 points)", results, "Pyro JitTrace_ELBO", "step")
    )
    print()
    n = 50 if quick else 200
    results = compare(nuts_contenders(backends, n), steps=1, repeats=3)
    title = f"NUTS run ({n} warmup + {n} samples), seed Gaussian model"
    print(table(title, results, "Pyro NUTS jit_compile", "run"))
