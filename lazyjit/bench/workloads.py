"""The workloads of ``python -m lazyjit bench`` and their contenders: SVI on the seed
Gaussian model, the seed HMM, NUTS on two models and a scaling sweep; the full set, or
``--quick``'s (fewer steps, repeats, sizes and contenders).

A :class:`Contender`'s ``setup`` is pickled to its worker process, so every setup here
is a module-level function or a :func:`functools.partial` of one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pyro

from .. import examples as models
from ..backends import BACKENDS
from . import contenders
from .timing import Step

# Every lazyjit backend that compiles (``eager`` is Pyro's eager code with lazyjit's
# plumbing: the "Pyro eager" rows cover it).
LAZYJIT_BACKENDS = [b for b in BACKENDS if b != "eager"]


@dataclass(frozen=True)
class Contender:
    """One contender of a workload, built in its own worker process.

    :ivar name: the row's name.
    :ivar kind: what it is across workloads ("Pyro jit", "lazyjit inductor", ...), for
        the headline table.
    :ivar setup: returns the step to time. The step may have a ``metrics()`` method,
        called once after the rounds, whose ``{name: number}`` lands in the row.
    :ivar warm_seconds: if set, after the first call the step is warmed for this long
        (:func:`lazyjit.bench.timing.warm`): the rounds then measure the steady state,
        the first call stays as it was.
    :ivar hot_calls: if set, auto's hot rule for this worker
        (:func:`lazyjit.bench.timing.hot_after`).
    """

    name: str
    kind: str
    setup: Callable[[], Step]
    warm_seconds: float | None = None
    hot_calls: int | None = None


@dataclass(frozen=True)
class Workload:
    """Contenders timed side by side: a first call each, then ``repeats`` rounds of
    ``steps`` calls, contenders taking turns.

    :ivar name: what ``--only`` selects (so does ``group``).
    :ivar unit: what one call is ("step", "epoch", "run", "call").
    :ivar baseline: the contender that ratios and speedups compare with.
    :ivar warmup: untimed calls after the first, before the rounds (TorchScript's
        profiling executor optimizes a graph over its first runs).
    :ivar sweep: for the scaling sweep, the swept quantity ("sample sites") and
        ``size`` this workload's value of it; their tables are pivoted by size.
    :ivar notes: what was left out of this workload, and why.
    """

    name: str
    group: str
    title: str
    unit: str
    steps: int
    repeats: int
    baseline: str
    contenders: tuple[Contender, ...]
    warmup: int = 0
    setup_timeout_s: float = 1800.0
    sweep: str = ""
    size: str = ""
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------- the steps, by name


def svi_step(name: str, backends: tuple[str, ...]) -> Step:
    """The SVI contender ``name`` of :func:`contenders.gaussian_contenders`."""
    return contenders.gaussian_contenders(list(backends))[name]()


def fused_svi_step() -> Step:
    """``lazyjit.SVI`` on the seed Gaussian model (100 points)."""
    return contenders.fused_svi(models.gaussian_data(100))


def numpyro_svi_step() -> Step:
    """NumPyro's jitted ``svi.update`` on the seed Gaussian model (100 points)."""
    return contenders.numpyro_svi(models.gaussian_data(100))


def hmm_epoch(name: str, backends: tuple[str, ...], small: bool) -> Step:
    """The HMM contender ``name`` of :func:`contenders.hmm_contenders`."""
    return contenders.hmm_contenders(list(backends), small)[name]()


def nuts_model(model: str) -> tuple[Callable, tuple]:
    """``(model, args)``: the seed Gaussian model or logistic regression, with data."""
    if model == "gaussian":
        return models.gaussian_model, (models.gaussian_data(100),)
    return models.logistic_model, models.logistic_data(1000)


