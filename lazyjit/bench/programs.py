"""Real programs, run whole: ``python -m lazyjit programs``.

The programs are in :mod:`lazyjit.bench.program_models`. Contenders, each in a fresh
``python -c`` process with one torch thread, taking turns (eager, Pyro's jit, lazyjit;
then the next program):

- ``eager``: the script with its jit switch off (``Trace_ELBO``, ``jit_compile=False``);
- ``pyro-jit``: the script with its jit switch on (``JitTrace_ELBO``,
  ``jit_compile=True``, ``jit=True``), Pyro's own jit;
- ``lazyjit``: the same script as ``pyro-jit`` after ``lazyjit.install()`` (lazyjit's
  default backend, ``auto``). The child also sums ``stats`` of every
  :class:`lazyjit.CompiledFunction` made during the run: entries compiled and entries
  that run eagerly (fallbacks).

Times: ``total_s`` runs inside the child from a ``time.perf_counter()`` at the top of
its command (before torch is imported) to the end of the last step; ``import_s`` is the
imports' share of it; ``wall_s`` is the parent's wall time of the whole subprocess
(interpreter start and exit included). A row is a dict, an item of ``programs.json``'s
list. See ``docs/benchmarks.md``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .program_models import dmm, eight_schools, hmm, hmm_factorial, lda, mue, sir, vae
from .report import output_folder

CONTENDERS = ("eager", "pyro-jit", "lazyjit")
# Where a full run writes when no --out is given: under the current directory.
DEFAULT_OUT = "lazyjit-programs"
# The prefix of a child's result line: whatever else the program prints, this one is ours.
RESULT_TAG = "LAZYJIT_PROGRAM_RESULT "
# The directory that holds this lazyjit package: the children import it from there.
ROOT = Path(__file__).resolve().parents[2]
# How long a child's own processes may outlive it (a compile in flight finishing).
LINGER_S = 120.0


@dataclass(frozen=True)
class Program:
    """One whole program. ``run(steps, jit)`` returns ``{"loss": summary, ...}``;
    ``steps`` is the full run's length, ``quick`` a smoke run's; the contenders' summaries
    agree if within ``tolerance`` of eager's, relative to ``max(|eager|, scale)``."""

    name: str
    run: Callable[..., dict[str, float]]
    steps: int
    quick: int
    unit: str
    tolerance: float = 0.05
    scale: float = 1.0


PROGRAMS: dict[str, Program] = {
    p.name: p
    for p in [
        Program("vae", vae, 800, 20, "minibatches of 256"),
        Program("dmm", dmm, 100, 4, "minibatches of 20"),
        Program(
            "dmm-float-af",
            functools.partial(dmm, float_annealing=True),
            10,
            2,
            "minibatches of 20",
        ),
        Program("hmm", hmm, 100, 6, "minibatches of 8", 0.1),
        Program("hmm-factorial", hmm_factorial, 60, 4, "minibatches of 8", 0.1),
        Program("lda", lda, 50, 4, "minibatches of 32"),
        Program("sir", sir, 1000, 30, "SVI steps of 8 particles"),
        Program("eight-schools", eight_schools, 500, 50, "warmup + samples", 0.3, 3.0),
        Program("mue", mue, 30, 2, "epochs of 10 minibatches"),
    ]
}


# --------------------------------------------------------------------------- child


