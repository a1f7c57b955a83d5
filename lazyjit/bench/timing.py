"""The one timing loop of ``python -m lazyjit bench``, ``demo`` and ``benchmarks/``.

A contender is a ``setup()`` that returns a ``step`` callable. :func:`first_call` builds
it and times its first call (compilation included); :func:`timed_round` times ``calls``
consecutive calls; both go through :func:`time_calls`. :func:`alternate` drives any
number of contenders, in this process (:class:`InProcess`) or each in its own worker
process (:class:`lazyjit.bench.workers.Worker`): first calls one after the other, then
rounds in turn, so that drift of a noisy machine hits every contender alike. Every
figure lands in a :class:`Result`, the one row class of the harness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..backends import BACKENDS, compiles_started, wait_for_compiles

Step = Callable[[], object]


@dataclass
class Result:
    """One contender's figures, or why it has none (``error``, with its ``traceback``).

    ``rounds_s``: seconds per call of each round; ``round_started``: when each began
    (Unix time); ``kind``: what the contender is across workloads ("Pyro jit",
    "lazyjit auto", ...); ``metrics``: extra figures of its step (NUTS's gradient
    counts); ``warnings``: the LazyJitWarnings its process saw; ``peak_rss_mb``: its
    worker's peak resident memory (None in process)."""

    name: str
    kind: str = ""
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


def spread(samples: Sequence[float]) -> float:
    """(max - min) / median of repeated timings: how far one figure can be trusted."""
    return (max(samples) - min(samples)) / statistics.median(samples)


def format_s(seconds: float) -> str:
    """Seconds with a unit that keeps three significant digits readable."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e6:.3g} us"


def paired_ratio(samples: Sequence[float], base: Sequence[float]) -> float:
    """The median over rounds of ``samples[i] / base[i]``, for contenders timed in
    alternation: each round's two figures share the machine's state of the moment, so
    drift and bursts of a noisy machine cancel out of each round's ratio (a ratio of
    medians keeps them)."""
    return statistics.median(s / b for s, b in zip(samples, base, strict=True))


def ratio(results: Sequence[Result], result: Result, baseline: str) -> float | None:
    """``result``'s time per call over ``baseline``'s, paired round by round (below 1:
    faster); None if either failed."""
    base = next((r for r in results if r.name == baseline), None)
    if base is None or not base.ok or not result.ok:
        return None
    return paired_ratio(result.rounds_s, base.rounds_s)


# ------------------------------------------------------------------------- the loop


def time_calls(step: Step, calls: int) -> float:
    """Seconds per call of ``calls`` consecutive calls of ``step``: the one timed loop."""
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def first_call(
    setup: Callable[[], Step], warm_seconds: float | None = None, warmup: int = 0
) -> tuple[Step, float]:
    """``(step, seconds of its first call)``. Then, untimed: :func:`warm` for
    ``warm_seconds`` if given, ``warmup`` more calls (TorchScript's profiling executor
    optimizes a graph over its first runs), and a wait for lazyjit's background compiles,
    so that none runs beside the rounds of another contender."""
    step = setup()
    seconds = time_calls(step, 1)
    if warm_seconds is not None:
        warm(step, warm_seconds)
    for _ in range(warmup):
        step()
    wait_for_compiles()
    return step, seconds


def timed_round(step: Step, calls: int) -> tuple[float, float]:
    """``(seconds per call, Unix time it started)`` of one round of ``calls`` calls; then,
    untimed, a wait for the background compiles the round started."""
    started = time.time()
    seconds = time_calls(step, calls)
    wait_for_compiles()
    return seconds, started


def warm(step: Step, seconds: float) -> None:
    """Steps ``step`` for ``seconds`` (past auto's hot rule), then :func:`settle`\\ s it."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        step()
    settle(step)


def settle(step: Step) -> None:
    """Steps until a step starts no background compile, each waited for (a hot lane
    waits for the compile in flight before it starts its own): the steady state."""
    while True:
        started = compiles_started()
        wait_for_compiles()
        step()
        if compiles_started() == started and wait_for_compiles():
            return


def steady(setup: Callable[[], Step], seconds: float) -> Callable[[], Step]:
    """``setup``, whose step is :func:`warm`\\ ed for ``seconds`` before it is returned."""

    def warmed() -> Step:
        step = setup()
        warm(step, seconds)
        return step

    return warmed


@contextlib.contextmanager
def hot_after(calls: int | None) -> Iterator[None]:
    """Inside, auto's new lanes are hot after ``calls`` calls and switch to inductor's
    code as soon as it is compiled: auto's steady state, reached sooner than by its own
    rule (the steady state does not depend on when). ``None``: auto's rule unchanged."""
    if calls is None:
        yield
        return
    auto = BACKENDS["auto"]
    policy = auto.policy
    auto.policy = dataclasses.replace(
        policy, hot_calls=calls, local_hot_calls=calls, switch_calls=0
    )
    try:
        yield
    finally:
        auto.policy = policy


# ------------------------------------------------------------------- the contenders


class Timed(Protocol):
    """A contender being timed, in this process or in a worker: :func:`alternate` asks
    for its first call, then for rounds; either records into ``result``, or sets
    ``result.error``."""

    result: Result

    def first(self) -> None: ...

    def round(self, calls: int) -> None: ...


class InProcess:
    """A contender timed in this process (failures raise)."""

    def __init__(
        self,
        name: str,
        setup: Callable[[], Step],
        kind: str = "",
        warm_seconds: float | None = None,
        warmup: int = 0,
    ):
        self.result = Result(name, kind)
        self.setup, self.warm_seconds, self.warmup = setup, warm_seconds, warmup
        self.step: Step | None = None

    def first(self) -> None:
        self.step, self.result.first_s = first_call(self.setup, self.warm_seconds, self.warmup)

    def round(self, calls: int) -> None:
        seconds, started = timed_round(self.step, calls)
        self.result.rounds_s.append(seconds)
        self.result.round_started.append(started)


def alternate(
    contenders: Sequence[Timed],
    calls: int,
    repeats: int,
    log: Callable[[str], None] | None = None,
    prefix: str = "",
    unit: str = "call",
) -> list[Result]:
    """Each contender's first call, one after the other; then ``repeats`` rounds of
    ``calls`` calls, contenders taking turns (one that failed sits the rest out). With
    ``log``, one line per first call and one per round, each after ``prefix``."""
    for contender in contenders:
        contender.first()
        r = contender.result
        # A contender without a first call (a whole run per round) has nothing to say yet.
        if log is not None and (r.error is not None or r.first_s is not None):
            said = f"FAILED: {r.error}" if r.error else f"first {unit} {format_s(r.first_s)}"
            log(f"{prefix}{r.name}: {said}")
    for i in range(repeats):
        times = []
        for contender in contenders:
            r = contender.result
            if r.error is not None:
                continue
            contender.round(calls)
            if r.error is not None:
                times.append(f"{r.name} FAILED: {r.error}")
            else:
                times.append(f"{r.name} {format_s(r.rounds_s[-1])}")
        if log is not None:
            log(f"{prefix}round {i + 1}/{repeats}, per {unit}: {'; '.join(times)}")
    return [contender.result for contender in contenders]


def compare(
    contenders: dict[str, Callable[[], Step]], steps: int, repeats: int = 3
) -> list[Result]:
    """Times each ``{name: setup}`` in this process with :func:`alternate`: a first call
    each, then ``repeats`` rounds of ``steps`` calls."""
    return alternate([InProcess(name, setup) for name, setup in contenders.items()], steps, repeats)
