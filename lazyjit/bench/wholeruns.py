"""Whole runs, as a user waits for them: the ``wholeruns`` section of
``python -m lazyjit bench`` (``--only wholeruns``, or one of :data:`NAMES`).

A run is a fresh ``python -c`` process (:data:`CHILD`), timed inside the child from a
``time.perf_counter()`` taken before torch is imported to the end of its last step:
imports, data, compiles and every step. The child runs with one torch thread
(:func:`lazyjit.bench.workers.prepare_worker`) and prints one JSON line: the seconds,
its last loss (NUTS: the posterior mean of ``loc``) and, for lazyjit, how long its lanes
waited at their switch call and the tiers they ended on. Contenders take turns within
each round (:func:`lazyjit.bench.timing.alternate`, one whole run a round).

Targets (:func:`targets`): SVI on the seed Gaussian model at 2,000 and 20,000 steps,
NUTS of 500 warmup + 500 samples on it, and SVI epochs on the seed HMM. Contenders: Pyro
(eager, jit), lazyjit's drop-in ELBO, its fused ``lazyjit.SVI`` and its NUTS, each also
with TorchScript unavailable (``-nots``, :func:`disable_torchscript`), and NumPyro where
it is installed. lazyjit's inductor cache is cold (an empty ``TORCHINDUCTOR_CACHE_DIR``
per run) or warm (one folder for the section, warmed by one untimed run of each lazyjit
contender first). See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
import json
import os
import statistics
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy
import pyro.infer

from .. import NUTS, SVI, JitTrace_ELBO, LazyJitWarning
from .. import examples as models
from ..backends import Lane
from . import contenders, workloads
from .programs import RESULT_TAG, run_python
from .report import cells, footnotes
from .timing import Result, Step, alternate, ratio
from .workers import prepare_worker

GROUP = "wholeruns"
WORKLOADS = ("svi", "nuts", "hmm")
# What ``--only`` selects: the section, or one workload's tables.
NAMES = (GROUP, *(f"{GROUP}-{w}" for w in WORKLOADS))
BASELINE = "pyro-jit"
SVI_LAZYJIT = ("lazyjit", "lazyjit-fused", "lazyjit-nots", "lazyjit-fused-nots")
# What the child can build, by workload.
CONTENDERS = {
    "svi": ("pyro-eager", "pyro-jit", "numpyro", *SVI_LAZYJIT),
    "nuts": ("pyro-jit", "numpyro", "lazyjit", "lazyjit-nots"),
    "hmm": ("pyro-jit", "lazyjit", "lazyjit-nots"),
}
# Pyro's jit on the 2-core machine: about 2 s of imports, a first epoch of 15 s (it
# compiles a graph per sequence length) and 2 s per epoch after: a run of about 26 s.
HMM_EPOCHS = 5
NOT_INSTALLED = "numpyro is not installed (pip install -e '.[bench]')"

# The child's command. The clock starts before torch is imported; a ``-nots`` child
# removes TorchScript before lazyjit (or Pyro) is imported, so that nothing sees it. A
# Pyro child imports what a Pyro script would, then this harness (which imports
# lazyjit) off the clock: ``child_main`` takes that import's seconds off Pyro's time.
CHILD = """\
import time
T0 = time.perf_counter()
import sys
import torch
{prelude}
T1 = time.perf_counter()
from lazyjit.bench.wholeruns import child_main
child_main(T0, time.perf_counter() - T1, *sys.argv[1:])
"""
PYRO_PRELUDE = "import pyro, pyro.infer, pyro.infer.autoguide, pyro.optim"

# NumPyro's child imports neither torch nor lazyjit: its model is NumPyro's twin of the
# seed Gaussian model (lazyjit.examples.numpyro_gaussian_model), its data the seed's,
# from a .npy file the parent writes.
NUMPYRO_CHILD = """\
import time
T0 = time.perf_counter()
import json, os, sys
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
import numpy as np
import jax
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal

def model(data):
    loc = numpyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = numpyro.sample("scale", dist.LogNormal(0.0, 3.0))
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("obs", dist.Normal(loc, scale), obs=data)

workload, steps, path, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = jax.numpy.asarray(np.load(path))
if workload == "svi":
    svi = SVI(model, AutoDiagonalNormal(model), numpyro.optim.Adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), data)
    update = jax.jit(svi.update)
    for _ in range(steps):
        state, loss = update(state, data)
    last = float(loss)
