"""What ``pyro.infer.SVI.step`` costs around any ELBO, against a Pyro ``JitTrace_ELBO`` step.

    python benchmarks/bench_svi_floor.py [--rounds N]

A drop-in ELBO cannot make a step cheaper than Pyro's ``SVI.step`` itself: its param
capture, its per-param ``torch.optim`` loop and ``zero_grads``. This times that floor, a
step around an ELBO that only announces the params and gives them zero gradients, side by
side with Pyro's jit step on the seed Gaussian model (issue 6's "0.25x Pyro's jit" goal
for the drop-in SVI must fit the whole compiled loss and gradient in what remains).
"""

from __future__ import annotations

import argparse

import pyro
import torch
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.optim import Adam

from lazyjit import examples
from lazyjit.timing import compare, table


class NullELBO(pyro.infer.Trace_ELBO):
    """Announces the guide's params and gives them zero gradients: no model, no guide."""

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        for name in ("AutoDiagonalNormal.loc", "AutoDiagonalNormal.scale"):
            param = pyro.param(name).unconstrained()
            param.grad = torch.zeros_like(param)
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = examples.gaussian_data(100)

    def setup(elbo):
        guide = AutoDiagonalNormal(examples.gaussian_model)
        guide(data)
        svi = pyro.infer.SVI(examples.gaussian_model, guide, Adam({"lr": 0.01}), elbo)
        return lambda: svi.step(data)

    contenders = {
        "Pyro JitTrace_ELBO": lambda: setup(pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True)),
        "SVI.step around a null ELBO": lambda: setup(NullELBO()),
    }
    results = compare(contenders, steps=100, repeats=args.rounds)
    print(table("SVI.step's own cost, seed Gaussian model", results, "Pyro JitTrace_ELBO", "step"))


if __name__ == "__main__":
    main()
