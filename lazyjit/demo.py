"""``python -m lazyjit demo``: eager Pyro, Pyro's jit and lazyjit side by side."""

from __future__ import annotations

import warnings

import pyro
import pyro.infer
import pyro.ops.jit
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.optim import Adam

from . import examples
from .elbo import JitTrace_ELBO, JitTraceEnum_ELBO
from .jit import trace
from .mcmc import NUTS
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


def gaussian_contenders(backends: list[str]) -> dict:
    """SVI steps on the tutorial Gaussian model with AutoDiagonalNormal (100 points)."""
    data = examples.gaussian_data(100)

    def setup(elbo):
        guide = AutoDiagonalNormal(examples.gaussian_model)
        guide(data)  # the tutorial's lazy initialisation, before compiling
        svi = pyro.infer.SVI(examples.gaussian_model, guide, Adam({"lr": 0.01}), elbo)
        return lambda: svi.step(data)

    contenders = {
        "Pyro Trace_ELBO": lambda: setup(pyro.infer.Trace_ELBO()),
        "Pyro JitTrace_ELBO": lambda: setup(pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True)),
    }
    for b in backends:
        contenders[f"lazyjit JitTrace_ELBO ({b})"] = lambda b=b: setup(
            JitTrace_ELBO(ignore_jit_warnings=True, backend=b)
        )
    return contenders


def hmm_contenders(backends: list[str], small: bool) -> dict:
    """SVI epochs on the tutorial HMM, three sequence lengths passed as kwargs."""
    sequences = examples.hmm_data(small)
    model = examples.hmm_model

    def setup(elbo):
        guide = AutoDiagonalNormal(poutine.block(model, expose=examples.HMM_LATENTS))
        guide(sequences[0], num_sequences=len(sequences), length=len(sequences[0]))
        svi = pyro.infer.SVI(model, guide, Adam({"lr": 0.01}), elbo)

        def epoch():
            for seq in sequences:
                svi.step(seq, num_sequences=len(sequences), length=len(seq))

        return epoch

    contenders = {
        "Pyro TraceEnum_ELBO": lambda: setup(pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)),
        "Pyro JitTraceEnum_ELBO": lambda: setup(
            pyro.infer.JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
        ),
    }
    for b in backends:
        contenders[f"lazyjit JitTraceEnum_ELBO ({b})"] = lambda b=b: setup(
            JitTraceEnum_ELBO(max_plate_nesting=1, ignore_jit_warnings=True, backend=b)
        )
    return contenders


def nuts_contenders(backends: list[str], num_samples: int) -> dict:
    """NUTS on the tutorial Gaussian model (100 points): one step is a whole run of
    ``num_samples`` warmup and ``num_samples`` samples, setup and compilation included."""
    data = examples.gaussian_data(100)

    def setup(make_kernel):
        def run():
            kernel = make_kernel()
            mcmc = pyro.infer.MCMC(
                kernel, num_samples=num_samples, warmup_steps=num_samples, disable_progbar=True
            )
            mcmc.run(data)

        return run

    model = examples.gaussian_model
    contenders = {
        "Pyro NUTS": lambda: setup(lambda: pyro.infer.NUTS(model)),
        "Pyro NUTS jit_compile": lambda: setup(
            lambda: pyro.infer.NUTS(model, jit_compile=True, ignore_jit_warnings=True)
        ),
    }
    for b in backends:
        contenders[f"lazyjit NUTS jit_compile ({b})"] = lambda b=b: setup(
            lambda: NUTS(model, jit_compile=True, ignore_jit_warnings=True, backend=b)
        )
    return contenders


def main(quick: bool = False) -> None:
    """Prints the demo's tables."""
    warnings.filterwarnings("ignore", category=UserWarning)  # TorchScript's, via Pyro's jit
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    print(log_prob_rows(steps=200 if quick else 2000))
    print()
    results = compare(gaussian_contenders(["torchscript"]), steps=50 if quick else 300)
    print(
        table("SVI step, seed Gaussian model (100 points)", results, "Pyro JitTrace_ELBO", "step")
    )
    print()
    n = 50 if quick else 200
    results = compare(nuts_contenders(["torchscript"], n), steps=1, repeats=3)
    title = f"NUTS run ({n} warmup + {n} samples), seed Gaussian model"
    print(table(title, results, "Pyro NUTS jit_compile", "run"))