class NutsRuns(contenders.NutsRun):
    """A NUTS contender's step: one whole ``MCMC.run`` (:class:`contenders.NutsRun`).
    ``metrics()``: the gradients of a run, and the compile time and time of one
    potential+gradient evaluation alone (:func:`contenders.time_grad`)."""

    def __init__(self, name: str, backends: tuple[str, ...], model: str, n: int, calls: int):
        make_kernel, self.grad_factory = contenders.nuts_kernels(list(backends))[name]
        super().__init__(make_kernel, *nuts_model(model), n)
        self.calls = calls

    def metrics(self) -> dict[str, float]:
        """Gradients per run; compile and gradient seconds (after the runs, so that the
        first run is the process's first compile)."""
        with pyro.validation_enabled(False):  # as in MCMC.run
            compile_s, grad_s = contenders.time_grad(
                self.grad_factory, self.model, self.args, self.calls
            )
        return {"grads_per_run": self.gradients or 0, "compile_s": compile_s, "grad_s": grad_s}


class NumPyroNuts:
    """NumPyro's NUTS on the same model and data: one whole ``MCMC.run`` per call (a
    fresh ``MCMC``, so its jit compile is included as Pyro's is)."""

    def __init__(self, model: str, n: int, calls: int):
        import jax

        self.jax = jax
        self.model = {
            "gaussian": models.numpyro_gaussian_model,
            "logistic": models.numpyro_logistic_model,
        }[model]
        self.args = tuple(jax.numpy.asarray(a.numpy()) for a in nuts_model(model)[1])
        self.n, self.calls, self.sample_steps = n, calls, 0

    def mcmc(self) -> Any:
        """A fresh NumPyro ``MCMC`` of ``n`` warmup and ``n`` samples."""
        from numpyro.infer import MCMC, NUTS

        return MCMC(NUTS(self.model), num_warmup=self.n, num_samples=self.n, progress_bar=False)

    def __call__(self) -> None:
        mcmc = self.mcmc()
        mcmc.run(self.jax.random.PRNGKey(1), *self.args, extra_fields=("num_steps",))
        # Summing waits for the chain: jax dispatches asynchronously.
        self.sample_steps = int(mcmc.get_extra_fields()["num_steps"].sum())

    def metrics(self) -> dict[str, float]:
        """As :meth:`NutsRuns.metrics`; ``run`` reports no warmup steps, so they are
        counted in a separate warmup from the same key."""
        from numpyro.infer.util import initialize_model

        mcmc = self.mcmc()
        key = self.jax.random.PRNGKey(1)
        mcmc.warmup(key, *self.args, extra_fields=("num_steps",), collect_warmup=True)
        warmup_steps = int(mcmc.get_extra_fields()["num_steps"].sum())

        def make(model: Callable, args: tuple) -> Step:
            info = initialize_model(self.jax.random.PRNGKey(0), model, model_args=args)
            value_and_grad = self.jax.jit(self.jax.value_and_grad(info.potential_fn))
            z = info.param_info.z
            return lambda: self.jax.block_until_ready(value_and_grad(z))

        compile_s, grad_s = contenders.time_grad(make, self.model, self.args, self.calls)
        return {
            "grads_per_run": warmup_steps + self.sample_steps,
            "compile_s": compile_s,
            "grad_s": grad_s,
        }


def sweep_call(name: str, backends: tuple[str, ...], sweep: str, size: int) -> Step:
    """One potential and gradient evaluation of a chain of ``size`` sites
    (``sweep="sites"``) or of the seed Gaussian model with ``size`` points."""
    pyro.enable_validation(False)  # as in MCMC.run, whose potential this is
    if sweep == "sites":
        model, args = models.chain_model(size), ()
    else:
        model, args = models.gaussian_model, (models.gaussian_data(size),)
    return contenders.nuts_kernels(list(backends))[name][1](model, args)


# ------------------------------------------------------------------- the workloads


def kind(backend: str) -> str:
    """The headline table's name of a lazyjit backend's contenders."""
    return f"lazyjit {backend}"


