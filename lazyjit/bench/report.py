"""Markdown tables, ``RESULTS.md`` and ``results.json`` of the timing results.

:func:`table` is the compact table of an in-process comparison (the demo, the scripts
in ``benchmarks/``); the rest report ``python -m lazyjit bench``'s workloads.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyro
import torch

from .timing import Result, format_s, ratio

if TYPE_CHECKING:
    from .wholeruns import WholeRunTable
    from .workloads import Workload

# A workload and its rows, in the order run.
Results = list[tuple["Workload", list[Result]]]


def output_folder(out: str | Path | None, partial: bool, default: str) -> Path:
    """``out`` if given; else ``default`` under the current directory for a full run, a
    new temporary directory for a partial one (``--quick`` or ``--only``), so that a
    partial run never overwrites a full run's results unless asked. Created if needed."""
    if out is None:
        out = tempfile.mkdtemp(prefix=f"{default}-") if partial else default
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cells(values: Sequence[str]) -> str:
    """One markdown table line."""
    return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"


def table(title: str, results: list[Result], baseline: str, unit: str = "call") -> str:
    """A markdown table of contenders timed in one process: first call, median per call,
    spread and the ratio to ``baseline``'s, paired round by round."""
    lines = [
        f"### {title}",
        "",
        f"| contender | first {unit} | per {unit} | spread | ratio to {baseline} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        paired = ratio(results, r, baseline)
        lines.append(
            cells(
                [
                    r.name,
                    format_s(r.first_s),
                    format_s(r.median_s),
                    f"{r.spread:.0%}",
                    f"{paired:.2f}" if paired is not None else "-",
                ]
            )
        )
    return "\n".join(lines)


def footnotes(notes: Sequence[str], rows: Sequence[Result]) -> list[str]:
    """A table's notes, and what lazyjit warned about in each row's worker."""
    items = [*notes, *(f"{row.name} warned: {w}" for row in rows for w in row.warnings)]
    return ["", *(f"- {item}" for item in dict.fromkeys(items))] if items else []


def workload_table(workload: Workload, rows: list[Result]) -> str:
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
        cells(header),
        cells(["---"] + ["---:"] * (len(header) - 1)),
    ]
    for row in rows:
        if not row.ok:
            first = format_s(row.first_s) if row.first_s is not None else "-"
            lines.append(
                cells([row.name, first, f"failed: {row.error}"] + ["-"] * (len(header) - 3))
            )
            continue
        r = ratio(rows, row, workload.baseline)
        line = [
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
            line += [
                f"{grads:.0f}" if grads else "-",
                format_s(row.median_s / grads) if grads else "-",
                format_s(m["grad_s"]) if "grad_s" in m else "-",
                format_s(max(m["compile_s"], 0.0)) if "compile_s" in m else "-",
            ]
        lines.append(cells(line))
    return "\n".join(lines + footnotes(workload.notes, rows))


def sweep_tables(results: Results) -> list[str]:
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
            cells(header),
            cells(["---"] + ["---:"] * len(points)),
        ]
        for name in names:
            line = [name]
            for _, rows in points:
                row = next((r for r in rows if r.name == name), None)
                if row is None:
                    line.append("left out")
                elif not row.ok:
                    line.append(f"failed: {row.error}")
                else:
                    compile_s = max(row.first_s - row.median_s, 0.0)
                    line.append(
                        f"{format_s(row.median_s)} ({row.spread:.0%}) / {format_s(compile_s)}"
                    )
            lines.append(cells(line))
        notes = [note for w, _ in points for note in w.notes]
        lines += footnotes(notes, [row for _, rows in points for row in rows])
        tables.append("\n".join(lines))
    return tables


def headline_table(results: Results) -> str:
    """Speedup over Pyro's jit per kind of contender (rows) and workload (columns), the
    scaling sweep aside; in parentheses the larger spread of the two rows compared."""
    main = [(w, rows) for w, rows in results if not w.sweep]
    kinds = list(dict.fromkeys(r.kind for _, rows in main for r in rows))
    lines = [
        "### Speedup over Pyro's jit (higher is faster; in parentheses the larger spread of the two)",
        "",
        cells(["contender"] + [w.name for w, _ in main]),
        cells(["---"] + ["---:"] * len(main)),
    ]
    for kind in kinds:
        line = [kind]
        for w, rows in main:
            row = next((r for r in rows if r.kind == kind), None)
            base = next((r for r in rows if r.name == w.baseline), None)
            r = ratio(rows, row, w.baseline) if row is not None else None
            if row is None:
                line.append("-")
            elif r is None:
                line.append("failed" if row.error else "-")
            else:
                line.append(f"{1 / r:.2f}x ({max(row.spread, base.spread):.0%})")
        lines.append(cells(line))
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
    meta: dict[str, Any],
    results: Results,
    with_chart: bool,
    whole_runs: Sequence[WholeRunTable] = (),
) -> str:
    """``RESULTS.md``: the header (machine, versions, command), the headline table (and
    the chart if ``with_chart``), every workload's table, then the whole-run tables."""
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
    ]
    if results:
        parts += ["", headline_table(results)]
    if with_chart:
        parts += ["", "![speedups over Pyro's jit](speedups.png)"]
    for workload, rows in results:
        if not workload.sweep:
            parts += ["", workload_table(workload, rows)]
    for sweep in sweep_tables(results):
        parts += ["", sweep]
    for whole in whole_runs:
        parts += ["", whole.markdown()]
    return "\n".join(parts) + "\n"


def to_json(
    meta: dict[str, Any], results: Results, whole_runs: Sequence[WholeRunTable] = ()
) -> dict[str, Any]:
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
    return {"meta": meta, "workloads": out, "whole_runs": [w.to_json() for w in whole_runs]}
