"""Exported artifacts (``lazyjit.export``) against the Pyro function they came from.

    python benchmarks/bench_export.py [--batch 100] [--calls 1000] [--repeats 5] [--out FILE]

The function is the seed Gaussian model's posterior predictive: an AutoNormal guide
fitted by 300 SVI steps, its draws replayed into the model's observations for a batch of
``--batch`` points. Two tables:

- per call, in this process, contenders alternating (``lazyjit.bench.timing``): Pyro eager,
  Pyro's jit (``pyro.ops.jit.trace``), lazyjit's default (``lazyjit.trace``, 300 calls in:
  auto's warm tier, where it stays for the default ``--calls`` and ``--repeats``), lazyjit
  with ``backend="inductor"``, and the artifact run as its
  ``ExportedProgram`` and as AOTInductor's model; medians of ``--repeats`` rounds of
  ``--calls`` calls, ratios to Pyro's jit (medians of paired ratios);
- time to the first result in a fresh process (the parent's wall time of the whole
  subprocess, interpreter start included), contenders alternating, ``--repeats`` each:
  ``lazyjit.load`` of either artifact and one call, against a Pyro process that rebuilds
  the guide, loads the saved param store and calls the function once.

Torch runs one thread everywhere.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal

import lazyjit
from lazyjit.bench.timing import InProcess, alternate, format_s, paired_ratio
from lazyjit.examples import gaussian_data, gaussian_model

PYRO_CHILD = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    import pyro
    import pyro.distributions as dist
    from pyro.infer.autoguide import AutoNormal

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 3.0))
        with pyro.plate("data", data.size(0)):
            pyro.sample("obs", dist.Normal(loc, scale), obs=data)

    def observations(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 3.0))
        with pyro.plate("data", x.size(0)):
            return pyro.sample("obs", dist.Normal(loc, scale))

    guide = AutoNormal(model)
    pyro.get_param_store().load(sys.argv[1])
    x = torch.zeros(int(sys.argv[2]))
    latents = pyro.poutine.trace(guide).get_trace(x)
    pyro.poutine.replay(observations, latents)(x)
    """
)

ARTIFACT_CHILD = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    import lazyjit

    lazyjit.load(sys.argv[1])(torch.zeros(int(sys.argv[2])))
    """
)


def observations(x: torch.Tensor) -> torch.Tensor:
    """The seed Gaussian model's observations, drawn for ``x``'s batch."""
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 3.0))
    with pyro.plate("data", x.size(0)):
        return pyro.sample("obs", dist.Normal(loc, scale))


def fitted_predictive():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = gaussian_data(100)
    guide = AutoNormal(gaussian_model)
    svi = pyro.infer.SVI(
        gaussian_model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO()
    )
    for _ in range(300):
        svi.step(data)

    def predict(x):
        latents = pyro.poutine.trace(guide).get_trace(x)
        return pyro.poutine.replay(observations, latents)(x)

    return predict


def per_call(predict, paths: dict[str, str], batch: int, calls: int, repeats: int) -> str:
    x = torch.zeros(batch)

    def calling(fn):
        return lambda: lambda: fn(x)

    def artifact(path, aot):
        return lambda: (lambda f: lambda: f(x))(lazyjit.load(path, aot=aot))

    contenders = [
        InProcess("Pyro eager", calling(predict)),
        InProcess("Pyro jit", calling(pyro.ops.jit.trace(predict)), warmup=10),
        InProcess("lazyjit auto", calling(lazyjit.trace(predict)), warmup=300),
        InProcess(
            "lazyjit inductor", calling(lazyjit.trace(predict, backend="inductor")), warmup=300
        ),
        InProcess("artifact (ExportedProgram)", artifact(paths["program"], False)),
        InProcess("artifact (AOTInductor)", artifact(paths["aot"], True)),
    ]
    results = alternate(contenders, calls, repeats, log=print, prefix="  ")
    base = next(r for r in results if r.name == "Pyro jit")
    lines = ["| contender | per call | / Pyro jit |", "|---|---:|---:|"]
    for r in results:
        per = format_s(statistics.median(r.rounds_s))
        lines.append(f"| {r.name} | {per} | {paired_ratio(r.rounds_s, base.rounds_s):.2f} |")
    return "\n".join(lines)


def first_result(paths: dict[str, str], store: str, batch: int, repeats: int) -> str:
    runs = {
        "Pyro: rebuild the guide, load the param store, call": [PYRO_CHILD, store],
        "lazyjit.load (ExportedProgram), call": [ARTIFACT_CHILD, paths["program"]],
        "lazyjit.load (AOTInductor), call": [ARTIFACT_CHILD, paths["aot"]],
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (script, path) in runs.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", script, path, str(batch)], check=True)
            seconds[name].append(time.perf_counter() - start)
    lines = ["| fresh process | median | range |", "|---|---:|---:|"]
    for name, values in seconds.items():
        spread = f"{format_s(min(values))} to {format_s(max(values))}"
        lines.append(f"| {name} | {format_s(statistics.median(values))} | {spread} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    predict = fitted_predictive()
    with tempfile.TemporaryDirectory() as folder:
        paths = {kind: os.path.join(folder, f"{kind}.pt2") for kind in ("program", "aot")}
        example = (torch.zeros(args.batch),)
        start = time.perf_counter()
        lazyjit.export(predict, example, path=paths["program"], dynamic={0: {0: "batch"}})
        exported = time.perf_counter() - start
        lazyjit.export(predict, example, path=paths["aot"], dynamic={0: {0: "batch"}}, aot=True)
        compiled = time.perf_counter() - start - exported
        store = os.path.join(folder, "params.pt")
        pyro.get_param_store().save(store)
        print(f"export: {exported:.1f} s; with aot=True: {compiled:.1f} s")
        tables = [
            f"Per call, batch {args.batch}:\n\n"
            + per_call(predict, paths, args.batch, args.calls, args.repeats),
            "Time to the first result:\n\n" + first_result(paths, store, args.batch, args.repeats),
        ]
    report = "\n\n".join(tables)
    print(report)
    if args.out:
        with open(args.out, "w") as out:
            out.write(report + "\n")


if __name__ == "__main__":
    main()
