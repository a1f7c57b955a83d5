"""NUTS side by side: Pyro eager, Pyro ``jit_compile=True`` and lazyjit ``jit_compile=True``.

    python benchmarks/bench_nuts.py [--quick] [--repeats N] [--backends a,b] [--threads N]

For the seed Gaussian model (100 points) and logistic regression (1000 points, 5
features), runs NUTS (500 warmup + 500 samples; 100 + 100 with ``--quick``) from the same
seed for every contender, contenders alternating, ``--repeats`` times, and prints a
markdown table of medians; ratios are medians of each repeat's ratio. Contenders: Pyro eager, Pyro ``jit_compile=True``, and lazyjit
``jit_compile=True`` with each of ``--backends`` (default: every registered backend but
"eager"). Torch runs one intra-op thread (``--threads``) so that other load on a small
machine does not leave OpenMP threads spinning; all contenders alike.

- wall: the whole ``MCMC.run``, kernel setup and compilation included;
- steps: leapfrog steps in a run (one potential+gradient evaluation each);
- wall/step: wall time over steps, i.e. one gradient plus NUTS's own bookkeeping;
- grad: one potential+gradient evaluation alone, as the integrator asks for it;
- compile: the first three potential+gradient evaluations minus three steady ones
  (``lazyjit.demo.time_grad``; TorchScript optimizes a graph in its second call).
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from collections.abc import Callable

import pyro
import torch

import lazyjit
from lazyjit import examples
from lazyjit.demo import nuts_kernels, run_nuts, time_grad
from lazyjit.timing import paired_ratio, spread


def bench(
    title: str,
    model: Callable,
    args: tuple,
    n: int,
    repeats: int,
    backends: list[str],
) -> str:
    contending = nuts_kernels(backends)
    walls: dict[str, list[float]] = {name: [] for name in contending}
    grads: dict[str, list[float]] = {name: [] for name in contending}
    compiles: dict[str, list[float]] = {name: [] for name in contending}
    steps: dict[str, int] = {}
    for _ in range(repeats):
        for name, (kernel_factory, grad_factory) in contending.items():
            wall, count = run_nuts(kernel_factory, model, args, n)
            walls[name].append(wall)
            steps[name] = count
            with pyro.validation_enabled(False):  # as in MCMC.run
                compile_s, grad_s = time_grad(grad_factory, model, args, calls=200)
            grads[name].append(grad_s)
            compiles[name].append(compile_s)
    med = {name: statistics.median(v) for name, v in walls.items()}
    med_grad = {name: statistics.median(v) for name, v in grads.items()}
    lines = [
        f"### {title}: NUTS {n} warmup + {n} samples, median of {repeats}",
        "",
        "| contender | wall (s) | spread | steps | wall/step (us) | grad (us) | compile (ms) "
        "| wall / Pyro jit | grad / Pyro jit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in contending:
        compile_ms = statistics.median(compiles[name]) * 1e3
        lines.append(
            f"| {name} | {med[name]:.2f} | {spread(walls[name]):.0%} | {steps[name]} | "
            f"{med[name] / steps[name] * 1e6:.0f} | {med_grad[name] * 1e6:.0f} | "
            f"{compile_ms:.0f} | {paired_ratio(walls[name], walls['Pyro jit']):.2f} | "
            f"{paired_ratio(grads[name], grads['Pyro jit']):.2f} |"
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
    gaussian = (examples.gaussian_data(100),)
    logistic = examples.logistic_data()
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {args.threads} thread(s)\n")
    title = "Seed Gaussian model (100 points)"
    print(bench(title, examples.gaussian_model, gaussian, n, args.repeats, backends))
    print()
    title = "Logistic regression (1000 points, 5 features)"
    print(bench(title, examples.logistic_model, logistic, n, args.repeats, backends))


if __name__ == "__main__":
    main()
