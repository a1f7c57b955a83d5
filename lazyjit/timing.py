"""Side-by-side timing of contenders, shared by ``python -m lazyjit demo`` and ``benchmarks/``.

Contenders are timed in alternation, repeat after repeat, so drift of a noisy machine
hits all of them alike; each figure is the median over repeats, with the spread.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Step = Callable[[], object]


@dataclass
class Result:
    """Timings of one contender: first call (compile included) and steady-state step."""

    name: str
    first_s: float
    step_s: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-step repeats."""
        return spread(self.step_s)


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


def compare(
    contenders: dict[str, Callable[[], Step]], steps: int, repeats: int = 3
) -> list[Result]:
    """Times each contender: ``setup()`` returns a ``step`` callable, whose first call is
    timed alone, then ``repeats`` rounds of ``steps`` calls, contenders alternating."""
    results, stepper = [], []
    for name, setup in contenders.items():
        step = setup()
        start = time.perf_counter()
        step()
        results.append(Result(name, time.perf_counter() - start))
        stepper.append(step)
    for _ in range(repeats):
        for result, step in zip(results, stepper):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            result.step_s.append((time.perf_counter() - start) / steps)
    return results


def table(title: str, results: list[Result], baseline: str, unit: str = "call") -> str:
    """A markdown table; ``ratio`` is each contender's step over ``baseline``'s, paired
    round by round (:func:`paired_ratio`)."""
    base = next(r for r in results if r.name == baseline).step_s
    lines = [
        f"### {title}",
        "",
        f"| contender | first {unit} | per {unit} | spread | ratio to {baseline} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {format_s(r.first_s)} | {format_s(r.median_s)} | "
            f"{r.spread:.0%} | {paired_ratio(r.step_s, base):.2f} |"
        )
    return "\n".join(lines)
