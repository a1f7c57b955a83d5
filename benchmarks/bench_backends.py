"""Backends side by side: one value-and-gradient call, eager Pyro against every backend.

    python benchmarks/bench_backends.py [--quick] [--backends a,b] [--threads N]

Two workloads, 100 data points each: the log-prob example
(``lazyjit.examples.scale_log_prob``) and a Trace_ELBO-style loss written from traces
(``lazyjit.examples.gaussian_model`` with ``AutoDiagonalNormal``). Contenders: Pyro eager
and ``pyro.ops.jit.trace``, both differentiated by ``torch.autograd.grad``, and
``lazyjit.trace(..., backend=b).value_and_grad`` for each of ``--backends`` (default:
every registered backend). The first call (capture and compilation included; inductor's
depends on its on-disk cache, cold in a fresh environment) is timed alone, then the
contenders alternate. Prints a markdown table per workload.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import pyro
import pyro.ops.jit
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal

import lazyjit
from lazyjit import examples as models
from lazyjit.bench.report import table
from lazyjit.bench.timing import Step, compare
from lazyjit.params import find_params


def elbo_loss_of(guide: AutoDiagonalNormal) -> Callable[[torch.Tensor], torch.Tensor]:
    """A single-particle Trace_ELBO loss for ``gaussian_model``, from its traces (the
    guide is closed over: ``pyro.ops.jit`` cannot take a module argument)."""

    def elbo_loss(data: torch.Tensor) -> torch.Tensor:
        guide_trace = poutine.trace(guide).get_trace(data)
        model = poutine.replay(models.gaussian_model, trace=guide_trace)
        model_trace = poutine.trace(model).get_trace(data)
        return guide_trace.log_prob_sum() - model_trace.log_prob_sum()

    return elbo_loss


def autograd_step(fn: Callable, args: tuple) -> Step:
    """``fn(*args)`` and its gradients w.r.t. the params, by autograd at call time."""

    names = find_params(fn, args, {})

    def step() -> tuple:
        value = fn(*args)
        leaves = [pyro.param(name).unconstrained() for name in names]
        return value.detach(), torch.autograd.grad(value, leaves)

    return step


def contenders(fn: Callable, args: tuple, backends: list[str]) -> dict[str, Callable[[], Step]]:
    entries: dict[str, Callable[[], Step]] = {
        "Pyro eager": lambda: autograd_step(fn, args),
        "pyro.ops.jit": lambda: autograd_step(pyro.ops.jit.trace(fn, ignore_warnings=True), args),
    }
    for backend in backends:
        entries[f"lazyjit {backend}"] = lambda backend=backend: _lazy(fn, args, backend)
    return entries


def _lazy(fn: Callable, args: tuple, backend: str) -> Step:
    compiled = lazyjit.trace(fn, backend=backend, ignore_warnings=True)
    return lambda: compiled.value_and_grad(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument(
        "--backends",
        default=",".join(lazyjit.BACKENDS),
        help="comma-separated lazyjit backends (default: all registered)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    steps, repeats = (50, 3) if args.quick else (500, 5)
    backends = args.backends.split(",")

    pyro.set_rng_seed(0)
    x, y = torch.randn(100), torch.randn(100)
    data = models.gaussian_data(100)
    guide = AutoDiagonalNormal(models.gaussian_model)
    guide(data)  # creates its params: every contender starts from the same store

    workloads = [
        ("log-prob example, value and grad (100 points)", models.scale_log_prob, (x, y)),
        ("ELBO, gaussian model + AutoDiagonalNormal (100 points)", elbo_loss_of(guide), (data,)),
    ]
    print(f"torch {torch.__version__}, pyro {pyro.__version__}, {args.threads} thread(s)\n")
    for title, fn, fn_args in workloads:
        results = compare(contenders(fn, fn_args, backends), steps, repeats)
        print(table(title, results, baseline="pyro.ops.jit"))
        print()


if __name__ == "__main__":
    main()
