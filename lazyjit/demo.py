"""``python -m lazyjit demo``: eager Pyro, Pyro's jit and lazyjit side by side."""

from __future__ import annotations

import pyro
import pyro.ops.jit
import torch

from . import examples
from .jit import trace
from .timing import compare, table


def log_prob_rows(steps: int) -> str:
    """The seed's log-prob example, called repeatedly on fixed data."""
    x, y = torch.randn(100), torch.randn(100)

    # The contenders share the param store, as they would in one user's process.
    def setup(compile_fn):
        fn = compile_fn(examples.scale_log_prob)
        return lambda: fn(x, y)

    results = compare(
        {
            "Pyro eager": lambda: setup(lambda fn: fn),
            "pyro.ops.jit.trace": lambda: setup(
                lambda fn: pyro.ops.jit.trace(fn, ignore_warnings=True)
            ),
            "lazyjit.trace": lambda: setup(lambda fn: trace(fn, ignore_warnings=True)),
        },
        steps=steps,
    )
    return table("Log-prob example (seed 000), 100 points", results, baseline="pyro.ops.jit.trace")


def main(quick: bool = False) -> None:
    """Prints the demo's tables."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    print(log_prob_rows(steps=200 if quick else 2000))
