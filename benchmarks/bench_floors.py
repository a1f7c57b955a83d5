"""The floors under lazyjit's drop-in classes: what Pyro's own loops cost around them.

SVI: whole runs of ``pyro.infer.SVI`` on the seed Gaussian model with a loss that costs
nothing (it sets every param's gradient to ones), beside the same run with Pyro's
``JitTrace_ELBO``, and with lazyjit's ``JitTrace_ELBO`` and ``lazyjit.SVI``.
NUTS (``--nuts-steps`` warmup steps and as many samples, the same model): whole runs of
Pyro's jit NUTS and lazyjit's, each with the seconds spent building tree leaves (each
kernel's ``_build_basetree``: the leapfrog step, its potential and gradient); the run less
those seconds is what a free leaf would leave, Pyro's ``MCMC`` and tree building.

    python benchmarks/bench_floors.py [--workloads svi,nuts] [--steps 2000,20000]
        [--nuts-steps 500] [--repeats 3]

The free loss leaves what a drop-in ELBO cannot change: the imports, the guide's setup,
torch's import of ``torch._dynamo`` when Pyro's optimizer builds and steps a torch Adam,
and Pyro's per-step loop (its param-only trace, a torch Adam step per param, the zeroing
of gradients). Its ratio to Pyro's jit is the best that any loss under ``pyro.infer.SVI``
can reach on this machine. Each run is a fresh process, one torch thread, from before
``import torch`` to the last step; contenders alternate. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics

from bench_reproducible import CHILD as WHOLE_RUN_CHILD  # this folder: sys.path[0]
from bench_reproducible import (
    arguments,
    rounds,
    seconds_and_ratio,
)

CHILD = """
import time
start = time.perf_counter()
import json, sys
import pyro, torch
torch.set_num_threads(1)
contender, steps = sys.argv[1], int(sys.argv[2])
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDiagonalNormal


class FreeLoss(pyro.infer.Trace_ELBO):
    # Reads every param (so that SVI's param trace finds them) and sets their gradients.
    def loss_and_grads(self, model, guide, *args, **kwargs):
        for name in pyro.get_param_store().keys():
            param = pyro.param(name).unconstrained()
            param.grad = torch.ones_like(param)
        return 0.0


svi_class = SVI
if contender == "pyro-jit":
    loss = pyro.infer.JitTrace_ELBO()
elif contender == "free-loss":
    loss = FreeLoss()
else:
    import lazyjit
    loss = lazyjit.JitTrace_ELBO()
    if contender == "lazyjit-fused":
        svi_class = lazyjit.SVI
from lazyjit.examples import gaussian_data, gaussian_model
pyro.set_rng_seed(0)
data = gaussian_data(100)
guide = AutoDiagonalNormal(gaussian_model)
guide(data)  # the params exist before the first step, for the free loss to find
svi = svi_class(gaussian_model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
for _ in range(steps):
    svi.step(data)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

CONTENDERS = ["pyro-jit", "free-loss", "lazyjit", "lazyjit-fused"]
# bench_reproducible's NUTS runs, which time the leaves too; lazyjit with auto's default.
NUTS_CONTENDERS = ["pyro-jit", "lazyjit-default"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="svi,nuts")
    parser.add_argument("--nuts-steps", default="500")
    args = arguments(__doc__, parser)
    workloads = args.workloads.split(",")
    if "svi" in workloads:
        print("| steps | contender | median s | / Pyro's jit (median of rounds) |")
        print("| ---: | --- | ---: | ---: |")
        for steps in map(int, args.steps.split(",")):
            runs = rounds(CHILD, CONTENDERS, steps, args.repeats)
            for c in CONTENDERS:
                seconds, ratio = seconds_and_ratio(runs, c)
                print(f"| {steps} | {c} | {seconds:.2f} | {ratio:.2f} |", flush=True)
    if "nuts" in workloads:
        print(
            "\n| NUTS steps | contender | median s | / Pyro's jit | in leaves s | "
            "without the leaves s | / Pyro's jit |"
        )
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for steps in map(int, args.nuts_steps.split(",")):
            runs = rounds(WHOLE_RUN_CHILD, NUTS_CONTENDERS, steps, args.repeats, "nuts")
            for c in NUTS_CONTENDERS:
                seconds, ratio = seconds_and_ratio(runs, c)
                leaves = statistics.median(r[c]["leaves"] for r in runs)
                rest = statistics.median(
                    (r[c]["seconds"] - r[c]["leaves"]) / r["pyro-jit"]["seconds"] for r in runs
                )
                rest_seconds = statistics.median(r[c]["seconds"] - r[c]["leaves"] for r in runs)
                print(
                    f"| {steps} | {c} | {seconds:.2f} | {ratio:.2f} | {leaves:.2f} | "
                    f"{rest_seconds:.2f} | {rest:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
