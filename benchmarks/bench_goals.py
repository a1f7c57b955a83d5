"""Every speed goal of issue 6 next to its measured ratio, side by side in one run.

    python benchmarks/bench_goals.py [--quick] [--threads N] [--cold-cache]

Sections (each prints its own table, then one table of all goals with PASS/FAIL):

1. SVI step, seed Gaussian model (100 points, ``AutoDiagonalNormal``, ``pyro.optim.Adam``):
   Pyro's ``JitTrace_ELBO``; drop-in ``pyro.infer.SVI`` + ``lazyjit.JitTrace_ELBO()``
   (``"auto"``) in its steady state (stepped past auto's hot rule, background compile
   waited for); ``lazyjit.SVI`` (the fused step), steady; NumPyro's jitted ``svi.update``
   when NumPyro is installed (``pip install -e .[bench]``).
2. First SVI step (compilation included) of a fresh ``JitTrace_ELBO``: Pyro's jit
   against lazyjit's ``"auto"``, the median of several rounds, order alternating.
3. Seed HMM (``JitTraceEnum_ELBO``, lengths 24/48/72): two epochs from scratch, compiles
   included, and the steady epoch once every entry runs its inductor code (auto's hot
   rule lowered to 2 calls to get there sooner; steady state does not depend on when).
4. NUTS, seed Gaussian model and logistic regression (500 warmup + 500 samples; 100 +
   100 with ``--quick``): wall time of ``MCMC.run``, compilation included, and the
   potential-and-gradient evaluations of a run. It runs first,
   and without an inductor contender: auto's leaves move to inductor sooner once inductor
   has started in the process, so this is auto as a fresh process runs it.
5. Compile time against model size (a chain of 10, 100, 1000 sample sites), per
   backend and for Pyro's jit: the first three potential-and-gradient calls minus three
   steady ones (``lazyjit.bench.contenders.time_grad``: TorchScript profiles a graph in
   its first call and optimizes it in the second).

Sections run in the order 4, 1, 2, 3, 5.

Every section times with ``lazyjit.bench.timing`` (the loop of ``python -m lazyjit
bench`` and ``demo``), in this one process. Timings on a small shared machine are noisy:
contenders alternate, figures are medians, ratios the median of each round's ratio
(``lazyjit.bench.timing.paired_ratio``), and the load average (``os.getloadavg()``) is
printed before and after.
Inductor compiles depend on its on-disk cache; ``--cold-cache`` points it at a fresh
directory (every compile cold), otherwise the cache is used as found.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable

import pyro
import torch

from lazyjit import examples as models
from lazyjit.backends import wait_for_compiles
from lazyjit.bench.contenders import (
    FIRST_CALLS,
    NutsRun,
    fused_svi,
    gaussian_contenders,
    hmm_contenders,
    lazyjit_potential_grad,
    numpyro_svi,
    nuts_kernels,
    pyro_potential_grad,
    pyro_svi_floor,
    time_grad,
)
from lazyjit.bench.report import table
from lazyjit.bench.timing import Step, compare, hot_after, paired_ratio, settle, steady

# (goal, target ratio, measured ratio, what the ratio compares)
Goal = tuple[str, float, float, str]
AUTO = "lazyjit JitTrace_ELBO (auto)"


def in_turn(names: Iterable[str], round_: int) -> list[str]:
    """``names`` in order in even rounds, reversed in odd ones: none always goes first."""
    names = list(names)
    return names if round_ % 2 == 0 else names[::-1]


def svi_section(quick: bool) -> tuple[str, list[Goal]]:
    pyro.clear_param_store()
    data = models.gaussian_data(100)
    warm = 7.0  # seconds: long enough for auto's lanes to reach inductor
    plain = gaussian_contenders(["auto"])
    contenders = {
        "Pyro JitTrace_ELBO": plain["Pyro JitTrace_ELBO"],
        AUTO: steady(plain[AUTO], warm),
        "lazyjit.SVI (fused)": steady(lambda: fused_svi(data), 2.0),
        "Pyro SVI + Adam around a precomputed loss": lambda: pyro_svi_floor(data),
    }
    try:
        import numpyro  # noqa: F401
    except ImportError:
        numpyro_note = "NumPyro not installed (pip install -e .[bench]): fused goal not measured"
    else:
        numpyro_note = ""
        contenders["NumPyro svi.update (jax.jit)"] = lambda: numpyro_svi(data)
    results = compare(contenders, steps=200 if quick else 1000, repeats=3 if quick else 5)
    text = table(
        "SVI step, seed Gaussian model (100 points, AutoDiagonalNormal, Adam); lazyjit rows "
        "in their steady state (first-step column: after warm-up)",
        results,
        "Pyro JitTrace_ELBO",
        "step",
    )
    rounds = {r.name: r.rounds_s for r in results}
    base = rounds["Pyro JitTrace_ELBO"]
    floor = paired_ratio(rounds["Pyro SVI + Adam around a precomputed loss"], base)
    text += (
        f"\n\nPyro's SVI step around a loss (its param trace and optimizer loop) is {floor:.2f}x "
        "Pyro's jit step by itself: the floor of any drop-in ELBO."
    )
    goals = [
        (
            "SVI step: drop-in SVI + JitTrace_ELBO(auto), steady",
            0.25,
            paired_ratio(rounds[AUTO], base),
            "x Pyro JitTrace_ELBO step",
        )
    ]
    if numpyro_note:
        text += "\n\n" + numpyro_note
    else:
        fused = paired_ratio(rounds["lazyjit.SVI (fused)"], rounds["NumPyro svi.update (jax.jit)"])
        goals.append(("SVI step: lazyjit.SVI fused", 2.0, fused, "x NumPyro jitted svi.update"))
    return text, goals


def first_call_section(rounds: int) -> tuple[str, list[Goal]]:
    firsts: dict[str, list[float]] = {"Pyro JitTrace_ELBO": [], AUTO: []}
    for i in range(rounds):
        pyro.clear_param_store()
        fresh = gaussian_contenders(["auto"])
        order = in_turn(firsts, i)
        for result in compare({name: fresh[name] for name in order}, steps=1, repeats=0):
            firsts[result.name].append(result.first_s)
    med = {name: statistics.median(v) for name, v in firsts.items()}
    lines = [
        f"### First SVI step (compile included), fresh ELBO, median of {rounds} rounds",
        "",
        "| contender | first step (ms) | all rounds (ms) |",
        "| --- | ---: | --- |",
    ]
    for name, values in firsts.items():
        rounds_ms = ", ".join(f"{v * 1e3:.0f}" for v in values)
        lines.append(f"| {name} | {med[name] * 1e3:.1f} | {rounds_ms} |")
    ratio = paired_ratio(firsts[AUTO], firsts["Pyro JitTrace_ELBO"])
    return "\n".join(lines), [("First call with auto", 2.0, ratio, "x Pyro jit first call")]


def hmm_section(quick: bool) -> tuple[str, list[Goal]]:
    pyro_name, auto_name = "Pyro JitTraceEnum_ELBO", "lazyjit JitTraceEnum_ELBO (auto)"
    totals: dict[str, list[float]] = {pyro_name: [], auto_name: []}
    scratch_rounds = 2 if quick else 3
    for i in range(scratch_rounds):
        pyro.clear_param_store()
        fresh = hmm_contenders(["auto"], small=quick)
        order = in_turn([pyro_name, auto_name], i)
        # The loop waits for the background compiles of each round, untimed.
        for r in compare({name: fresh[name] for name in order}, 1, repeats=1):
            totals[r.name].append(r.first_s + r.rounds_s[0])
    total = {name: statistics.median(v) for name, v in totals.items()}

    def epochs(setup: Callable[[], Step], warmup: int) -> Callable[[], Step]:
        def warmed() -> Step:
            with hot_after(2):
                epoch = setup()
                for _ in range(warmup):
                    epoch()
            settle(epoch)
            return epoch

        return warmed

    pyro.clear_param_store()
    fresh = hmm_contenders(["auto"], small=quick)
    # TorchScript optimizes a graph over its first runs: Pyro's jit warms up too.
    results = compare(
        {pyro_name: epochs(fresh[pyro_name], 2), auto_name: epochs(fresh[auto_name], 2)},
        steps=1,
        repeats=3,
    )
    sizes = "8 sequences" if quick else "75 sequences"
    lines = [
        f"### Seed HMM (JitTraceEnum_ELBO, lengths 24/48/72, {sizes})",
        "",
        f"| contender | epochs 1 + 2, from scratch (s), median of {scratch_rounds} | rounds (s) "
        "| steady epoch (s) |",
        "| --- | ---: | --- | ---: |",
    ]
    med = {r.name: r.median_s for r in results}
    rounds = {r.name: r.rounds_s for r in results}
    for name in (pyro_name, auto_name):
        listed = ", ".join(f"{v:.2f}" for v in totals[name])
        lines.append(f"| {name} | {total[name]:.2f} | {listed} | {med[name]:.3f} |")
    goals = [
        (
            "HMM steady epoch (auto)",
            0.5,
            paired_ratio(rounds[auto_name], rounds[pyro_name]),
            "x Pyro jit epoch",
        ),
        (
            "HMM two epochs incl. compiles (auto)",
            1.0,
            paired_ratio(totals[auto_name], totals[pyro_name]),
            "x Pyro jit, same two epochs",
        ),
    ]
    return "\n".join(lines), goals


def nuts_section(quick: bool) -> tuple[str, list[Goal]]:
    n, repeats = (100, 1) if quick else (500, 3)
    contending = nuts_kernels(["auto", "aten-jit"])
    del contending["Pyro eager"]
    workloads = {
        "seed Gaussian": (models.gaussian_model, (models.gaussian_data(100),)),
        "logistic regression": (models.logistic_model, models.logistic_data()),
    }
    lines = [
        f"### NUTS, {n} warmup + {n} samples, wall of MCMC.run (compiles included), "
        f"median of {repeats}",
        "",
        "| workload | contender | wall (s) | gradients | wall / Pyro jit |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    goals = []
    for workload, (model, args) in workloads.items():
        runs = {name: NutsRun(kernel, model, args, n) for name, (kernel, _) in contending.items()}
        # Each call is a whole run from a fresh kernel, the first one too: `repeats` runs.
        setups = {name: (lambda run=run: run) for name, run in runs.items()}
        walls = {r.name: [r.first_s, *r.rounds_s] for r in compare(setups, 1, repeats - 1)}
        med = {name: statistics.median(v) for name, v in walls.items()}
        for name, run in runs.items():
            ratio = paired_ratio(walls[name], walls["Pyro jit"])
            lines.append(
                f"| {workload} | {name} | {med[name]:.2f} | {run.gradients} | {ratio:.2f} |"
            )
        goals.append(
            (
                f"NUTS {workload} (auto)",
                0.6,
                paired_ratio(walls["lazyjit (auto)"], walls["Pyro jit"]),
                "x Pyro jit",
            )
        )
    return "\n".join(lines), goals


def compile_section(quick: bool) -> tuple[str, list[Goal]]:
    sizes = [10, 100, 1000]
    backends = ["Pyro jit", "torchscript", "aten", "aten-jit", "inductor", "auto"]
    seconds: dict[str, dict[int, float]] = {b: {} for b in backends}
    for size in sizes:
        model = models.chain_model(size)
        for backend in backends:
            if quick and backend == "inductor" and size == 1000:
                continue
            if backend == "Pyro jit":
                make = pyro_potential_grad(True)
            else:
                make = lazyjit_potential_grad(backend)
            with pyro.validation_enabled(False):  # as in MCMC.run
                seconds[backend][size], _ = time_grad(make, model, (), calls=1)
    lines = [
        f"### Compile time (s) against model size: the first {FIRST_CALLS} potential+gradient "
        "calls minus as many steady ones",
        "",
        "| backend | "
        + " | ".join(f"{s} sites" for s in sizes)
        + " | per site at the largest (ms) |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: |",
    ]
    goals = []
    for backend in backends:
        row = [f"{seconds[backend][s]:.3f}" if s in seconds[backend] else "-" for s in sizes]
        largest = max(seconds[backend])
        lines.append(
            f"| {backend} | {' | '.join(row)} | {seconds[backend][largest] / largest * 1e3:.2f} |"
        )
        if backend == "Pyro jit":  # the reference, not a goal
            continue
        # Linear growth: ten times the sites costs at most twenty times the time.
        growth = seconds[backend][largest] / seconds[backend][largest // 10]
        goals.append(
            (
                f"Compile time {largest // 10} -> {largest} sites ({backend})",
                20.0,
                growth,
                "x (10x sites; 10 = linear)",
            )
        )
    lines.append("")
    lines.append(
        "auto's first call is its TorchScript compile; inductor comes later, off the caller."
    )
    return "\n".join(lines), goals


def goals_table(goals: list[Goal]) -> str:
    lines = [
        "### Goals of issue 6",
        "",
        "| goal | target | measured | result |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, target, ratio, unit in goals:
        verdict = "PASS" if ratio <= target else f"FAIL (by {ratio / target:.2f}x)"
        lines.append(f"| {name} | <= {target:g} | {ratio:.2f} {unit} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, epochs, samples")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--cold-cache", action="store_true", help="inductor compiles with an empty cache"
    )
    args = parser.parse_args()
    if args.cold_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="lazyjit-bench-")
    torch.set_num_threads(args.threads)
    # XLA's CPU client otherwise runs its own thread pool beside torch's single thread.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    warnings.filterwarnings("ignore", category=UserWarning)  # TorchScript's, via Pyro's jit
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    start, load = time.perf_counter(), os.getloadavg()
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, {args.threads} thread(s), "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"inductor cache {'cold' if args.cold_cache else 'as found'}\n"
    )
    pyro.set_rng_seed(0)
    goals: list[Goal] = []
    sections = [
        lambda: nuts_section(args.quick),  # before anything starts inductor
        lambda: svi_section(args.quick),
        lambda: first_call_section(3 if args.quick else 5),
        lambda: hmm_section(args.quick),
        lambda: compile_section(args.quick),
    ]
    for section in sections:
        wait_for_compiles()  # no section meets a compile that an earlier one started
        text, section_goals = section()
        goals += section_goals
        print(text, flush=True)
        print()
    print(goals_table(goals))
    load = os.getloadavg()
    print(
        f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{time.perf_counter() - start:.0f} s in all"
    )


if __name__ == "__main__":
    main()
