"""What bit-for-bit reproducibility costs: whole runs of the seed Gaussian SVI (a fresh
process each, first import to last step, compiles included) with auto's default policy,
whose switch to inductor waits at a fixed call, against the same policy switching as soon
as the compile is done (``switch_calls=None``), beside Pyro's jit.

    python benchmarks/bench_reproducible.py [--steps 2000,20000] [--repeats 3]

Contenders alternate within each round; the table gives median seconds and the median of
per-round ratios to Pyro's jit. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import time
start = time.perf_counter()
import json, sys
import pyro, torch
torch.set_num_threads(1)
contender, steps = sys.argv[1], int(sys.argv[2])
if contender == "pyro-jit":
    loss = pyro.infer.JitTrace_ELBO()
else:
    import lazyjit
    from lazyjit.backends import TierPolicy
    if contender == "lazyjit-when-ready":
        lazyjit.BACKENDS["auto"].policy = TierPolicy(switch_calls=None)
    loss = lazyjit.JitTrace_ELBO()
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDiagonalNormal
from lazyjit.examples import gaussian_data, gaussian_model
pyro.set_rng_seed(0)
data = gaussian_data(100)
guide = AutoDiagonalNormal(gaussian_model)
svi = SVI(gaussian_model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
for _ in range(steps):
    last = svi.step(data)
waited = 0.0
if contender != "pyro-jit":
    for program in loss.compiled_fn.compiled.values():
        waited += sum(lane.waited_seconds for lane in program.lanes.values())
print(json.dumps({"seconds": time.perf_counter() - start, "loss": last, "waited": waited}))
"""

CONTENDERS = ["pyro-jit", "lazyjit-default", "lazyjit-when-ready"]


def run(child: str, contender: str, steps: int) -> dict:
    """One run of ``child`` (a ``python -c`` program printing a JSON line last) in a
    fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", child, contender, str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def arguments(doc: str) -> argparse.Namespace:
    """The command line of these whole-run scripts: ``--steps`` and ``--repeats``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", default="2000,20000")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def rounds(child: str, contenders: list[str], steps: int, repeats: int) -> list[dict]:
    """``repeats`` rounds in which the contenders take turns, a fresh process a run."""
    return [{c: run(child, c, steps) for c in contenders} for _ in range(repeats)]


def seconds_and_ratio(runs: list[dict], contender: str) -> tuple[float, float]:
    """The contender's median seconds over the rounds, and the median of its per-round
    ratios to Pyro's jit."""
    seconds = statistics.median(r[contender]["seconds"] for r in runs)
    ratio = statistics.median(r[contender]["seconds"] / r["pyro-jit"]["seconds"] for r in runs)
    return seconds, ratio


def main() -> None:
    args = arguments(__doc__)
    print("| steps | contender | median s | / Pyro's jit | waited at the switch s | last loss |")
    print("| ---: | --- | ---: | ---: | ---: | --- |")
    for steps in map(int, args.steps.split(",")):
        runs = rounds(CHILD, CONTENDERS, steps, args.repeats)
        for c in CONTENDERS:
            seconds, ratio = seconds_and_ratio(runs, c)
            waited = statistics.median(r[c]["waited"] for r in runs)
            losses = sorted({f"{r[c]['loss']:.6f}" for r in runs})
            print(
                f"| {steps} | {c} | {seconds:.2f} | {ratio:.2f} | {waited:.2f} | "
                f"{', '.join(losses)} |"
            )


if __name__ == "__main__":
    main()