else:
    mcmc = MCMC(NUTS(model), num_warmup=steps, num_samples=steps, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(1), data)
    last = float(mcmc.get_samples()["loc"].mean())
print(tag + json.dumps({"seconds": time.perf_counter() - T0, "loss": last}), flush=True)
"""


def disable_torchscript() -> None:
    """Makes this process's torch look like one built without TorchScript: tracing,
    scripting and the tracer's graph builder raise ``RuntimeError``. The ``-nots``
    children run it first (its source is their prelude)."""
    import torch

    def unavailable(*args: object, **kwargs: object) -> None:
        raise RuntimeError("TorchScript is unavailable")

    torch.jit.trace = unavailable
    torch.jit.script = unavailable
    # The tracer itself: lazyjit's jit_trace calls it without going through torch.jit.
    torch._C._create_graph_by_tracing = unavailable


def child_code(contender: str) -> str:
    """The ``python -c`` command of one run of ``contender``."""
    if contender == "numpyro":
        return NUMPYRO_CHILD
    prelude = PYRO_PRELUDE if contender.startswith("pyro") else ""
    if contender.endswith("-nots"):
        prelude = inspect.getsource(disable_torchscript) + "\ndisable_torchscript()\n"
    return CHILD.format(prelude=prelude)


# --------------------------------------------------------------------------- child


def build(workload: str, contender: str, steps: int, small: bool) -> tuple[Step, int, Callable]:
    """``(step, calls, summary)``: the run is ``calls`` calls of ``step``; ``summary``
    turns the last call's result into the run's final figure. Built from the harness's
    contenders, on the data of seed 0 (NumPyro's run is :data:`NUMPYRO_CHILD`)."""
    if contender not in CONTENDERS.get(workload, ()) or contender == "numpyro":
        raise ValueError(f"no whole run of {contender!r} on {workload!r}; see CONTENDERS")
    if workload == "svi":
        data = models.gaussian_data(100)
        if contender == "pyro-eager":
            elbo = pyro.infer.Trace_ELBO()
        elif contender == "pyro-jit":
            elbo = pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True)
        else:
            elbo = JitTrace_ELBO(ignore_jit_warnings=True)
        svi_class = SVI if "fused" in contender else pyro.infer.SVI
        return contenders.gaussian_svi(elbo, data, svi_class), steps, float
    if workload == "nuts":
        # A user's kernels: Pyro's own NUTS (the step benchmark's subclass counts its
        # calls), and lazyjit's with its default backend.
        kernel = pyro.infer.NUTS if contender == "pyro-jit" else NUTS
        run = contenders.NutsRun(
            lambda m: kernel(m, jit_compile=True, ignore_jit_warnings=True),
            *workloads.nuts_model("gaussian"),
            steps,
        )
        return run, 1, lambda _: float(run.mcmc.get_samples()["loc"].mean())
    name = (
        "Pyro JitTraceEnum_ELBO" if contender == "pyro-jit" else "lazyjit JitTraceEnum_ELBO (auto)"
    )
    return contenders.hmm_contenders(["auto"], small)[name](), steps, float


def lanes() -> dict[str, Any]:
    """How long lazyjit's lanes waited at their switch call, in all, and how many ended
    on each tier: every :class:`lazyjit.backends.Lane` alive in this process (a walk of
    the garbage collector's objects, after the clock has stopped)."""
    found = [obj for obj in gc.get_objects() if isinstance(obj, Lane)]
    return {
        "waited_s": sum(getattr(lane, "waited_seconds", 0.0) for lane in found),
        "tiers": dict(Counter(str(getattr(lane, "tier", "?")) for lane in found)),
    }