def _count_entries() -> Callable[[], dict[str, int]]:
    """Makes every :class:`lazyjit.CompiledFunction` created from now on register its
    stats; returns a function that sums them (``compiled``: entries compiled to a
    program, ``eager``: entries that run eagerly)."""
    from .. import CompiledFunction

    registered: list = []
    init = CompiledFunction.__init__

    def registering(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        registered.append(self.stats)

    CompiledFunction.__init__ = registering

    def counts() -> dict[str, int]:
        made = sum(s.compilations for s in registered)
        fallbacks = sum(s.fallbacks for s in registered)
        return {
            "functions": len(registered),
            "compiled": made - fallbacks,
            "eager": fallbacks,
            "compile_s": round(sum(s.compile_seconds for s in registered), 3),
        }

    return counts


def child_main(t0: float, name: str, contender: str, steps: int) -> None:
    """A contender's process: set up, run the program, print one tagged JSON line."""
    import warnings

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    result: dict[str, Any] = {"program": name, "contender": contender, "steps": steps}
    try:
        import pyro  # noqa: F401

        counts = None
        if contender == "lazyjit":
            import lazyjit

            lazyjit.install()  # before the program imports pyro.contrib's modules
            counts = _count_entries()
        result["import_s"] = time.perf_counter() - t0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")
            from .. import LazyJitWarning

            warnings.simplefilter("always", LazyJitWarning)
            start = time.perf_counter()
            summary = PROGRAMS[name].run(steps, jit=contender != "eager")
            end = time.perf_counter()
        result.update(summary)
        result["run_s"] = end - start
        result["total_s"] = end - t0
        if counts is not None:
            result["entries"] = counts()
            said = list(dict.fromkeys(str(w.message)[:300] for w in caught))
            result["warnings"] = said
    except Exception as e:  # noqa: BLE001 - a row that says why
        import traceback

        result["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        result["traceback"] = traceback.format_exc()
    print(RESULT_TAG + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


def run_python(
    code: str, args: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[dict[str, Any], float]:
    """Runs ``python -c code *args`` in a fresh interpreter that imports this lazyjit
    (from :data:`ROOT`), with ``env`` over this process's environment. Returns the JSON
    dict of the child's last line tagged :data:`RESULT_TAG` (``{"error": why}`` if it
    printed none or timed out) and the parent's wall seconds of the child process.

    Processes the child started (lazyjit's compile worker) may outlive it for a moment:
    they are waited for, untimed, so that none runs beside the next run."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), child_env.get("PYTHONPATH")])
    )
    child_env.update(env or {})
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        # stderr is a pipe that the child's own processes inherit: it closes when the last
        # of them exits. Drained on a thread, so that no process blocks on a full pipe.
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env,
        )
        errors: list[str] = []
        drain = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
        drain.start()
        try:
            returncode = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return {"error": f"timed out after {timeout:.0f} s"}, time.perf_counter() - start
        wall = time.perf_counter() - start
        drain.join(LINGER_S)
        out.seek(0)
        stdout = out.read()
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :]), wall
    tail = ("".join(errors) or stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {returncode}: {tail[0][:300]}"}, wall


def run_one(name: str, contender: str, steps: int, timeout: float) -> dict[str, Any]:
    """Runs one (program, contender) in a fresh interpreter; its result dict, with the
    parent's ``wall_s`` of the subprocess."""
    code = (
        "import time; T0 = time.perf_counter(); import sys; "
        "from lazyjit.bench.programs import child_main; "
        "child_main(T0, sys.argv[1], sys.argv[2], int(sys.argv[3]))"
    )
    result, wall = run_python(code, [name, contender, str(steps)], timeout)
    if "error" in result and "program" not in result:  # the child said nothing
        result = {"program": name, "contender": contender, "steps": steps, **result}
    result["wall_s"] = wall
    return result


def run(
    quick: bool = False,
    only: str | None = None,
    timeout: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every chosen (program, contender), one fresh process each, contenders taking
    turns within a program. Returns the rows (one dict per run)."""
    names = [n.strip() for n in only.split(",")] if only else list(PROGRAMS)
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown:
        raise ValueError(f"unknown program(s) {unknown}; choose from {list(PROGRAMS)}")
    timeout = timeout or (180.0 if quick else 600.0)
    rows = []
    for name in names:
        program = PROGRAMS[name]
        steps = program.quick if quick else program.steps
        for contender in CONTENDERS:
            row = run_one(name, contender, steps, timeout)
            rows.append(row)
            what = row.get("error") or f"loss {row['loss']:.4g}, {row['total_s']:.1f} s"
            log(f"{name:14s} {contender:9s} {steps:5d} {program.unit}: {what}")
    return rows


def _seconds(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "fails"
    return f"{row['total_s']:.1f} ({row['wall_s']:.1f})"


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: one line per program."""
    lines = [
        "| program | steps | eager s | Pyro jit s | lazyjit s | lazyjit / Pyro jit "
        "| entries compiled | entries eager | final losses agree? |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    by = {(r["program"], r["contender"]): r for r in rows}
    for name in dict.fromkeys(r["program"] for r in rows):
        program = PROGRAMS[name]
        eager, pyro_jit, lazy = (by.get((name, c)) for c in CONTENDERS)
        ok = [r for r in (eager, pyro_jit, lazy) if r is not None and "error" not in r]
        ratio = (
            f"{lazy['total_s'] / pyro_jit['total_s']:.2f}" if lazy in ok and pyro_jit in ok else "-"
        )
        entries = (lazy or {}).get("entries", {})
        losses = " / ".join(f"{r['loss']:.4g}" if r in ok else "-" for r in (eager, pyro_jit, lazy))
        if eager in ok and len(ok) > 1:
            bound = program.tolerance * max(abs(eager["loss"]), program.scale)
            agree = all(abs(r["loss"] - eager["loss"]) <= bound for r in ok)
            verdict = ("yes" if agree else "no") + f" ({losses})"
        else:
            verdict = f"- ({losses})"
        steps = (eager or pyro_jit or lazy or {}).get("steps", "-")
        lines.append(
            f"| {name} | {steps} | {_seconds(eager)} | {_seconds(pyro_jit)} | {_seconds(lazy)} "
            f"| {ratio} | {entries.get('compiled', '-')} | {entries.get('eager', '-')} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def report(
    rows: list[dict[str, Any]], command: str, seconds: float, load: tuple, load_start: tuple = ()
) -> str:
    """``PROGRAMS.md``: the table, how it was made, and every failure or warning."""
    from datetime import UTC, datetime

    import pyro

    out = [
        "# Real programs, whole runs",
        "",
        f"`{command}`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds:.0f} s in all; "
        f"torch {torch.__version__}, pyro {pyro.__version__}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average "
        + (f"at the start {load_start[0]:.2f}, " if load_start else "")
        + f"at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}.",
        "",
        "Each cell: seconds from the top of a fresh process to the end of its last step "
        "(imports, data, compiles included), then in parentheses the parent's wall time of "
        "the whole process. One torch thread each. Losses: eager / Pyro jit / lazyjit "
        "(eight-schools: the posterior mean of mu); they agree if within the program's "
        "tolerance of eager's. Entries: lazyjit's compiled entries and entries that run "
        "eagerly, summed over every `CompiledFunction` of the run. See "
        "[docs/benchmarks.md](../docs/benchmarks.md).",
        "",
        table(rows),
        "",
    ]
    notes = []
    for r in rows:
        if "error" in r:
            notes.append(f"- {r['program']}, {r['contender']}: {r['error']}")
        for w in r.get("warnings", []):
            notes.append(f"- {r['program']}, {r['contender']} warned: {w}")
        if r.get("nan_steps"):
            notes.append(f"- {r['program']}, {r['contender']}: {r['nan_steps']} NaN losses")
    if notes:
        out += ["Failures and warnings:", "", *notes, ""]
    return "\n".join(out)


def main(
    quick: bool = False,
    only: str | None = None,
    out: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """``python -m lazyjit programs``: runs, prints the table, writes ``PROGRAMS.md``
    (and ``programs.json``) into ``out``, or by default ``./lazyjit-programs`` for a full
    run of every program, a new temporary directory for ``--quick`` or ``--only``
    (:func:`lazyjit.bench.report.output_folder`)."""
    path = output_folder(out, bool(quick or only), DEFAULT_OUT)
    load_start = os.getloadavg()
    start = time.perf_counter()
    rows = run(quick=quick, only=only, log=log)
    seconds = time.perf_counter() - start
    command = "python -m lazyjit " + " ".join(sys.argv[1:]) if sys.argv[1:] else "programs"
    text = report(rows, command, seconds, os.getloadavg(), load_start)
    (path / "PROGRAMS.md").write_text(text)
    (path / "programs.json").write_text(json.dumps(rows, indent=1) + "\n")
    log("")
    log(table(rows))
    log(f"\n{seconds:.0f} s in all; {path / 'PROGRAMS.md'}")
    return path
