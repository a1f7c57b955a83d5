"""``python -m lazyjit bench``: every contender side by side, one process each.

Each workload (SVI on the seed Gaussian model, the seed HMM, NUTS on two models, a
scaling sweep) starts one worker process per contender (a fresh process with one torch
thread: two contenders never share a warm cache, and all run alike).
A worker builds its contender and times the first call (compilation included) while
the others wait; then the parent asks each worker in turn for one round of steps,
``repeats`` times, so that drift of a noisy machine hits every contender alike. At the
end each worker reports its peak resident memory. A contender that cannot run (NumPyro
missing, a compile that fails or times out) becomes a row that says why.

Outputs: markdown tables on the terminal and in ``RESULTS.md``, every raw round in
``results.json`` and speedups over Pyro's jit in ``speedups.png`` (with matplotlib).
See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pyro
import torch

from . import demo, examples
from .backends import BACKENDS, compiles_started, wait_for_compiles
from .errors import LazyJitWarning
from .timing import Step, format_s, paired_ratio, spread

# Every lazyjit backend that compiles (``eager`` is Pyro's eager code with lazyjit's
# plumbing: the "Pyro eager" rows cover it).
LAZYJIT_BACKENDS = [b for b in BACKENDS if b != "eager"]
# How long a worker may take to start (import torch and pyro) and to finish.
_START_TIMEOUT_S = 300.0


def warm(step: Step, seconds: float) -> None:
    """Steps ``step`` for ``seconds`` (past auto's hot rule), then until a step starts
    no background compile: the contender's steady state."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        step()
    settle(step)


def steady(setup: Callable[[], Step], seconds: float) -> Callable[[], Step]:
    """``setup``, whose step is :func:`warm`\\ ed for ``seconds`` before it is returned."""

    def warmed() -> Step:
        step = setup()
        warm(step, seconds)
        return step

    return warmed


def settle(step: Step) -> None:
    """Steps until a step starts no background compile, each waited for (a hot lane
    waits for the compile in flight before it starts its own)."""
    while True:
        started = compiles_started()
        wait_for_compiles()
        step()
        if compiles_started() == started and wait_for_compiles():
            return


@dataclass(frozen=True)
class Contender:
    """One contender of a workload, built in its own worker process.

    :ivar name: the row's name.
    :ivar kind: what it is across workloads ("Pyro jit", "lazyjit inductor", ...), for
        the headline table.
    :ivar setup: returns the step to time; it is pickled to the worker, so a module-level
        function or a :func:`functools.partial` of one. The step may have a ``metrics()``
        method, called once after the rounds, whose ``{name: number}`` lands in the row.
    :ivar warm_seconds: if set, after the first call the step is :func:`warm`\\ ed for this
        long: the rounds then measure the steady state, the first call stays as it was.
    :ivar hot_calls: if set, auto's hot rule for this worker: hot after so many calls, to
        reach the steady state sooner (the steady state does not depend on when).
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


@dataclass
class Row:
    """One contender's figures in one workload, or why it has none (``error``).

    ``rounds_s``: seconds per call of each round; ``round_started``: when each began
    (Unix time); ``warnings``: the LazyJitWarnings its worker saw."""

    name: str
    kind: str
    first_s: float | None = None
    rounds_s: list[float] = field(default_factory=list)
    round_started: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        """Whether it ran its first call and every round."""
        return self.error is None and bool(self.rounds_s)

    @property
    def median_s(self) -> float:
        """The median seconds per call over the rounds."""
        return statistics.median(self.rounds_s)

    @property
    def spread(self) -> float:
        """(max - min) / median of the rounds."""
        return spread(self.rounds_s)


def ratio(rows: Sequence[Row], row: Row, baseline: str) -> float | None:
    """``row``'s time per call over ``baseline``'s, paired round by round (below 1:
    faster); None if either failed."""
    base = next((r for r in rows if r.name == baseline), None)
    if base is None or not base.ok or not row.ok:
        return None
    return paired_ratio(row.rounds_s, base.rounds_s)


# ---------------------------------------------------------------- the worker process


def _prepare_worker() -> None:
    # XLA's CPU client otherwise runs its own thread pool beside torch's single thread;
    # read when jax first starts a backend, so before any NumPyro contender is built.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    # One thread for every contender alike: the other core stays free for the parent,
    # background compiles and the machine's other load.
    torch.set_num_threads(1)
    # TorchScript's warnings via Pyro's jit (ignore_jit_warnings does not hide them all).
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    # ... but not lazyjit's own (a fallback to eager, say): the row reports them.
    warnings.filterwarnings("default", category=LazyJitWarning)
    pyro.set_rng_seed(0)  # every worker draws the same data
    pyro.clear_param_store()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KiB here


def _worker_main(conn: Connection, contender: Contender, warmup: int) -> None:
    """A worker's life: say it started, build and time the first call when told, then
    run rounds until told to finish. Every failure is sent back, never raised."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            _prepare_worker()
            conn.send(("started",))
            if conn.recv()[0] != "setup":
                return
            if contender.hot_calls is not None:
                auto = BACKENDS["auto"]
                auto.policy = replace(auto.policy, hot_calls=contender.hot_calls, switch_calls=0)
            step = contender.setup()
            start = time.perf_counter()
            step()
            first = time.perf_counter() - start
            if contender.warm_seconds is not None:
                warm(step, contender.warm_seconds)
            for _ in range(warmup):
                step()
            wait_for_compiles()
            conn.send(("ready", first))
            while (command := conn.recv())[0] == "round":
                steps = command[1]
                started = time.time()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                seconds = (time.perf_counter() - start) / steps
                # A compile that the round started must not run beside another
                # contender's round.
                wait_for_compiles()
                conn.send(("round", seconds, started))
            metrics = step.metrics() if callable(getattr(step, "metrics", None)) else {}
            said = list(dict.fromkeys(str(w.message) for w in caught))
            conn.send(("done", _peak_rss_mb(), metrics, said))
        except Exception as e:  # noqa: BLE001 - reported as the contender's row
            if isinstance(e, ImportError) and e.name:
                message = f"{e.name} is not installed (pip install -e '.[bench]')"
            else:
                message = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            try:
                conn.send(("error", message, traceback.format_exc()))
            except OSError:
                pass  # the parent has gone


class _Worker:
    """The parent's end of one worker process."""

    def __init__(self, context: Any, contender: Contender, warmup: int):
        self.row = Row(contender.name, contender.kind)
        self.done = False  # it answered "finish" and is exiting
        self.conn, child = context.Pipe()
        # Not a daemon: inductor starts compile worker processes of its own.
        self.process = context.Process(
            target=_worker_main, args=(child, contender, warmup), name=f"bench {contender.name}"
        )
        self.process.start()
        child.close()

    @property
    def alive(self) -> bool:
        return self.row.error is None

    def ask(self, message: tuple | None, timeout: float) -> tuple | None:
        """Sends ``message`` (if any) and returns the answer; on failure the row records
        why and the process is stopped."""
        try:
            if message is not None:
                self.conn.send(message)
            if not self.conn.poll(timeout):
                self.fail(f"no answer in {timeout:.0f} s (stopped)")
                return None
            answer = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            self.fail(f"the worker died (exit code {self.process.exitcode})")
            return None
        if answer[0] == "error":
            self.row.traceback = answer[2]
            self.fail(answer[1])
            return None
        return answer

    def fail(self, message: str) -> None:
        self.row.error = message
        self.close(grace_s=0.0)

    def close(self, grace_s: float) -> None:
        """Gives the process ``grace_s`` to exit (it does after "finish"), then kills it."""
        self.process.join(grace_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_workload(workload: Workload, log: Callable[[str], None] = print) -> list[Row]:
    """Times ``workload``'s contenders side by side, one worker process each; one row
    per contender, in the workload's order."""
    context = _context()
    tag = f"[{workload.name}]"
    start = time.perf_counter()
    workers: list[_Worker] = []
    try:
        for contender in workload.contenders:
            workers.append(_Worker(context, contender, workload.warmup))
        # All start (import torch and pyro) together; nothing is timed until all have.
        for worker in workers:
            worker.ask(None, _START_TIMEOUT_S)
        for worker in workers:
            answer = worker.ask(("setup",), workload.setup_timeout_s)
            if answer is not None:
                worker.row.first_s = answer[1]
                log(f"{tag} {worker.row.name}: first {workload.unit} {format_s(answer[1])}")
            else:
                log(f"{tag} {worker.row.name}: FAILED: {worker.row.error}")
        for i in range(workload.repeats):
            times = []
            for worker in workers:
                if not worker.alive:
                    continue
                answer = worker.ask(("round", workload.steps), workload.setup_timeout_s)
                if answer is None:
                    times.append(f"{worker.row.name} FAILED: {worker.row.error}")
                    continue
                worker.row.rounds_s.append(answer[1])
                worker.row.round_started.append(answer[2])
                times.append(f"{worker.row.name} {format_s(answer[1])}")
            log(f"{tag} round {i + 1}/{workload.repeats}, per {workload.unit}: {'; '.join(times)}")
        for worker in workers:
            if worker.alive:
                answer = worker.ask(("finish",), _START_TIMEOUT_S)
                if answer is not None:
                    worker.row.peak_rss_mb, worker.row.metrics, worker.row.warnings = answer[1:]
                    worker.done = True
    finally:
        for worker in workers:  # also on an interrupt: none is left running
            worker.close(grace_s=10.0 if worker.done else 0.0)
    log(f"{tag} done in {time.perf_counter() - start:.0f} s")
    return [worker.row for worker in workers]


def _context() -> Any:
    """Where workers come from: a fork server that has imported lazyjit (torch, pyro) and
    run nothing, so that each worker is a fresh process without paying the imports
    again (seconds each on a small machine, dozens of workers a run); "spawn" (a new
    interpreter each) where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


# ------------------------------------------------------------------ the contenders


def _svi_step(name: str, backends: tuple[str, ...]) -> Step:
    return demo.gaussian_contenders(list(backends))[name]()


def _fused_svi_step() -> Step:
    return demo.fused_svi(examples.gaussian_data(100))


def _numpyro_svi_step() -> Step:
    return demo.numpyro_svi(examples.gaussian_data(100))


def _hmm_epoch(name: str, backends: tuple[str, ...], small: bool) -> Step:
    return demo.hmm_contenders(list(backends), small)[name]()


def _nuts_model(model: str) -> tuple[Callable, tuple]:
    if model == "gaussian":
        return examples.gaussian_model, (examples.gaussian_data(100),)
    return examples.logistic_model, examples.logistic_data(1000)


class NutsRuns:
    """A NUTS contender's step: one whole ``MCMC.run`` (fresh kernel, seed 1, setup and
    compilation included). ``metrics()``: leapfrog steps of a run, and the compile time
    and time of one potential+gradient evaluation alone (``demo.time_grad``)."""

    def __init__(self, name: str, backends: tuple[str, ...], model: str, n: int, calls: int):
        self.kernel_factory, self.grad_factory = demo.nuts_kernels(list(backends))[name]
        self.model, self.args = _nuts_model(model)
        self.n, self.calls, self.grads = n, calls, 0

    def __call__(self) -> None:
        _, self.grads = demo.run_nuts(self.kernel_factory, self.model, self.args, self.n)

    def metrics(self) -> dict[str, float]:
        """Leapfrog steps per run; compile and gradient seconds (after the runs, so that
        the first run is the process's first compile)."""
        with pyro.validation_enabled(False):  # as in MCMC.run
            compile_s, grad_s = demo.time_grad(self.grad_factory, self.model, self.args, self.calls)
        return {"grads_per_run": self.grads, "compile_s": compile_s, "grad_s": grad_s}


class NumPyroNuts:
    """NumPyro's NUTS on the same model and data: one whole ``MCMC.run`` per call (a
    fresh ``MCMC``, so its jit compile is included as Pyro's is)."""

    def __init__(self, model: str, n: int, calls: int):
        import jax

        self.jax = jax
        self.model = {
            "gaussian": examples.numpyro_gaussian_model,
            "logistic": examples.numpyro_logistic_model,
        }[model]
        self.args = tuple(jax.numpy.asarray(a.numpy()) for a in _nuts_model(model)[1])
        self.n, self.calls, self.sample_steps = n, calls, 0

    def _mcmc(self) -> Any:
        from numpyro.infer import MCMC, NUTS

        return MCMC(NUTS(self.model), num_warmup=self.n, num_samples=self.n, progress_bar=False)

    def __call__(self) -> None:
        mcmc = self._mcmc()
        mcmc.run(self.jax.random.PRNGKey(1), *self.args, extra_fields=("num_steps",))
        # Summing waits for the chain: jax dispatches asynchronously.
        self.sample_steps = int(mcmc.get_extra_fields()["num_steps"].sum())

    def metrics(self) -> dict[str, float]:
        """As :meth:`NutsRuns.metrics`; ``run`` reports no warmup steps, so they are
        counted in a separate warmup from the same key."""
        from numpyro.infer.util import initialize_model

        mcmc = self._mcmc()
        key = self.jax.random.PRNGKey(1)
        mcmc.warmup(key, *self.args, extra_fields=("num_steps",), collect_warmup=True)
        warmup_steps = int(mcmc.get_extra_fields()["num_steps"].sum())

        def make(model: Callable, args: tuple) -> Step:
            info = initialize_model(self.jax.random.PRNGKey(0), model, model_args=args)
            value_and_grad = self.jax.jit(self.jax.value_and_grad(info.potential_fn))
            z = info.param_info.z
            return lambda: self.jax.block_until_ready(value_and_grad(z))

        compile_s, grad_s = demo.time_grad(make, self.model, self.args, self.calls)
        return {
            "grads_per_run": warmup_steps + self.sample_steps,
            "compile_s": compile_s,
            "grad_s": grad_s,
        }


def _sweep_call(name: str, backends: tuple[str, ...], sweep: str, size: int) -> Step:
    pyro.enable_validation(False)  # as in MCMC.run, whose potential this is
    if sweep == "sites":
        model, args = examples.chain_model(size), ()
    else:
        model, args = examples.gaussian_model, (examples.gaussian_data(size),)
    return demo.nuts_kernels(list(backends))[name][1](model, args)


def _kind(backend: str) -> str:
    return f"lazyjit {backend}"


def _svi_workload(quick: bool) -> Workload:
    contenders = [
        Contender(
            "Pyro Trace_ELBO", "Pyro eager", functools.partial(_svi_step, "Pyro Trace_ELBO", ())
        ),
        Contender(
            "Pyro JitTrace_ELBO", "Pyro jit", functools.partial(_svi_step, "Pyro JitTrace_ELBO", ())
        ),
    ]
    # --quick: auto's steady state is inductor's, and aten's about TorchScript's.
    for b in ["torchscript", "auto"] if quick else LAZYJIT_BACKENDS:
        name = f"lazyjit JitTrace_ELBO ({b})"
        # auto made hot at its second call, then its background compile waited for: its
        # steady state, sooner than by its own rule (20 compile times of use, which
        # varies with the machine's load).
        auto = b == "auto"
        contenders.append(
            Contender(
                name,
                _kind(b),
                functools.partial(_svi_step, name, (b,)),
                warm_seconds=0.0 if auto else None,
                hot_calls=2 if auto else None,
            )
        )
    contenders += [
        Contender(
            # Its inductor compile starts at its second step: waited for by warm().
            "lazyjit.SVI (fused)",
            "lazyjit.SVI fused",
            _fused_svi_step,
            warm_seconds=0.0,
        ),
        Contender("NumPyro svi.update (jax.jit)", "NumPyro", _numpyro_svi_step),
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
        contenders=tuple(contenders),
        notes=("--quick: aten and inductor left out (auto runs inductor's code once hot).",)
        if quick
        else (),
        warmup=20,
    )


def _hmm_workload(quick: bool) -> Workload:
    backends = ["torchscript"] if quick else LAZYJIT_BACKENDS
    contenders = [
        Contender(name, kind, functools.partial(_hmm_epoch, name, (), quick))
        for name, kind in [
            ("Pyro TraceEnum_ELBO", "Pyro eager"),
            ("Pyro JitTraceEnum_ELBO", "Pyro jit"),
        ]
    ]
    for b in backends:
        name = f"lazyjit JitTraceEnum_ELBO ({b})"
        contenders.append(
            Contender(name, _kind(b), functools.partial(_hmm_epoch, name, (b,), quick))
        )
    if quick:
        notes = [
            "--quick: aten, inductor and auto left out (the HMM's graphs take minutes to "
            "capture and compile; auto runs TorchScript over a few epochs)."
        ]
    else:
        notes = [
            "auto as it runs: its first epoch runs TorchScript unoptimized; a lane moves to "
            "its captured graph once warm (the length-24 one in the third epoch, a stall of "
            "seconds inside the measured rounds), and to inductor only once hot."
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
        contenders=tuple(contenders),
        notes=tuple(notes),
    )


def _nuts_workload(model: str, quick: bool) -> Workload:
    n = 50 if quick else 500
    calls = 50 if quick else 200
    backends = ["torchscript", "auto"] if quick else LAZYJIT_BACKENDS
    kinds = {"Pyro eager": "Pyro eager", "Pyro jit": "Pyro jit"} | {
        f"lazyjit ({b})": _kind(b) for b in backends
    }
    contenders = [
        Contender(name, kind, functools.partial(NutsRuns, name, tuple(backends), model, n, calls))
        for name, kind in kinds.items()
    ]
    notes = [
        "auto as it runs: each run compiles a fresh potential, which moves to its captured "
        "graph on TorchScript (warm) after about 0.1 s spent in gradients."
    ]
    if quick:
        notes.append(
            "--quick: aten, inductor (they capture and compile again in every run) and "
            "NumPyro (its NUTS compiles for seconds every run) left out."
        )
    else:
        contenders.append(
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
        contenders=tuple(contenders),
        notes=tuple(notes),
    )


def _sweep_workload(sweep: str, size: int, quick: bool) -> Workload:
    label = f"{size}" if sweep == "sites" else f"1e{len(str(size)) - 1}"
    backends = ["torchscript"] if quick else LAZYJIT_BACKENDS
    contenders = [
        Contender(
            "Pyro jit", "Pyro jit", functools.partial(_sweep_call, "Pyro jit", (), sweep, size)
        )
    ]
    for b in backends:
        name = f"lazyjit ({b})"
        # auto made hot at its second call: its steady state (inductor), sooner.
        contenders.append(
            Contender(
                name,
                _kind(b),
                functools.partial(_sweep_call, name, (b,), sweep, size),
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
        contenders=tuple(contenders),
        warmup=20,
        sweep="sample sites" if sweep == "sites" else "data points",
        size=label,
        notes=tuple(notes),
    )


def workloads(quick: bool = False) -> list[Workload]:
    """Every workload of the full run, or of ``--quick`` (fewer steps, repeats, sizes and
    contenders: under two minutes on a 2-core machine)."""
    sites = [10] if quick else [10, 100, 1000]
    points = [10**2] if quick else [10**2, 10**4, 10**6]
    return [
        _svi_workload(quick),
        _hmm_workload(quick),
        _nuts_workload("gaussian", quick),
        _nuts_workload("logistic", quick),
        *(_sweep_workload("sites", s, quick) for s in sites),
        *(_sweep_workload("points", p, quick) for p in points),
    ]


# --------------------------------------------------------------------- the reports


def _cells(values: list[str]) -> str:
    return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"


def _footnotes(notes: Sequence[str], rows: Sequence[Row]) -> list[str]:
    """A table's notes, and what lazyjit warned about in each row's worker."""
    items = [*notes, *(f"{row.name} warned: {w}" for row in rows for w in row.warnings)]
    return ["", *(f"- {item}" for item in dict.fromkeys(items))] if items else []


def workload_table(workload: Workload, rows: list[Row]) -> str:
    """The workload's markdown table: first call, median per call with its spread, peak
    memory and ratio to the baseline (plus NUTS's gradient figures where measured)."""
    nuts = any("grads_per_run" in r.metrics for r in rows)
    unit = workload.unit
    header = [
        "contender",
        f"first {unit}",
        f"per {unit}, median of {workload.repeats}",
        "spread",
        "peak RSS (MB)",
        f"time / {workload.baseline}",
    ]
    if nuts:
        header += ["gradients per run", "per gradient in run", "gradient alone", "compile"]
    lines = [
        f"### {workload.title}",
        "",
        _cells(header),
        _cells(["---"] + ["---:"] * (len(header) - 1)),
    ]
    for row in rows:
        if not row.ok:
            first = format_s(row.first_s) if row.first_s is not None else "-"
            lines.append(
                _cells([row.name, first, f"failed: {row.error}"] + ["-"] * (len(header) - 3))
            )
            continue
        r = ratio(rows, row, workload.baseline)
        cells = [
            row.name,
            format_s(row.first_s),
            format_s(row.median_s),
            f"{row.spread:.0%}",
            f"{row.peak_rss_mb:.0f}" if row.peak_rss_mb is not None else "-",
            f"{r:.2f}" if r is not None else "-",
        ]
        if nuts:
            m = row.metrics
            grads = m.get("grads_per_run")
            cells += [
                f"{grads:.0f}" if grads else "-",
                format_s(row.median_s / grads) if grads else "-",
                format_s(m["grad_s"]) if "grad_s" in m else "-",
                format_s(max(m["compile_s"], 0.0)) if "compile_s" in m else "-",
            ]
        lines.append(_cells(cells))
    return "\n".join(lines + _footnotes(workload.notes, rows))


def sweep_tables(results: list[tuple[Workload, list[Row]]]) -> list[str]:
    """The scaling sweep pivoted: one table per swept quantity, contenders against size;
    each cell the median per call (spread) and the compile time (first call minus it)."""
    tables = []
    for sweep in dict.fromkeys(w.sweep for w, _ in results if w.sweep):
        points = [(w, rows) for w, rows in results if w.sweep == sweep]
        names = list(dict.fromkeys(r.name for _, rows in points for r in rows))
        header = ["contender"] + [f"{w.size} {sweep}" for w, _ in points]
        lines = [
            f"### Scaling with {sweep}: potential energy and gradient, per call (spread) / compile",
            "",
            _cells(header),
            _cells(["---"] + ["---:"] * len(points)),
        ]
        for name in names:
            cells = [name]
            for _, rows in points:
                row = next((r for r in rows if r.name == name), None)
                if row is None:
                    cells.append("left out")
                elif not row.ok:
                    cells.append(f"failed: {row.error}")
                else:
                    compile_s = max(row.first_s - row.median_s, 0.0)
                    cells.append(
                        f"{format_s(row.median_s)} ({row.spread:.0%}) / {format_s(compile_s)}"
                    )
            lines.append(_cells(cells))
        notes = [note for w, _ in points for note in w.notes]
        lines += _footnotes(notes, [row for _, rows in points for row in rows])
        tables.append("\n".join(lines))
    return tables


def headline_table(results: list[tuple[Workload, list[Row]]]) -> str:
    """Speedup over Pyro's jit per kind of contender (rows) and workload (columns), the
    scaling sweep aside; in parentheses the larger spread of the two rows compared."""
    main = [(w, rows) for w, rows in results if not w.sweep]
    kinds = list(dict.fromkeys(r.kind for _, rows in main for r in rows))
    lines = [
        "### Speedup over Pyro's jit (higher is faster; in parentheses the larger spread of the two)",
        "",
        _cells(["contender"] + [w.name for w, _ in main]),
        _cells(["---"] + ["---:"] * len(main)),
    ]
    for kind in kinds:
        cells = [kind]
        for w, rows in main:
            row = next((r for r in rows if r.kind == kind), None)
            base = next((r for r in rows if r.name == w.baseline), None)
            r = ratio(rows, row, w.baseline) if row is not None else None
            if row is None:
                cells.append("-")
            elif r is None:
                cells.append("failed" if row.error else "-")
            else:
                cells.append(f"{1 / r:.2f}x ({max(row.spread, base.spread):.0%})")
        lines.append(_cells(cells))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Where and with what the benchmark runs: date, machine, versions, command line."""
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpyro": version("numpyro"),
        "jax": version("jax"),
        "command": " ".join(["python -m lazyjit", *sys.argv[1:]]),
        "load_average_start": list(os.getloadavg()),
    }


def report(
    meta: dict[str, Any], results: list[tuple[Workload, list[Row]]], with_chart: bool
) -> str:
    """``RESULTS.md``: the header (machine, versions, command), the headline table (and
    the chart if ``with_chart``), then every workload's table."""
    load = meta["load_average_start"], meta.get("load_average_end", [0, 0, 0])
    numpyro = (
        f"numpyro {meta['numpyro']} (jax {meta['jax']})"
        if meta["numpyro"]
        else "NumPyro not installed"
    )
    parts = [
        "# lazyjit benchmarks",
        "",
        f"`{meta['command']}` on {meta['date']}, {meta.get('total_s', 0):.0f} s in all.",
        "",
        f"- Machine: {meta['platform']}, {meta['cpus']} CPUs ({meta['cpu_model'] or 'model unknown'})",
        f"- Python {meta['python']}, torch {meta['torch']}, pyro {meta['pyro']}, {numpyro}",
        "- Load average (1, 5, 15 min) at the start "
        + " ".join(f"{x:.2f}" for x in load[0])
        + ", at the end "
        + " ".join(f"{x:.2f}" for x in load[1]),
        "- Each contender runs in its own process with one torch thread; contenders take "
        "turns round after round. Spread: (max - min) / median of the rounds. "
        "See docs/benchmarks.md.",
        "",
        headline_table(results),
    ]
    if with_chart:
        parts += ["", "![speedups over Pyro's jit](speedups.png)"]
    for workload, rows in results:
        if not workload.sweep:
            parts += ["", workload_table(workload, rows)]
    for table in sweep_tables(results):
        parts += ["", table]
    return "\n".join(parts) + "\n"


def to_json(meta: dict[str, Any], results: list[tuple[Workload, list[Row]]]) -> dict[str, Any]:
    """Everything measured, every raw round included, for ``results.json``."""
    out = []
    for workload, rows in results:
        entries = []
        for row in rows:
            entry = asdict(row)
            entry["median_s"] = row.median_s if row.ok else None
            entry["spread"] = row.spread if row.ok else None
            entry["ratio_to_baseline"] = ratio(rows, row, workload.baseline)
            entries.append(entry)
        info = {f.name: getattr(workload, f.name) for f in fields(workload)}
        del info["contenders"]  # their names and kinds are in the rows
        out.append({**info, "contenders": entries})
    return {"meta": meta, "workloads": out}


def chart(results: list[tuple[Workload, list[Row]]], path: Path) -> bool:
    """Horizontal bars of each contender's speedup over the baseline, one panel per
    workload, log scale; False (nothing written) without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [
        (w, [(r.name, 1 / ratio(rows, r, w.baseline)) for r in rows if ratio(rows, r, w.baseline)])
        for w, rows in results
    ]
    panels = [(w, bars) for w, bars in panels if bars]
    if not panels:
        return False
    heights = [0.6 + 0.3 * len(bars) for _, bars in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, sum(heights)), squeeze=False, height_ratios=heights
    )
    for ax, (w, bars) in zip(axes[:, 0], panels):
        names, speedups = zip(*bars)
        # Bars from 1 (as fast as the baseline): faster to the right, slower to the left;
        # limits of at least 2x either way, so that a few percent do not look like much.
        widths = [s - 1.0 for s in speedups]
        colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
        ax.barh(names, widths, left=1.0, color=colors)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        low, high = min(0.5, min(speedups) / 1.5), max(2.0, max(speedups) * 1.5)
        ax.set_xlim(low, high)
        ax.set_xticks(
            [t for t in (0.01, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high]
        )
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.invert_yaxis()
        ax.set_title(f"{w.name}: speedup over {w.baseline} (median per {w.unit})", fontsize=9)
        ax.tick_params(labelsize=8)
        for y, s in enumerate(speedups):
            ax.annotate(
                f"{s:.2f}x",
                (s, y),
                xytext=(3 if s >= 1 else -3, 0),
                textcoords="offset points",
                ha="left" if s >= 1 else "right",
                va="center",
                fontsize=7,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def select(all_workloads: list[Workload], only: str | None) -> list[Workload]:
    """The workloads whose name or group is in the comma-separated ``only`` (all if None).

    :raises ValueError: for a name that is neither.
    """
    if not only:
        return all_workloads
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {w.name for w in all_workloads} | {w.group for w in all_workloads}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; choose from {sorted(known)}")
    return [w for w in all_workloads if w.name in wanted or w.group in wanted]


def run(
    quick: bool = False,
    out: str | Path | None = None,
    only: str | None = None,
    repeats: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Runs the benchmark and writes ``RESULTS.md``, ``results.json`` and
    ``speedups.png`` into ``out``: by default ``benchmarks/`` for a full run of every
    workload, a new temporary directory for ``--quick`` or ``--only`` (partial results
    never overwrite the committed ones unless asked). Returns the directory."""
    chosen = select(workloads(quick), only)
    if repeats is not None:
        chosen = [replace(w, repeats=repeats) for w in chosen]
    if out is None:
        partial = quick or only
        out = tempfile.mkdtemp(prefix="lazyjit-bench-") if partial else "benchmarks"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = machine()
    log(
        f"{meta['command']}: {len(chosen)} workload(s), one process per contender, "
        f"results into {out}/"
    )
    start = time.perf_counter()
    results = []
    for workload in chosen:
        rows = run_workload(workload, log)
        results.append((workload, rows))
        log("")
        if workload.sweep:
            log(sweep_tables([(workload, rows)])[0])
        else:
            log(workload_table(workload, rows))
        log("")
    meta["total_s"] = time.perf_counter() - start
    meta["load_average_end"] = list(os.getloadavg())
    with_chart = chart(results, out / "speedups.png")
    (out / "RESULTS.md").write_text(report(meta, results, with_chart))
    (out / "results.json").write_text(json.dumps(to_json(meta, results), indent=1) + "\n")
    log(headline_table(results))
    for table in sweep_tables(results):
        log("")
        log(table)
    if not with_chart:
        log(
            "\nspeedups.png not written: no matplotlib, or nothing to plot (pip install -e '.[bench]')"
        )
    log(f"\n{meta['total_s']:.0f} s in all; {out / 'RESULTS.md'}, {out / 'results.json'}")
    return out