def child_main(
    t0: float, harness_s: float, workload: str, contender: str, steps: str, small: str
) -> None:
    """A whole run's process: build, run, then print one line tagged
    :data:`lazyjit.bench.programs.RESULT_TAG` (``error`` and ``traceback`` if it failed).
    ``harness_s``: how long importing this harness took, not part of a Pyro run."""
    result: dict[str, Any]
    with warnings.catch_warnings(record=True) as caught:
        try:
            prepare_worker()
            step, calls, summary = build(workload, contender, int(steps), small == "1")
            for _ in range(calls):
                last = step()
            seconds = time.perf_counter() - t0
            if not contender.startswith("lazyjit"):
                seconds -= harness_s
            result = {"seconds": seconds, "loss": summary(last)}
            if contender.startswith("lazyjit"):
                result |= lanes()
        except Exception as e:  # noqa: BLE001 - the run's row says why
            result = {
                "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
                "traceback": traceback.format_exc(),
            }
    said = [str(w.message)[:300] for w in caught if issubclass(w.category, LazyJitWarning)]
    result["warnings"] = list(dict.fromkeys(said))
    print(RESULT_TAG + json.dumps(result), flush=True)


# -------------------------------------------------------------------------- parent


@dataclass(frozen=True)
class Target:
    """One workload at one length: its contenders take turns, a fresh process a run.

    :ivar workload: ``"svi"``, ``"nuts"`` or ``"hmm"``: what the child builds.
    :ivar steps: SVI steps, NUTS warmup steps (and as many samples), or HMM epochs.
    :ivar contenders: ``(contender, cache)`` in the order they take turns; cache is
        ``"cold"``, ``"warm"`` or ``""`` (Pyro and NumPyro: no inductor, one run a round).
    :ivar small: the HMM's 8 sequences rather than 75 (``--quick``).
    :ivar statistic: what the child's ``loss`` is.
    """

    workload: str
    steps: int
    title: str
    contenders: tuple[tuple[str, str], ...]
    small: bool = False
    statistic: str = "last loss"
    notes: tuple[str, ...] = ()

    @property
    def group(self) -> str:
        """What ``--only`` selects it by, besides :data:`GROUP`."""
        return f"{GROUP}-{self.workload}"

    @property
    def name(self) -> str:
        """The table's name: its group and its length."""
        return f"{self.group}-{self.steps}"


@dataclass
class WholeRun(Result):
    """A contender's whole runs, one a round: ``rounds_s`` are each run's seconds, first
    import to last step; ``wall_s`` the parent's wall time of each process; ``losses``
    each run's final figure; ``waited_s`` (lazyjit) how long its lanes waited at their
    switch calls; ``tiers`` the tiers its lanes ended on."""

    cache: str = ""
    wall_s: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    waited_s: list[float] = field(default_factory=list)
    tiers: list[dict[str, int]] = field(default_factory=list)

    @property
    def distinct_losses(self) -> list[float]:
        """The different final figures over the runs: one for a reproducible contender."""
        return sorted(set(self.losses))


def row_name(contender: str, cache: str) -> str:
    """A row's name: the contender, and its cache where it has one."""
    return f"{contender} ({cache})" if cache else contender


class Runner:
    """One contender of a :class:`Target`, as :func:`lazyjit.bench.timing.alternate`
    drives it: no first call, and each round one whole run in a fresh process."""

    def __init__(self, target: Target, contender: str, cache: str, warm_dir: str, timeout: float):
        self.result = WholeRun(row_name(contender, cache), contender, cache=cache)
        self.target, self.contender, self.cache = target, contender, cache
        self.warm_dir, self.timeout = warm_dir, timeout

    def first(self) -> None:
        """Nothing to do: every run starts from nothing."""

    def round(self, calls: int) -> None:
        """One run of ``calls`` steps (NUTS: warmup steps; HMM: epochs)."""
        r = self.result
        r.round_started.append(time.time())
        if self.cache == "cold":
            with tempfile.TemporaryDirectory(
                prefix="lazyjit-cold-inductor-", ignore_cleanup_errors=True
            ) as cold:
                run = run_once(self.target, self.contender, calls, cold, self.timeout)
        else:
            run = run_once(self.target, self.contender, calls, self.warm_dir, self.timeout)
        r.warnings = list(dict.fromkeys([*r.warnings, *run.get("warnings", [])]))
        if "error" in run:
            r.error, r.traceback = run["error"], run.get("traceback")
            return
        r.rounds_s.append(run["seconds"])
        r.wall_s.append(run["wall_s"])
        r.losses.append(run["loss"])
        if "waited_s" in run:
            r.waited_s.append(run["waited_s"])
            r.tiers.append(run["tiers"])


