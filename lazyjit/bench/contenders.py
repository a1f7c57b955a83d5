"""The contenders on the seed models, built in the process that times them: eager Pyro,
Pyro's jit, lazyjit (by backend, or its default) and NumPyro. Each is a ``setup()``
returning the step to time (:data:`lazyjit.bench.timing.Step`); shared by the demo, the
workers of ``python -m lazyjit bench`` and the scripts in ``benchmarks/``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pyro
import pyro.infer
import pyro.infer.mcmc as pyro_mcmc
import pyro.ops.integrator
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.infer.mcmc.util import initialize_model
from pyro.optim import Adam

from .. import (
    BACKENDS,
    NUTS,
    SVI,
    CompiledPotential,
    CompileStats,
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    potential_fn,
)
from .. import examples as models
from .timing import Step, time_calls


def auto_rule() -> str:
    """When auto's lanes move up, from its current policy: for the tables' notes."""
    policy = BACKENDS["auto"].policy
    if policy.switch_calls is None:
        inductor = f"inductor's code once compiled, after call {policy.hot_calls:g}"
    else:
        inductor = (
            f"inductor's code about {policy.switch_seconds:g} s of calls after call "
            f"{policy.hot_calls:g} by an estimate from the graph, at most "
            f"{policy.switch_calls:g} calls later ({policy.switch_after('aten'):g} as FX code)"
        )
    return f"a captured graph after {policy.warm_calls:g} calls, {inductor}"


# ----------------------------------------------------------------------------- SVI


def gaussian_svi(
    elbo: pyro.infer.ELBO, data: torch.Tensor, svi_class: type = pyro.infer.SVI
) -> Step:
    """An SVI step on the seed Gaussian model with ``AutoDiagonalNormal`` and Adam."""
    guide = AutoDiagonalNormal(models.gaussian_model)
    guide(data)  # the tutorial's lazy initialisation, before compiling
    svi = svi_class(models.gaussian_model, guide, Adam({"lr": 0.01}), elbo)
    return lambda: svi.step(data)


def gaussian_contenders(backends: list[str]) -> dict[str, Callable[[], Step]]:
    """SVI steps on the seed Gaussian model (100 points): Pyro's ``Trace_ELBO`` and
    ``JitTrace_ELBO``, and ``lazyjit.JitTrace_ELBO`` with each of ``backends``."""
    data = models.gaussian_data(100)
    contenders = {
        "Pyro Trace_ELBO": lambda: gaussian_svi(pyro.infer.Trace_ELBO(), data),
        "Pyro JitTrace_ELBO": lambda: gaussian_svi(
            pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True), data
        ),
    }
    for b in backends:
        contenders[f"lazyjit JitTrace_ELBO ({b})"] = lambda b=b: gaussian_svi(
            JitTrace_ELBO(ignore_jit_warnings=True, backend=b), data
        )
    return contenders


def fused_svi(data: torch.Tensor) -> Step:
    """``lazyjit.SVI`` (loss, gradients and Adam in one graph) with the default backend:
    its first step is Pyro's step with the eager ELBO, its second captures, inductor
    compiles later."""
    return gaussian_svi(JitTrace_ELBO(ignore_jit_warnings=True), data, SVI)


def pyro_svi_floor(data: torch.Tensor) -> Step:
    """What ``pyro.infer.SVI.step`` costs around any loss: the param trace, the params
    a Jit ELBO announces, and Pyro's optimizer loop, with the gradients already there."""
    guide = AutoDiagonalNormal(models.gaussian_model)
    guide(data)
    names = list(pyro.get_param_store().keys())
    grads = {name: torch.zeros_like(pyro.param(name).unconstrained()) for name in names}

    # Trace_ELBO, not the abstract ELBO, which cannot be instantiated.
    class PrecomputedLoss(pyro.infer.Trace_ELBO):
        def loss_and_grads(self, model, guide, *args, **kwargs):
            for name in names:
                pyro.param(name).unconstrained().grad = grads[name]
            return 0.0

    svi = pyro.infer.SVI(models.gaussian_model, guide, Adam({"lr": 0.01}), PrecomputedLoss())
    return lambda: svi.step(data)


def numpyro_svi(data: torch.Tensor) -> Step:
    """NumPyro's ``svi.update`` under ``jax.jit``, the same model, guide and optimizer."""
    import jax
    import numpyro
    from numpyro.infer import SVI as NumPyroSVI
    from numpyro.infer import Trace_ELBO as NumPyroTrace_ELBO
    from numpyro.infer.autoguide import AutoDiagonalNormal as NumPyroAutoDiagonalNormal

    model = models.numpyro_gaussian_model
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


