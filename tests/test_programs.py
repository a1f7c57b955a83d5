"""``lazyjit.bench.programs`` (``python -m lazyjit programs``): every program runs a
couple of eager steps, and the runner's child and table work. No assertion is about
speed."""

import math

import pytest
import torch

from lazyjit.bench import programs


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as in the benchmark's children (and no oversubscription of a
    busy machine's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(programs.PROGRAMS))
def test_program_runs_eagerly(name):
    program = programs.PROGRAMS[name]
    steps = {"eight-schools": 10, "vae": 2, "hmm": 2, "sir": 2}.get(name, 1)
    result = program.run(steps, jit=False)
    assert math.isfinite(result["loss"])


@pytest.mark.slow  # a fresh interpreter: about 4 s
def test_child_reports_times_and_loss():
    row = programs.run_one("vae", "eager", 1, timeout=120)
    assert "error" not in row, row
    assert 0 < row["import_s"] < row["total_s"] <= row["wall_s"]
    assert math.isfinite(row["loss"])


def test_table_and_report():
    rows = [
        {
            "program": "vae",
            "contender": "eager",
            "steps": 5,
            "loss": 100.0,
            "total_s": 4.0,
            "wall_s": 5.0,
        },
        {
            "program": "vae",
            "contender": "pyro-jit",
            "steps": 5,
            "loss": 101.0,
            "total_s": 2.0,
            "wall_s": 3.0,
        },
        {
            "program": "vae",
            "contender": "lazyjit",
            "steps": 5,
            "loss": 150.0,
            "total_s": 1.0,
            "wall_s": 2.0,
            "entries": {"compiled": 2, "eager": 1},
            "warnings": ["runs eagerly"],
        },
        {"program": "mue", "contender": "eager", "steps": 5, "error": "timed out after 9 s"},
    ]
    text = programs.table(rows)
    assert "| vae | 5 | 4.0 (5.0) | 2.0 (3.0) | 1.0 (2.0) | 0.50 | 2 | 1 | no (" in text
    assert "| mue | 5 | fails | - | - | - | - | - |" in text
    report = programs.report(rows, "python -m lazyjit programs", 9.0, (1.0, 1.0, 1.0))
    assert "timed out after 9 s" in report and "runs eagerly" in report


def test_unknown_program():
    with pytest.raises(ValueError, match="unknown program"):
        programs.run(only="nope")