def svi_workload(quick: bool) -> Workload:
    """SVI steps on the seed Gaussian model."""
    rows = [
        Contender(
            "Pyro Trace_ELBO", "Pyro eager", functools.partial(svi_step, "Pyro Trace_ELBO", ())
        ),
        Contender(
            "Pyro JitTrace_ELBO", "Pyro jit", functools.partial(svi_step, "Pyro JitTrace_ELBO", ())
        ),
    ]
    # --quick: auto's steady state is inductor's, and aten's about TorchScript's.
    for b in ["torchscript", "auto"] if quick else LAZYJIT_BACKENDS:
        name = f"lazyjit JitTrace_ELBO ({b})"
        # auto made hot at its second call, then its background compile waited for: its
        # steady state, sooner than by its own rule (thousands of calls).
        auto = b == "auto"
        rows.append(
            Contender(
                name,
                kind(b),
                functools.partial(svi_step, name, (b,)),
                warm_seconds=0.0 if auto else None,
                hot_calls=2 if auto else None,
            )
        )
    rows += [
        # Its inductor compile starts at its second step: waited for by warm(), and taken
        # at once (hot_calls: auto's rule then switches with no calls between).
        Contender(
            "lazyjit.SVI (fused)",
            "lazyjit.SVI fused",
            fused_svi_step,
            warm_seconds=0.0,
            hot_calls=2,
        ),
        Contender("NumPyro svi.update (jax.jit)", "NumPyro", numpyro_svi_step),
    ]
    return Workload(
        "svi-gaussian",
        "svi",
        "SVI step, seed Gaussian model (100 points, AutoDiagonalNormal, Adam); auto and "
        "lazyjit.SVI in their steady state (their first step as it was)",
        "step",
        steps=100 if quick else 300,
        repeats=4 if quick else 15,
        baseline="Pyro JitTrace_ELBO",
        contenders=tuple(rows),
        notes=("--quick: aten and inductor left out (auto runs inductor's code once hot).",)
        if quick
        else (),
        warmup=20,
    )


def hmm_workload(quick: bool) -> Workload:
    """SVI epochs on the seed HMM."""
    backends = ["torchscript"] if quick else LAZYJIT_BACKENDS
    rows = [
        Contender(name, k, functools.partial(hmm_epoch, name, (), quick))
        for name, k in [
            ("Pyro TraceEnum_ELBO", "Pyro eager"),
            ("Pyro JitTraceEnum_ELBO", "Pyro jit"),
        ]
    ]
    for b in backends:
        name = f"lazyjit JitTraceEnum_ELBO ({b})"
        rows.append(Contender(name, kind(b), functools.partial(hmm_epoch, name, (b,), quick)))
    if quick:
        notes = [
            "--quick: aten, inductor and auto left out (the HMM's graphs take minutes to "
            "capture and compile; auto runs TorchScript over a few epochs)."
        ]
    else:
        notes = [
            f"auto as it runs, by its own rule ({contenders.auto_rule()}): each sequence "
            "length's lane captures its graph in the first epoch; the rounds run those graphs."
        ]
    sequences = "8 sequences" if quick else "75 sequences"
    return Workload(
        "hmm",
        "hmm",
        f"SVI epoch, seed HMM (TraceEnum_ELBO, lengths 24/48/72, {sequences}); first epoch compiles",
        "epoch",
        steps=1,
        repeats=2 if quick else 3,
        baseline="Pyro JitTraceEnum_ELBO",
        contenders=tuple(rows),
        notes=tuple(notes),
    )


