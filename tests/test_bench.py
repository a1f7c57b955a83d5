"""The benchmark harness (``python -m lazyjit bench``, ``lazyjit.bench``): worker
processes, rounds that alternate, failures as rows, and the reports. No assertion is
about speed."""

import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest

from lazyjit import examples as models
from lazyjit.bench import contenders, report, suite, timing, wholeruns, workers, workloads
from lazyjit.bench.timing import paired_ratio, ratio

ROOT = Path(__file__).resolve().parents[1]


# Contender setups run in spawned workers, which import them from this module by name.
def sleeper(seconds: float):
    return functools.partial(time.sleep, seconds)


def broken():
    raise RuntimeError("this contender cannot run here")


def dies():
    os._exit(3)


@pytest.fixture(scope="module")
def fake():
    """A tiny workload of trivial contenders, run once for the tests below."""
    workload = workloads.Workload(
        name="fake",
        group="fake",
        title="Sleeping contenders",
        unit="step",
        steps=3,
        repeats=3,
        baseline="fast",
        contenders=(
            workloads.Contender("fast", "kind A", functools.partial(sleeper, 0.001)),
            workloads.Contender("slow", "kind B", functools.partial(sleeper, 0.004)),
            workloads.Contender("broken", "kind C", broken),
            workloads.Contender("dies", "kind D", dies),
        ),
        notes=("a note on what was left out",),
    )
    lines = []
    rows = workers.run_workload(workload, log=lines.append)
    return workload, rows, lines


def test_rounds_alternate(fake):
    _, rows, lines = fake
    fast, slow = rows[0], rows[1]
    assert fast.ok and slow.ok
    assert len(fast.rounds_s) == len(slow.rounds_s) == 3
    started = sorted(
        [(t, "fast") for t in fast.round_started] + [(t, "slow") for t in slow.round_started]
    )
    assert [name for _, name in started] == ["fast", "slow"] * 3
    assert fast.first_s > 0 and fast.peak_rss_mb > 0
    assert sum("round" in line for line in lines) == 3


def test_failures_are_rows(fake):
    _, rows, lines = fake
    broken_row, dead_row = rows[2], rows[3]
    assert not broken_row.ok and "RuntimeError: this contender cannot run here" in broken_row.error
    assert "Traceback" in broken_row.traceback
    assert not dead_row.ok and "exit code 3" in dead_row.error
    assert any("broken: FAILED" in line for line in lines)


def test_ratio_to_the_named_baseline(fake):
    workload, rows, _ = fake
    fast, slow = rows[0], rows[1]
    assert ratio(rows, slow, "fast") == pytest.approx(paired_ratio(slow.rounds_s, fast.rounds_s))
    assert 3 < ratio(rows, slow, "fast") < 5
    assert ratio(rows, fast, "fast") == 1.0
    assert ratio(rows, rows[2], "fast") is None
    assert ratio(rows, fast, "broken") is None


def test_paired_ratio_is_the_median_of_round_ratios():
    # Round 2 ran while the machine was 3x slower: its ratio is still 2, and the burst of
    # round 3 (one contender alone slowed) is the outlier the median drops.
    assert paired_ratio([2.0, 6.0, 9.0, 2.2], [1.0, 3.0, 1.0, 1.0]) == pytest.approx(2.1)
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_reports_name_every_contender(fake):
    workload, rows, _ = fake
    results = [(workload, rows)]
    meta = report.machine()
    data = json.loads(json.dumps(report.to_json(meta, results)))
    entries = data["workloads"][0]["contenders"]
    assert [e["name"] for e in entries] == ["fast", "slow", "broken", "dies"]
    assert entries[1]["rounds_s"] == rows[1].rounds_s
    assert entries[1]["ratio_to_baseline"] == ratio(rows, rows[1], "fast")
    assert entries[2]["error"] and entries[2]["median_s"] is None
    text = report.report(meta, results, with_chart=False)
    for name in ("fast", "slow", "broken", "dies", "a note on what was left out"):
        assert name in text
    assert "failed: RuntimeError" in text
    assert f"torch {meta['torch']}" in text and meta["date"] in text


