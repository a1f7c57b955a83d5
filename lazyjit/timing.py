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
    """A markdown table; ``ratio`` is each contender's median step over ``baseline``'s."""
    base = next(r for r in results if r.name == baseline).median_s
    lines = [
        f"### {title}",
        "",
        f"| contender | first {unit} (ms) | per {unit} (us) | spread | ratio to {baseline} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.first_s * 1e3:.1f} | {r.median_s * 1e6:.0f} | "
            f"{r.spread:.0%} | {r.median_s / base:.2f} |"
        )
    return "\n".join(lines)
