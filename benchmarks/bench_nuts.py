"""NUTS side by side: Pyro eager, Pyro ``jit_compile=True`` and lazyjit ``jit_compile=True``.

    python benchmarks/bench_nuts.py [--quick] [--repeats N] [--backends a,b] [--threads N]

For the seed Gaussian model (100 points) and logistic regression (1000 points, 5
features), runs NUTS (500 warmup + 500 samples; 100 + 100 with ``--quick``) from the same
seed for every contender, contenders alternating (``lazyjit.bench.timing``, in this
process), ``--repeats`` times, and prints a markdown table of medians; ratios are medians
of each repeat's ratio. Contenders: Pyro eager, Pyro ``jit_compile=True``, and lazyjit
``jit_compile=True`` with each of ``--backends`` (default: every registered backend but
"eager"). Torch runs one intra-op thread (``--threads``) so that other load on a small
machine does not leave OpenMP threads spinning; all contenders alike.

- wall: the whole ``MCMC.run``, kernel setup and compilation included;
- gradients: potential-and-gradient evaluations in a run (one per leapfrog step, a few
  more at setup; ``lazyjit.bench.contenders.gradient_evaluations``);
- wall/gradient: wall time over gradients, i.e. one gradient plus NUTS's own bookkeeping;
- grad: one potential+gradient evaluation alone, as the integrator asks for it, after
  the runs;
- compile: the first three potential+gradient evaluations minus three steady ones
  (``lazyjit.bench.contenders.time_grad``; TorchScript optimizes a graph in its second
  call), after the runs (inductor then finds its on-disk cache warm).
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable

import pyro
import torch

import lazyjit
from lazyjit import examples as models
from lazyjit.bench.contenders import NutsRun, nuts_kernels, time_grad
from lazyjit.bench.timing import compare, paired_ratio, spread


def bench(
    title: str,
    model: Callable,
    args: tuple,
    n: int,
    repeats: int,
    backends: list[str],
) -> str:
    contending = nuts_kernels(backends)
    runs = {name: NutsRun(kernel, model, args, n) for name, (kernel, _) in contending.items()}
    # Each call is a whole run from a fresh kernel, the first one too: `repeats` runs.
    setups = {name: (lambda run=run: run) for name, run in runs.items()}
    walls = {r.name: [r.first_s, *r.rounds_s] for r in compare(setups, 1, repeats - 1)}
    grads, compiles = {}, {}
    for name, (_, grad_factory) in contending.items():
        with pyro.validation_enabled(False):  # as in MCMC.run
            compiles[name], grads[name] = time_grad(grad_factory, model, args, calls=200)
    med = {name: statistics.median(v) for name, v in walls.items()}
    lines = [
        f"### {title}: NUTS {n} warmup + {n} samples, median of {repeats}",
        "",
        "| contender | wall (s) | spread | gradients | wall/gradient (us) | grad (us) "
        "| compile (ms) | wall / Pyro jit | grad / Pyro jit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, run in runs.items():
        count = run.gradients or 0
        per_gradient = f"{med[name] / count * 1e6:.0f}" if count else "-"
        lines.append(
            f"| {name} | {med[name]:.2f} | {spread(walls[name]):.0%} | {count} | "
            f"{per_gradient} | {grads[name] * 1e6:.0f} | {compiles[name] * 1e3:.0f} | "
            f"{paired_ratio(walls[name], walls['Pyro jit']):.2f} | "
            f"{grads[name] / grads['Pyro jit']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 warmup + 100 samples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--backends",
        default=",".join(b for b in lazyjit.BACKENDS if b != "eager"),
        help="comma-separated lazyjit backends",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    # TorchScript's TracerWarnings (Pyro's jit shows them despite ignore_jit_warnings).
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    n = 100 if args.quick else 500
    pyro.set_rng_seed(0)
    gaussian = (models.gaussian_data(100),)
    logistic = models.logistic_data()
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {args.threads} thread(s)\n")
    title = "Seed Gaussian model (100 points)"
    print(bench(title, models.gaussian_model, gaussian, n, args.repeats, backends))
    print()
    title = "Logistic regression (1000 points, 5 features)"
    print(bench(title, models.logistic_model, logistic, n, args.repeats, backends))


if __name__ == "__main__":
    main()