def test_select():
    quick = workloads.workloads(quick=True)
    assert [w.name for w in workloads.select(quick, "nuts")] == ["nuts-gaussian", "nuts-logistic"]
    assert [w.name for w in workloads.select(quick, "svi-gaussian,sites-10")] == [
        "svi-gaussian",
        "sites-10",
    ]
    with pytest.raises(ValueError, match="unknown workload"):
        workloads.select(quick, "nothing")
    # The whole runs' names are known, and select none of the workloads.
    assert workloads.select(quick, "wholeruns", also=wholeruns.NAMES) == []
    assert [
        w.name for w in workloads.select(quick, "hmm,wholeruns-nuts", also=wholeruns.NAMES)
    ] == ["hmm"]
    targets = wholeruns.targets(quick=True)
    assert [t.name for t in wholeruns.select(targets, "wholeruns-nuts,hmm")] == [
        "wholeruns-nuts-20"
    ]
    assert wholeruns.select(targets, "wholeruns") == targets
    assert wholeruns.select(targets, "svi") == []


def quick_bench(only: str, out, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    """``python -m lazyjit bench --quick --only ONLY --out OUT``: the finished process
    and its results.json."""
    result = subprocess.run(
        [sys.executable, "-m", "lazyjit", "bench", "--quick", "--only", only, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads((out / "results.json").read_text())


def test_quick_run_of_one_workload(tmp_path):
    """The command line end to end, on the smallest real workload."""
    result, data = quick_bench("sites-10", tmp_path, timeout=120)
    (workload,) = data["workloads"]
    names = [entry["name"] for entry in workload["contenders"]]
    assert names == ["Pyro jit", "lazyjit (torchscript)"]
    assert all(entry["error"] is None for entry in workload["contenders"])
    text = (tmp_path / "RESULTS.md").read_text()
    assert all(name in text for name in names)
    assert "[sites-10] Pyro jit: first call" in result.stdout


def test_pyro_svi_floor_steps():
    # The floor of any drop-in ELBO: Pyro's SVI.step around a loss that only hands over
    # (zero) gradients. Its optimizer must see the guide's params.
    pyro.clear_param_store()
    step = contenders.pyro_svi_floor(models.gaussian_data(10))
    assert step() == 0.0
    store = pyro.get_param_store()
    grads = [store[name].unconstrained().grad for name in store.keys()]
    assert len(grads) == 2 and all(g is not None and not g.any() for g in grads)


def test_in_process_rounds_alternate():
    # The same loop as the workers', in this process: first calls, then rounds in turn.
    setups = {"fast": lambda: sleeper(0.0005), "slow": lambda: sleeper(0.002)}
    results = timing.compare(setups, steps=2, repeats=3)
    fast, slow = results
    assert isinstance(fast, timing.Result) and fast.ok and slow.ok
    assert fast.first_s > 0 and len(fast.rounds_s) == len(slow.rounds_s) == 3
    started = sorted(
        [(t, "fast") for t in fast.round_started] + [(t, "slow") for t in slow.round_started]
    )
    assert [name for _, name in started] == ["fast", "slow"] * 3
    assert ratio(results, slow, "fast") > 1
    text = report.table("Sleepers", results, "fast")
    assert "| fast |" in text and "| slow |" in text


def test_output_folder(tmp_path, monkeypatch):
    # A full run writes under the current directory, a partial one into a fresh
    # temporary directory, an explicit --out wherever it says.
    monkeypatch.chdir(tmp_path)
    assert report.output_folder(None, False, "lazyjit-bench").resolve() == (
        tmp_path / "lazyjit-bench"
    )
    partial = report.output_folder(None, True, "lazyjit-bench")
    assert partial.is_dir() and partial.resolve().parent != tmp_path
    assert report.output_folder(tmp_path / "x", True, "lazyjit-bench") == tmp_path / "x"


def test_gradient_counts_agree():
    # Pyro's kernel counts its potential's calls, lazyjit's read their compiled
    # functions' stats (the potential's, and the compiled leaf's on aten-jit): from the
    # same seed, eager Pyro and lazyjit draw the same numbers, hence as many gradients.
    pyro.set_rng_seed(0)
    args = (models.gaussian_data(20),)
    kernels = contenders.nuts_kernels(["eager", "aten-jit"])
    counts = {}
    for name in ("Pyro eager", "lazyjit (eager)", "lazyjit (aten-jit)"):
        run = contenders.NutsRun(kernels[name][0], models.gaussian_model, args, 10)
        run()
        counts[name] = run.gradients
    assert counts["Pyro eager"] > 20
    assert counts["lazyjit (eager)"] == counts["Pyro eager"]
    assert counts["lazyjit (aten-jit)"] == counts["Pyro eager"]


# ------------------------------------------------------------------------ whole runs

WHOLE_ROWS = ["pyro-jit", "lazyjit (cold)", "lazyjit-nots (warm)"]


@pytest.fixture(scope="module")
def whole_runs(tmp_path_factory):
    """``bench --quick --only wholeruns-svi --repeats 2``, in this process, with the
    20-step table cut to three contenders: a cold cache, a warmed one and TorchScript
    unavailable; two rounds of a fresh process per run (about 40 s on 2 cores)."""
    quick_svi = wholeruns.targets(quick=True)[0]
    contenders = (("pyro-jit", ""), ("lazyjit", "cold"), ("lazyjit-nots", "warm"))
    target = dataclasses.replace(quick_svi, contenders=contenders)
    out = tmp_path_factory.mktemp("wholeruns")
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wholeruns, "targets", lambda quick=False: [target])
        suite.run(quick=True, out=out, only="wholeruns-svi", repeats=2, log=lines.append)
    data = json.loads((out / "results.json").read_text())
    return data, (out / "RESULTS.md").read_text(), lines


def test_whole_runs_table(whole_runs):
    data, text, lines = whole_runs
    assert data["workloads"] == []  # --only named whole runs only
    (table,) = data["whole_runs"]
    assert table["name"] == "wholeruns-svi-20" and table["rounds"] == 2
    rows = {row["name"]: row for row in table["contenders"]}
    assert list(rows) == WHOLE_ROWS
    for row in rows.values():
        assert row["error"] is None, row["traceback"]
        assert len(row["rounds_s"]) == len(row["wall_s"]) == 2
        assert 0 < row["median_s"] < max(row["wall_s"])
        assert row["ratio_to_baseline"] is not None
    assert rows["pyro-jit"]["ratio_to_baseline"] == 1.0
    assert len(rows["lazyjit (cold)"]["waited_s"]) == 2
    # Without TorchScript no lane runs its graph on TorchScript's interpreter.
    assert rows["lazyjit-nots (warm)"]["tiers"]
    assert not any("aten-jit" in tiers for tiers in rows["lazyjit-nots (warm)"]["tiers"])
    assert table["title"] in text and all(f"| {name} |" in text for name in WHOLE_ROWS)
    assert any("lazyjit-nots: warming the cache" in line for line in lines)
    assert any(line.startswith("[wholeruns-svi-20] round 2/2") for line in lines)


def test_whole_runs_are_reproducible(whole_runs):
    # Seeded, each contender gives one last loss over its runs.
    data, _, _ = whole_runs
    for row in data["whole_runs"][0]["contenders"]:
        assert len(row["distinct_losses"]) == 1, row["losses"]


@pytest.mark.slow  # every quick whole run: about 3 minutes on 2 cores
def test_quick_whole_runs_end_to_end(tmp_path):
    _, data = quick_bench("wholeruns", tmp_path, timeout=1200)
    tables = data["whole_runs"]
    targets = wholeruns.targets(quick=True)
    assert [t["name"] for t in tables] == [t.name for t in targets]
    for table, target in zip(tables, targets, strict=True):
        names = [row["name"] for row in table["contenders"]]
        assert names == [wholeruns.row_name(c, cache) for c, cache in target.contenders]
        for row in table["contenders"]:
            if row["error"] == wholeruns.NOT_INSTALLED:
                continue
            assert row["error"] is None and row["ratio_to_baseline"] is not None, row
            assert len(row["distinct_losses"]) == 1