def run_once(target: Target, contender: str, steps: int, cache_dir: str, timeout: float) -> dict:
    """One whole run in a fresh process: the child's result, with ``wall_s``. Pyro and
    NumPyro keep this process's inductor cache setting (they do not use inductor)."""
    env = {"TORCHINDUCTOR_CACHE_DIR": cache_dir} if contender.startswith("lazyjit") else {}
    args = [target.workload, contender, str(steps), "1" if target.small else "0"]
    if contender == "numpyro":
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "data.npy")
            pyro.set_rng_seed(0)  # the data every child draws (prepare_worker)
            numpy.save(path, models.gaussian_data(100).numpy())
            args = [target.workload, str(steps), path, RESULT_TAG]
            result, wall = run_python(NUMPYRO_CHILD, args, timeout, env)
    else:
        result, wall = run_python(child_code(contender), args, timeout, env)
    result["wall_s"] = wall
    return result


@dataclass
class WholeRunTable:
    """A target's rows once run: its markdown table and its ``results.json`` entry."""

    target: Target
    rounds: int
    rows: list[WholeRun]

    def markdown(self) -> str:
        """Median seconds, the paired ratio to Pyro's jit, spread, the process's wall
        time, the lanes' wait at their switch, and the distinct final figures."""
        header = [
            "contender",
            "median s",
            f"time / {BASELINE}",
            "spread",
            "process s",
            "waited at switch s",
            f"{self.target.statistic}, distinct over {self.rounds} run(s)",
        ]
        lines = [
            f"### {self.target.title}",
            "",
            cells(header),
            cells(["---"] + ["---:"] * 5 + ["---"]),
        ]
        for row in self.rows:
            if not row.ok:
                lines.append(cells([row.name, f"failed: {row.error}"] + ["-"] * 5))
                continue
            paired = ratio(self.rows, row, BASELINE)
            distinct = [f"{v:.10g}" for v in row.distinct_losses]
            said = (
                distinct[0]
                if len(distinct) == 1
                else f"{len(distinct)} values: " + ", ".join(distinct)
            )
            lines.append(
                cells(
                    [
                        row.name,
                        f"{row.median_s:.2f}",
                        f"{paired:.2f}" if paired is not None else "-",
                        f"{row.spread:.0%}",
                        f"{statistics.median(row.wall_s):.2f}",
                        f"{statistics.median(row.waited_s):.2f}" if row.waited_s else "-",
                        said,
                    ]
                )
            )
        return "\n".join(lines + footnotes(self.target.notes, self.rows))

    def to_json(self) -> dict[str, Any]:
        """Every run's figures, with each row's median, spread and ratio."""
        entries = []
        for row in self.rows:
            entry = asdict(row)
            entry["median_s"] = row.median_s if row.ok else None
            entry["spread"] = row.spread if row.ok else None
            entry["ratio_to_baseline"] = ratio(self.rows, row, BASELINE)
            entry["distinct_losses"] = row.distinct_losses
            entries.append(entry)
        return {
            "name": self.target.name,
            "group": GROUP,
            "workload": self.target.workload,
            "title": self.target.title,
            "steps": self.target.steps,
            "rounds": self.rounds,
            "baseline": BASELINE,
            "statistic": self.target.statistic,
            "notes": list(self.target.notes),
            "contenders": entries,
        }


