"""What bit-for-bit reproducibility costs: whole runs (a fresh process each, first import
to last step, compiles included) with auto's default policy, whose switch to inductor
comes at a call counted from the graph, against the same policy switching as soon as the
compile is done (``switch_calls=None``, ``-when-ready``), beside Pyro's jit. Workloads:
the seed Gaussian SVI with lazyjit's drop-in ``JitTrace_ELBO`` and with ``lazyjit.SVI``
(``fused-``), and NUTS on the same model (``--steps`` warmup steps and as many samples).

    python benchmarks/bench_reproducible.py [--workloads svi,nuts] [--steps 2000,20000]
        [--nuts-steps 500] [--caches warm,cold] [--repeats 3]

``warm``: one inductor cache for the script, filled first by an untimed run of each
lazyjit contender long enough to finish its compiles; ``cold``: an empty cache for each
lazyjit run. Contenders alternate within each round; the table gives median seconds and
the median of per-round ratios to Pyro's jit. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

CHILD = """
import time
start = time.perf_counter()
import json, sys
import pyro, torch
torch.set_num_threads(1)
contender, steps, workload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lazy = contender != "pyro-jit"
if lazy:
    import lazyjit
    from lazyjit.backends import TierPolicy
    if contender.endswith("-when-ready"):
        lazyjit.BACKENDS["auto"].policy = TierPolicy(switch_calls=None)
from lazyjit.examples import gaussian_data, gaussian_model
pyro.set_rng_seed(0)
data = gaussian_data(100)
leaves = 0.0  # NUTS: seconds spent building tree leaves (for bench_floors.py)
if workload == "nuts":
    kernel_class = lazyjit.NUTS if lazy else pyro.infer.NUTS
    build_basetree = kernel_class._build_basetree

    def timed_basetree(self, *args):
        global leaves
        begin = time.perf_counter()
        tree = build_basetree(self, *args)
        leaves += time.perf_counter() - begin
        return tree

    kernel_class._build_basetree = timed_basetree
    pyro.set_rng_seed(1)
    kernel = kernel_class(gaussian_model, jit_compile=True, ignore_jit_warnings=True)
    mcmc = pyro.infer.MCMC(kernel, num_samples=steps, warmup_steps=steps, disable_progbar=True)
    mcmc.run(data)
    last = float(mcmc.get_samples()["loc"].mean())
else:
    from pyro.infer.autoguide import AutoDiagonalNormal
    loss = lazyjit.JitTrace_ELBO() if lazy else pyro.infer.JitTrace_ELBO()
    svi_class = lazyjit.SVI if contender.startswith("fused") else pyro.infer.SVI
    guide = AutoDiagonalNormal(gaussian_model)
    svi = svi_class(gaussian_model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
    for _ in range(steps):
        last = svi.step(data)
seconds = time.perf_counter() - start
waited = 0.0
if lazy:  # after the clock: the waits of every lane alive
    import gc
    from lazyjit.backends.tiers import Lane
    waited = sum(o.waited_seconds for o in gc.get_objects() if isinstance(o, Lane))
print(json.dumps({"seconds": seconds, "loss": last, "waited": waited, "leaves": leaves}))
"""

CONTENDERS = {
    "svi": [
        "pyro-jit",
        "lazyjit-default",
        "lazyjit-when-ready",
        "fused-default",
        "fused-when-ready",
    ],
    "nuts": ["pyro-jit", "lazyjit-default", "lazyjit-when-ready"],
}
# Untimed runs that fill the warm cache: long enough for every compile to arrive.
WARMING_STEPS = {"svi": 20000, "nuts": 2000}


def run(
    child: str, contender: str, steps: int, *extra: str, env: dict[str, str] | None = None
) -> dict:
    """One run of ``child`` (a ``python -c`` program printing a JSON line last) in a
    fresh process, with ``extra`` arguments after the contender and steps, and ``env``
    over this process's environment."""
    done = subprocess.run(
        [sys.executable, "-c", child, contender, str(steps), *extra],
        capture_output=True,
        text=True,
        check=True,
        env=None if env is None else {**os.environ, **env},
    )
    return json.loads(done.stdout.splitlines()[-1])


def arguments(doc: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The command line of these whole-run scripts: ``--steps`` and ``--repeats``, and
    whatever ``parser`` already has."""
    parser = parser or argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", default="2000,20000")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def rounds(
    child: str,
    contenders: list[str],
    steps: int,
    repeats: int,
    *extra: str,
    env_of: Callable[[str], dict[str, str]] | None = None,
) -> list[dict]:
    """``repeats`` rounds in which the contenders take turns, a fresh process a run;
    ``extra`` go to :func:`run`, and ``env_of(contender)`` gives a run's environment."""
    return [
        {c: run(child, c, steps, *extra, env=env_of(c) if env_of else None) for c in contenders}
        for _ in range(repeats)
    ]


def seconds_and_ratio(runs: list[dict], contender: str) -> tuple[float, float]:
    """The contender's median seconds over the rounds, and the median of its per-round
    ratios to Pyro's jit."""
    seconds = statistics.median(r[contender]["seconds"] for r in runs)
    ratio = statistics.median(r[contender]["seconds"] / r["pyro-jit"]["seconds"] for r in runs)
    return seconds, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="svi,nuts")
    parser.add_argument("--nuts-steps", default="500")
    parser.add_argument("--caches", default="warm,cold")
    args = arguments(__doc__, parser)
    print(
        "| workload | steps | cache | contender | median s | / Pyro's jit | "
        "waited at the switch s | last loss |"
    )
    print("| --- | ---: | --- | --- | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory(prefix="lazyjit-repro-") as root:
        warm = {"TORCHINDUCTOR_CACHE_DIR": os.path.join(root, "warm")}
        for workload in args.workloads.split(","):
            contenders = CONTENDERS[workload]
            lengths = args.nuts_steps if workload == "nuts" else args.steps
            for cache_name in args.caches.split(","):
                if cache_name == "warm":
                    for c in contenders:
                        if c != "pyro-jit":  # inductor's cache is lazyjit's alone
                            run(CHILD, c, WARMING_STEPS[workload], workload, env=warm)

                def env_of(contender: str, cache_name: str = cache_name) -> dict[str, str]:
                    if cache_name == "warm" or contender == "pyro-jit":
                        return warm
                    return {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(dir=root)}

                for steps in map(int, lengths.split(",")):
                    runs = rounds(CHILD, contenders, steps, args.repeats, workload, env_of=env_of)
                    for c in contenders:
                        seconds, ratio = seconds_and_ratio(runs, c)
                        waited = statistics.median(r[c]["waited"] for r in runs)
                        losses = sorted({f"{r[c]['loss']:.10g}" for r in runs})
                        print(
                            f"| {workload} | {steps} | {cache_name} | {c} | {seconds:.2f} | "
                            f"{ratio:.2f} | {waited:.2f} | {', '.join(losses)} |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