def nuts_workload(model: str, quick: bool) -> Workload:
    """Whole NUTS runs of the seed Gaussian model or logistic regression."""
    n = 50 if quick else 500
    calls = 50 if quick else 200
    backends = ["torchscript", "auto"] if quick else LAZYJIT_BACKENDS
    kinds = {"Pyro eager": "Pyro eager", "Pyro jit": "Pyro jit"} | {
        f"lazyjit ({b})": kind(b) for b in backends
    }
    rows = [
        Contender(name, k, functools.partial(NutsRuns, name, tuple(backends), model, n, calls))
        for name, k in kinds.items()
    ]
    notes = [
        f"auto as it runs, by its own rule ({contenders.auto_rule()}): each run compiles a "
        "fresh potential and leaf."
    ]
    if quick:
        notes.append(
            "--quick: aten, inductor (they capture and compile again in every run) and "
            "NumPyro (its NUTS compiles for seconds every run) left out."
        )
    else:
        rows.append(
            Contender("NumPyro NUTS", "NumPyro", functools.partial(NumPyroNuts, model, n, calls))
        )
    what = (
        "seed Gaussian model (100 points)"
        if model == "gaussian"
        else "logistic regression (1000 points, 5 features)"
    )
    return Workload(
        f"nuts-{model}",
        "nuts",
        f"NUTS, {what}: one MCMC.run of {n} warmup + {n} samples, compiles included",
        "run",
        steps=1,
        repeats=2 if quick else 3,
        baseline="Pyro jit",
        contenders=tuple(rows),
        notes=tuple(notes),
    )


def sweep_workload(sweep: str, size: int, quick: bool) -> Workload:
    """One point of the scaling sweep: ``size`` sample sites or data points."""
    label = f"{size}" if sweep == "sites" else f"1e{len(str(size)) - 1}"
    backends = ["torchscript"] if quick else LAZYJIT_BACKENDS
    rows = [
        Contender(
            "Pyro jit", "Pyro jit", functools.partial(sweep_call, "Pyro jit", (), sweep, size)
        )
    ]
    for b in backends:
        name = f"lazyjit ({b})"
        # auto made hot at its second call: its steady state (inductor), sooner.
        rows.append(
            Contender(
                name,
                kind(b),
                functools.partial(sweep_call, name, (b,), sweep, size),
                warm_seconds=0.0 if b == "auto" else None,
                hot_calls=2 if b == "auto" else None,
            )
        )
    notes = []
    if quick:
        notes.append(
            "--quick: aten, inductor and auto left out (a capture costs seconds in a fresh "
            "process, an inductor compile seconds to minutes)."
        )
    what = (
        "sample sites (a chain, no data)"
        if sweep == "sites"
        else "data points (seed Gaussian model)"
    )
    # Rounds of a fraction of a second at Pyro jit's speed.
    calls = {"sites": {10: 500, 100: 100, 1000: 20}, "points": {100: 500, 10**4: 200, 10**6: 10}}
    return Workload(
        f"{sweep}-{label}",
        "scaling",
        f"Potential energy and gradient (as NUTS calls it), {label} {what}",
        "call",
        steps=calls[sweep][size],
        repeats=2 if quick else 5,
        baseline="Pyro jit",
        contenders=tuple(rows),
        warmup=20,
        sweep="sample sites" if sweep == "sites" else "data points",
        size=label,
        notes=tuple(notes),
    )


def workloads(quick: bool = False) -> list[Workload]:
    """Every workload of the full run, or of ``--quick`` (fewer steps, repeats, sizes and
    contenders: a few minutes on a 2-core machine)."""
    sites = [10] if quick else [10, 100, 1000]
    points = [10**2] if quick else [10**2, 10**4, 10**6]
    return [
        svi_workload(quick),
        hmm_workload(quick),
        nuts_workload("gaussian", quick),
        nuts_workload("logistic", quick),
        *(sweep_workload("sites", s, quick) for s in sites),
        *(sweep_workload("points", p, quick) for p in points),
    ]


def select(
    all_workloads: list[Workload], only: str | None, also: Iterable[str] = ()
) -> list[Workload]:
    """The workloads whose name or group is in the comma-separated ``only`` (all if None).
    Names in ``also`` (another section's, the whole runs') are known but select none.

    :raises ValueError: for a name that is none of these.
    """
    if not only:
        return all_workloads
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {w.name for w in all_workloads} | {w.group for w in all_workloads} | set(also)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {sorted(known)}")
    return [w for w in all_workloads if w.name in wanted or w.group in wanted]
