"""Same seed, same numbers: every backend draws what eager Pyro draws, and a seeded run
of the default backend repeats itself bit for bit in a fresh process."""

import json
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import lazyjit
from lazyjit.backends import TierPolicy, wait_for_compiles
from lazyjit.examples import gaussian_data, gaussian_model

STEPS = 50


@pytest.fixture(autouse=True)
def no_compile_left_behind():
    yield
    assert wait_for_compiles(timeout=300)


def noisy_model(data):
    """The seed Gaussian model with a local latent: the guide draws at every site."""
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", data.size(0)):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.5), obs=data)


def svi_losses(loss, data, steps=STEPS, keep=None):
    pyro.clear_param_store()
    pyro.set_rng_seed(123)
    guide = AutoNormal(noisy_model)
    if keep is not None:
        keep.append(guide)  # a compiled ELBO's entries live as long as their guide
    svi = SVI(noisy_model, guide, pyro.optim.Adam({"lr": 0.05}), loss)
    return [svi.step(data) for _ in range(steps)]


def backends():
    fast = ["eager", "torchscript", "aten", "aten-jit", "auto"]
    return [*fast, pytest.param("inductor", marks=pytest.mark.slow)]


@pytest.mark.parametrize("backend", backends())
def test_first_svi_losses_equal_eager_pyro(backend):
    data = gaussian_data(20)
    expected = svi_losses(Trace_ELBO(), data)
    actual = svi_losses(lazyjit.JitTrace_ELBO(backend=backend), data)
    assert actual == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_svi_losses_equal_eager_pyro_across_auto_tiers(monkeypatch):
    """Each of auto's tiers in turn, the switches included, with inductor's code."""
    auto = lazyjit.BACKENDS["auto"]
    monkeypatch.setattr(auto, "policy", TierPolicy(5, 15, 10, local_hot_calls=15))
    data = gaussian_data(20)
    expected = svi_losses(Trace_ELBO(), data)
    elbo, kept = lazyjit.JitTrace_ELBO(), []
    actual = svi_losses(elbo, data, keep=kept)
    (program,) = elbo.compiled_fn.compiled.values()
    assert program.lanes["value_and_grad"].tier == "inductor"
    assert actual == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_pyro_jit_differs_from_eager_where_lazyjit_does_not():
    """Why it matters: Pyro's own jit draws for its param discovery and trace."""
    data = gaussian_data(20)
    expected = svi_losses(Trace_ELBO(), data, steps=3)
    assert svi_losses(pyro.infer.JitTrace_ELBO(), data, steps=3) != pytest.approx(expected)


# A seeded script, run in fresh processes: the default backend, and auto's tier switches
# placed inside a short run (inductor included).
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import pyro, torch
    import lazyjit
    from lazyjit.backends import TierPolicy
    from lazyjit.examples import gaussian_data, gaussian_model
    from pyro.infer import MCMC, SVI
    from pyro.infer.autoguide import AutoDiagonalNormal

    if sys.argv[1] == "short":
        lazyjit.BACKENDS["auto"].policy = TierPolicy(2, 20, 30, local_hot_calls=20)
    pyro.set_rng_seed(0)
    data = gaussian_data(100)
    guide = AutoDiagonalNormal(gaussian_model)
    svi = SVI(gaussian_model, guide, pyro.optim.Adam({"lr": 0.02}), lazyjit.JitTrace_ELBO())
    losses = [svi.step(data) for _ in range(int(sys.argv[2]))]
    kernel = lazyjit.NUTS(gaussian_model, jit_compile=True, ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=int(sys.argv[3]), warmup_steps=int(sys.argv[3]),
                disable_progbar=True)
    mcmc.run(data)
    samples = {k: v.tolist() for k, v in mcmc.get_samples().items()}
    print(json.dumps({"losses": [float(x).hex() for x in losses], "samples": samples}))
    """
)


def run_script(*args):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [("default", 100, 30), pytest.param(("short", 300, 100), marks=pytest.mark.slow)],
)
def test_a_seeded_run_repeats_bit_for_bit_in_a_fresh_process(args):
    first, second = run_script(*args), run_script(*args)
    assert first["losses"] == second["losses"]
    assert first["samples"] == second["samples"]


def test_compiling_draws_nothing():
    """A compiled call consumes the random stream exactly as the eager call does."""
    data = gaussian_data(10)
    for backend in ["torchscript", "aten", "aten-jit", "auto"]:
        pyro.clear_param_store()
        torch.manual_seed(0)
        Trace_ELBO().loss(gaussian_model, AutoNormal(gaussian_model), data)
        expected = torch.rand(3)
        pyro.clear_param_store()
        torch.manual_seed(0)
        guide = AutoNormal(gaussian_model)
        elbo = lazyjit.JitTrace_ELBO(backend=backend)
        elbo.loss_and_grads(gaussian_model, guide, data)  # param discovery and compile
        assert torch.equal(torch.rand(3), expected), backend
