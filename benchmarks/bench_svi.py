"""SVI side by side: Pyro eager, Pyro's Jit ELBOs and lazyjit's, in one run.

    python benchmarks/bench_svi.py [--quick] [--backends torchscript,eager]

Prints, per workload, first-step time (compiles included) and steady-state time per step
(the median over repeats, contenders alternating), with ratios to Pyro's jit (the
median of the rounds' ratios). The Gaussian table also times Pyro's ``SVI.step`` around a
precomputed loss: the floor of any drop-in ELBO.
"""

from __future__ import annotations

import argparse
import warnings

import pyro

from lazyjit import examples as models
from lazyjit.bench.contenders import gaussian_contenders, hmm_contenders, pyro_svi_floor
from lazyjit.bench.report import table
from lazyjit.bench.timing import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and sequences")
    parser.add_argument(
        "--backends", default="torchscript", help="comma-separated lazyjit backends"
    )
    args = parser.parse_args()
    backends = args.backends.split(",")
    warnings.filterwarnings("ignore", category=UserWarning)  # TorchScript's, from Pyro's jit
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    # Many short rounds: each round's ratio is paired (see lazyjit.bench.timing.paired_ratio).
    steps, repeats = (30, 5) if args.quick else (100, 15)
    contenders = gaussian_contenders(backends)
    # No drop-in ELBO can make a step cheaper than Pyro's SVI.step around it.
    data = models.gaussian_data(100)
    contenders["Pyro SVI.step around a precomputed loss"] = lambda: pyro_svi_floor(data)
    results = compare(contenders, steps=steps, repeats=repeats)
    print(
        table(
            "SVI step, seed Gaussian model (100 points, AutoDiagonalNormal)",
            results,
            "Pyro JitTrace_ELBO",
            "step",
        )
    )
    print()
    pyro.clear_param_store()
    results = compare(
        hmm_contenders(backends, small=args.quick), steps=1, repeats=2 if args.quick else 5
    )
    sizes = "lengths 24/48/72" + (", 8 sequences" if args.quick else ", 75 sequences")
    print(table(f"SVI epoch, seed HMM ({sizes})", results, "Pyro JitTraceEnum_ELBO", "epoch"))


if __name__ == "__main__":
    main()
