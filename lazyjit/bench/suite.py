"""``python -m lazyjit bench``: every workload, one worker process per contender, then
the whole runs (:mod:`lazyjit.bench.wholeruns`, a fresh process per run), then the
tables on the terminal and ``RESULTS.md``, ``results.json`` and ``speedups.png`` in the
output folder. See ``docs/benchmarks.md``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from . import wholeruns
from .chart import chart
from .report import (
    headline_table,
    machine,
    output_folder,
    report,
    sweep_tables,
    to_json,
    workload_table,
)
from .workers import run_workload
from .workloads import select, workloads

# Where a full run writes when no --out is given: under the current directory.
DEFAULT_OUT = "lazyjit-bench"


def run(
    quick: bool = False,
    out: str | Path | None = None,
    only: str | None = None,
    repeats: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Runs the benchmark and writes ``RESULTS.md``, ``results.json`` and
    ``speedups.png`` into :func:`output_folder`; returns that folder. ``only`` may name
    the workloads' names and groups and the whole runs' (:data:`wholeruns.NAMES`)."""
    chosen = select(workloads(quick), only, also=wholeruns.NAMES)
    if repeats is not None:
        chosen = [replace(w, repeats=repeats) for w in chosen]
    whole = wholeruns.select(wholeruns.targets(quick), only)
    out = output_folder(out, bool(quick or only), DEFAULT_OUT)
    meta = machine()
    log(
        f"{meta['command']}: {len(chosen)} workload(s), one process per contender, and "
        f"{len(whole)} table(s) of whole runs, one process per run; results into {out}/"
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
    tables = wholeruns.run(quick, only, repeats, log) if whole else []
    meta["total_s"] = time.perf_counter() - start
    meta["load_average_end"] = list(os.getloadavg())
    with_chart = chart(results, out / "speedups.png")
    (out / "RESULTS.md").write_text(report(meta, results, with_chart, tables))
    (out / "results.json").write_text(json.dumps(to_json(meta, results, tables), indent=1) + "\n")
    if results:
        log(headline_table(results))
    for table in sweep_tables(results):
        log("")
        log(table)
    if results and not with_chart:
        log(
            "\nspeedups.png not written: no matplotlib, or nothing to plot (pip install -e '.[bench]')"
        )
    log(f"\n{meta['total_s']:.0f} s in all; {out / 'RESULTS.md'}, {out / 'results.json'}")
    return out
