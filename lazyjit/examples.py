"""The seed models of the Pyro JIT tutorial and their data: the workloads of the demo and
the benchmarks (:mod:`lazyjit.bench`), and models for the test suite."""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints


def scale_model(x: torch.Tensor) -> torch.Tensor:
    """The model of ``pyro.ops.jit.trace``'s docstring: one param, one sample site."""
    scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
    return pyro.sample("y", dist.Normal(x, scale))


def scale_log_prob(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Log joint of :func:`scale_model` conditioned on ``y``: the log-prob example."""
    cond_model = pyro.condition(scale_model, data={"y": y})
    return poutine.trace(cond_model).get_trace(x).log_prob_sum()


def gaussian_model(data: torch.Tensor) -> None:
    """The tutorial's Gaussian model: unknown location and scale, iid observations."""
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 3.0))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def gaussian_data(n: int = 100) -> torch.Tensor:
    """Data for :func:`gaussian_model`, as in the tutorial."""
    return dist.Normal(0.5, 2.0).sample((n,))


def numpyro_gaussian_model(data) -> None:
    """:func:`gaussian_model` written for NumPyro (``data``: a JAX or NumPy array)."""
    import numpyro
    import numpyro.distributions as ndist

    loc = numpyro.sample("loc", ndist.Normal(0.0, 10.0))
    scale = numpyro.sample("scale", ndist.LogNormal(0.0, 3.0))
    with numpyro.plate("data", data.shape[0]):
        numpyro.sample("obs", ndist.Normal(loc, scale), obs=data)


def hmm_model(sequence: torch.Tensor, num_sequences: int, length: int, state_dim: int = 16) -> None:
    """The tutorial's Gaussian HMM: enumerated hidden states, lengths passed as kwargs."""
    with pyro.plate("states", state_dim):
        trans = pyro.sample("trans", dist.Dirichlet(0.5 * torch.ones(state_dim)))
        emit_loc = pyro.sample("emit_loc", dist.Normal(0.0, 10.0))
    emit_scale = pyro.sample("emit_scale", dist.LogNormal(0.0, 3.0))
    # Manual subsampling of sequences: scale up to the data size.
    with poutine.scale(scale=num_sequences):
        x = 0
        for t in pyro.markov(range(length)):
            x = pyro.sample(f"x_{t}", dist.Categorical(trans[x]), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(emit_loc[x], emit_scale), obs=sequence[t])


HMM_LATENTS = ["trans", "emit_scale", "emit_loc"]


def hmm_data(small: bool = False) -> list[torch.Tensor]:
    """Sequences of lengths 24, 48 and 72 (50, 20 and 5 of them; 5, 2, 1 if ``small``)."""
    counts = (5, 2, 1) if small else (50, 20, 5)
    lengths = [24] * counts[0] + [48] * counts[1] + [72] * counts[2]
    return [torch.randn(length) for length in lengths]


def logistic_model(x: torch.Tensor, y: torch.Tensor) -> None:
    """Bayesian logistic regression: Normal priors on the coefficients and the bias."""
    coefs = pyro.sample("coefs", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(0.0, 10.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=x @ coefs + bias), obs=y)


def logistic_data(n: int = 1000, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels for :func:`logistic_model` from known coefficients."""
    x = torch.randn(n, dim)
    y = dist.Bernoulli(logits=x @ torch.linspace(-1.0, 1.0, dim) + 0.5).sample()
    return x, y


def numpyro_logistic_model(x, y) -> None:
    """:func:`logistic_model` written for NumPyro (``x``, ``y``: JAX or NumPy arrays)."""
    import numpyro
    import numpyro.distributions as ndist

    coefs = numpyro.sample("coefs", ndist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    bias = numpyro.sample("bias", ndist.Normal(0.0, 10.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", ndist.Bernoulli(logits=x @ coefs + bias), obs=y)


def chain_model(size: int) -> Callable[[], None]:
    """A model with ``size`` sample sites, each depending on the one before: model size
    without data, for compile time against the number of sites."""

    def model() -> None:
        x = pyro.sample("x_0", dist.Normal(0.0, 1.0))
        for i in range(1, size):
            x = pyro.sample(f"x_{i}", dist.Normal(x, 1.0))

    return model