def hmm_contenders(backends: list[str], small: bool) -> dict[str, Callable[[], Step]]:
    """SVI epochs on the seed HMM, three sequence lengths passed as kwargs: Pyro's
    ``TraceEnum_ELBO`` and ``JitTraceEnum_ELBO``, lazyjit's with each of ``backends``."""
    sequences = models.hmm_data(small)
    model = models.hmm_model

    def setup(elbo: pyro.infer.ELBO) -> Step:
        guide = AutoDiagonalNormal(poutine.block(model, expose=models.HMM_LATENTS))
        guide(sequences[0], num_sequences=len(sequences), length=len(sequences[0]))
        svi = pyro.infer.SVI(model, guide, Adam({"lr": 0.01}), elbo)

        def epoch() -> float:
            for seq in sequences:
                loss = svi.step(seq, num_sequences=len(sequences), length=len(seq))
            return loss  # the last step's, as a whole run reports it

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


# ---------------------------------------------------------------------------- NUTS


class CountedNUTS(pyro_mcmc.NUTS):
    """Pyro's NUTS, counting in ``evaluations`` the calls of its ``potential_fn``: one
    per leapfrog step (with the gradient, by ``potential_grad``), a few more at setup.

    The kernel's ``potential_fn`` attribute (Pyro sets it in ``setup``) is wrapped as it
    is set; a Python call per evaluation, well under a percent of a leapfrog step."""

    evaluations = 0

    @property
    def potential_fn(self) -> Callable | None:
        return self.__counted

    @potential_fn.setter
    def potential_fn(self, fn: Callable | None) -> None:
        if fn is None:
            self.__counted = None
            return

        def counted(z: dict[str, torch.Tensor]) -> torch.Tensor:
            self.evaluations += 1
            return fn(z)

        self.__counted = counted


def _calls(stats: CompileStats) -> int:
    return stats.hits + stats.misses


def gradient_evaluations(kernel: object) -> int | None:
    """Potential-and-gradient evaluations a NUTS kernel made (None if it cannot tell):
    :class:`CountedNUTS` counts them; a lazyjit kernel's compiled potential and compiled
    leaf count their calls (``stats``: every call is a hit or a miss)."""
    if isinstance(kernel, CountedNUTS):
        return kernel.evaluations
    potential = getattr(kernel, "potential_fn", None)
    if not isinstance(potential, CompiledPotential):
        return None
    count = _calls(potential.compiled.stats)
    leaf = getattr(kernel, "compiled_leaf", None)
    if leaf is not None:
        count += _calls(leaf.compiled.stats)
    return count


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
    """NUTS contenders: Pyro eager, Pyro ``jit_compile=True`` (both counting their
    evaluations) and lazyjit ``jit_compile=True`` with each of ``backends``."""
    result: dict[str, NutsContender] = {
        "Pyro eager": (lambda m: CountedNUTS(m), pyro_potential_grad(False)),
        "Pyro jit": (
            lambda m: CountedNUTS(m, jit_compile=True, ignore_jit_warnings=True),
            pyro_potential_grad(True),
        ),
    }
    for backend in backends:
        result[f"lazyjit ({backend})"] = (
            lambda m, b=backend: NUTS(m, jit_compile=True, ignore_jit_warnings=True, backend=b),
            lazyjit_potential_grad(backend),
        )
    return result


class NutsRun:
    """A step that is one whole ``MCMC.run`` of ``n`` warmup and ``n`` samples, from a
    fresh kernel and seed 1: setup and compilation included every time. ``gradients``:
    the last run's potential-and-gradient evaluations (:func:`gradient_evaluations`);
    ``mcmc``: the last run's ``MCMC`` (its samples, its kernel's compiled programs)."""

    def __init__(
        self, make_kernel: Callable[[Callable], object], model: Callable, args: tuple, n: int
    ):
        self.make_kernel, self.model, self.args, self.n = make_kernel, model, args, n
        self.gradients: int | None = None
        self.mcmc: pyro.infer.MCMC | None = None

    def __call__(self) -> None:
        self.mcmc = None  # the last run's kernel goes before this one is built
        pyro.set_rng_seed(1)
        kernel = self.make_kernel(self.model)
        mcmc = pyro.infer.MCMC(
            kernel, num_samples=self.n, warmup_steps=self.n, disable_progbar=True
        )
        mcmc.run(*self.args)
        self.gradients = gradient_evaluations(kernel)
        self.mcmc = mcmc


# TorchScript compiles over its first calls too: it profiles the first and optimizes the
# graph in the second.
FIRST_CALLS = 3


def time_grad(make: Callable, model: Callable, args: tuple, calls: int) -> tuple[float, float]:
    """(the compile: seconds of the first :data:`FIRST_CALLS` evaluations minus as many
    steady ones; median steady seconds) of the evaluation that ``make(model, args)``
    returns; a steady figure is the mean of ``calls`` calls, the median of 5 such."""
    pyro.set_rng_seed(0)
    grad = make(model, args)
    first = time_calls(grad, FIRST_CALLS) * FIRST_CALLS
    for _ in range(20):  # past any lazy work of the first runs
        grad()
    steady = statistics.median(time_calls(grad, calls) for _ in range(5))
    return first - FIRST_CALLS * steady, steady