def targets(quick: bool = False) -> list[Target]:
    """The section's tables: the full run's, or ``--quick``'s (SVI at 20 and 60 steps,
    NUTS 20 + 20, one epoch of the HMM's 8 sequences)."""
    svi_steps = (20, 60) if quick else (2000, 20000)
    n = 20 if quick else 500
    epochs = 1 if quick else HMM_EPOCHS
    how = (
        "Each run a fresh process with one torch thread: seconds from before `import torch` "
        "to the last step, compiles included; process s: the parent's wall time of the whole "
        "process. Contenders take turns in each round. -nots: TorchScript unavailable."
    )
    rule = (
        f"lazyjit's default backend (auto) as it runs, by its own rule ({contenders.auto_rule()})."
    )
    caches = (
        "cold: an empty inductor cache per run; warm: one cache for the section, warmed by "
        "an untimed run of each lazyjit contender first. Pyro and NumPyro (no inductor) run "
        "once a round."
    )
    lazy_svi = tuple((c, cache) for c in SVI_LAZYJIT for cache in ("cold", "warm"))
    chosen = []
    for steps in svi_steps:
        # Eager Pyro at the shorter length only: its figure per step does not change.
        eager = (("pyro-eager", ""),) if steps == svi_steps[0] else ()
        chosen.append(
            Target(
                "svi",
                steps,
                f"Whole runs: SVI, seed Gaussian model (100 points, AutoDiagonalNormal, "
                f"Adam), {steps:,} steps, cold and warm inductor cache",
                (*eager, ("pyro-jit", ""), ("numpyro", ""), *lazy_svi),
                notes=(
                    how,
                    caches,
                    rule,
                    "lazyjit-fused: lazyjit.SVI, loss, gradients and Adam in one graph.",
                ),
            )
        )
    chosen.append(
        Target(
            "nuts",
            n,
            f"Whole runs: NUTS, seed Gaussian model (100 points), {n} warmup + {n} samples, "
            "warm inductor cache",
            (("pyro-jit", ""), ("numpyro", ""), ("lazyjit", "warm"), ("lazyjit-nots", "warm")),
            statistic="posterior mean of loc",
            notes=(how, caches, rule),
        )
    )
    sequences = 8 if quick else 75
    chosen.append(
        Target(
            "hmm",
            epochs,
            f"Whole runs: SVI, seed HMM (TraceEnum_ELBO, {sequences} sequences of lengths "
            f"24/48/72), {epochs} epoch(s), warm inductor cache",
            (("pyro-jit", ""), ("lazyjit", "warm"), ("lazyjit-nots", "warm")),
            small=quick,
            notes=(how, caches, rule),
        )
    )
    return chosen


def select(all_targets: list[Target], only: str | None) -> list[Target]:
    """The targets that the comma-separated ``only`` names (all if None); names that are
    not this section's are the other workloads' and select none here."""
    if not only:
        return all_targets
    wanted = {name.strip() for name in only.split(",")}
    return [t for t in all_targets if GROUP in wanted or t.group in wanted]


def warm_up(
    target: Target,
    chosen: Sequence[Target],
    warm_dir: str,
    warmed: set[tuple[str, str]],
    timeout: float,
    log: Callable[[str], None],
) -> None:
    """One untimed run, into the warm cache, of each of ``target``'s warm-cache
    contenders not yet warmed: at the longest length of its workload chosen, so that it
    compiles whatever a timed run does."""
    steps = max(t.steps for t in chosen if t.workload == target.workload)
    for contender, cache in target.contenders:
        if cache != "warm" or (target.workload, contender) in warmed:
            continue
        warmed.add((target.workload, contender))
        run = run_once(target, contender, steps, warm_dir, timeout)
        said = run.get("error") or f"{run['seconds']:.1f} s"
        log(f"[{target.group}] {contender}: warming the cache, one untimed run of {steps}: {said}")


def run(
    quick: bool = False,
    only: str | None = None,
    repeats: int | None = None,
    log: Callable[[str], None] = print,
    timeout: float | None = None,
) -> list[WholeRunTable]:
    """Runs the section's targets that ``only`` selects, ``repeats`` rounds each (3; 1
    with ``quick``); one table per target. ``timeout``: seconds a run may take."""
    chosen = select(targets(quick), only)
    rounds = repeats or (1 if quick else 3)
    timeout = timeout or (300.0 if quick else 1200.0)
    numpyro = importlib.util.find_spec("numpyro") is not None
    tables = []
    with tempfile.TemporaryDirectory(
        prefix="lazyjit-warm-inductor-", ignore_cleanup_errors=True
    ) as warm_dir:
        warmed: set[tuple[str, str]] = set()
        for target in chosen:
            start = time.perf_counter()
            warm_up(target, chosen, warm_dir, warmed, timeout, log)
            runners = [
                Runner(target, c, cache, warm_dir, timeout) for c, cache in target.contenders
            ]
            for runner in runners:
                if runner.contender == "numpyro" and not numpyro:
                    runner.result.error = NOT_INSTALLED
            alternate(runners, target.steps, rounds, log, f"[{target.name}] ", "run")
            tables.append(WholeRunTable(target, rounds, [r.result for r in runners]))
            log(f"[{target.name}] done in {time.perf_counter() - start:.0f} s")
            log(f"\n{tables[-1].markdown()}\n")
    return tables
