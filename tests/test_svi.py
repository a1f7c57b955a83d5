"""``lazyjit.SVI``: the fused step (loss, gradients, Adam update in one graph).

Every case runs the same model, guide and optimizer settings through ``pyro.infer.SVI``
with the eager ELBO, from the same seed, and compares losses, params and optimizer
state step by step. Params are created lazily by the first step in both. Most cases swap
inductor for a stand-in (the captured graph run as FX code); one ``slow`` case compiles
with inductor for real.
"""

import copy
import subprocess
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.optim import SGD, Adam, ClippedAdam
from torch.distributions import constraints

import lazyjit
import lazyjit.backends.tiers
import lazyjit.svi
from lazyjit import LazyJitError, LazyJitWarning
from lazyjit.backends import TierPolicy, wait_for_compiles
from lazyjit.examples import gaussian_data, gaussian_model


@pytest.fixture(autouse=True)
def no_compile_left_behind():
    yield
    assert wait_for_compiles(timeout=300)


@pytest.fixture(autouse=True)
def quick_switch(monkeypatch):
    """Fused steps take inductor's code 3 steps after they start compiling."""
    policy = TierPolicy(switch_calls=3, local_hot_calls=1)
    monkeypatch.setattr(lazyjit.BACKENDS["auto"], "policy", policy)


@pytest.fixture
def fx_for_inductor(monkeypatch):
    """Inductor replaced by the captured graph's own FX code (and no compile worker)."""
    monkeypatch.setattr(lazyjit.config, "COMPILE_WORKER", False)
    monkeypatch.setattr(
        lazyjit.backends.tiers,
        "inductor_compile",
        lambda graph_module, inputs, grad, config=None: graph_module.forward,
    )


def regression(x, y=None):
    """A model with plain params (one constrained) besides its latent."""
    weight = pyro.param("weight", torch.zeros(3))
    noise = pyro.param("noise", torch.tensor(1.0), constraint=constraints.positive)
    bias = pyro.sample("bias", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ weight + bias, noise), obs=y)


def run(svi_class, loss, model, make_guide, make_optim, args, steps, wait_at=None):
    """Losses, final params, optimizer state and the SVI object of ``steps`` steps from
    seed 0, params created by the first step."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = svi_class(model, make_guide(), make_optim(), loss)
    losses = []
    for step in range(steps):
        losses.append(svi.step(*args))
        if step == wait_at:
            assert svi.wait(timeout=600)
    params = {name: p.detach().clone() for name, p in pyro.get_param_store().items()}
    return losses, params, svi.optim.get_state(), svi


def assert_same_run(fused, eager):
    (losses, params, state, _), (eager_losses, eager_params, eager_state, _) = fused, eager
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    assert params.keys() == eager_params.keys()
    for name in params:
        torch.testing.assert_close(params[name], eager_params[name], rtol=1e-5, atol=1e-6)
    assert state.keys() == eager_state.keys()
    for name in eager_state:  # Adam's moments and step count, where Pyro's optimizer keeps them
        ours, theirs = state[name]["state"][0], eager_state[name]["state"][0]
        assert float(ours["step"]) == float(theirs["step"])
        for moment in ["exp_avg", "exp_avg_sq"]:
            torch.testing.assert_close(ours[moment], theirs[moment], rtol=1e-5, atol=1e-7)


def fused_steps(svi):
    return [s for s in svi._steps.values() if s]


OPTIMIZERS = {
    "adam": lambda: Adam({"lr": 0.05}),
    "adam_weight_decay": lambda: Adam({"lr": 0.02, "betas": (0.8, 0.99), "weight_decay": 0.1}),
    "clipped_adam": lambda: ClippedAdam(
        {"lr": 0.05, "clip_norm": 0.5, "lrd": 0.97, "weight_decay": 0.01, "eps": 1e-6}
    ),
    "per_param_args": lambda: Adam(lambda name: {"lr": 0.1 if "loc" in name else 0.01}),
}


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_fused_steps_match_pyro(optim, fx_for_inductor):
    data = gaussian_data(100)
    setup = (gaussian_model, lambda: AutoDiagonalNormal(gaussian_model), OPTIMIZERS[optim])
    fused = run(lazyjit.SVI, lazyjit.JitTrace_ELBO(), *setup, (data,), 20, wait_at=4)
    eager = run(SVI, Trace_ELBO(), *setup, (data,), 20)
    assert_same_run(fused, eager)
    (step,) = fused_steps(fused[3])
    assert step.program.lanes["call"].tier == "inductor"  # the stand-in, from step 5 on


@pytest.mark.parametrize("optim", list(OPTIMIZERS))
def test_first_step_is_pyros_bit_for_bit(optim, fx_for_inductor):
    """The first step updates with the fused graph's Adam, run eagerly: the same bits as
    torch's Adam.step under pyro.infer.SVI, state included, and the same for a set_state
    left waiting (which a first step must consume as Pyro's does)."""
    data = gaussian_data(100)
    setup = (gaussian_model, lambda: AutoDiagonalNormal(gaussian_model), OPTIMIZERS[optim])
    fused = run(lazyjit.SVI, lazyjit.JitTrace_ELBO(), *setup, (data,), 1)
    eager = run(SVI, Trace_ELBO(), *setup, (data,), 1)
    assert fused[0] == eager[0]
    for name, param in eager[1].items():
        assert torch.equal(fused[1][name], param)
    for name, state in eager[2].items():
        for key, value in state["state"][0].items():
            assert torch.equal(
                torch.as_tensor(fused[2][name]["state"][0][key]), torch.as_tensor(value)
            )
        assert fused[2][name]["param_groups"] == state["param_groups"]


def test_first_step_consumes_a_loaded_optimizer_state(fx_for_inductor):
    data = gaussian_data(100)
    make_guide = lambda: AutoDiagonalNormal(gaussian_model)  # noqa: E731
    *_, trained = run(SVI, Trace_ELBO(), gaussian_model, make_guide, OPTIMIZERS["adam"], (data,), 3)
    state, params = copy.deepcopy((trained.optim.get_state(), pyro.get_param_store().get_state()))
    results = []
    for svi_class, loss in [(lazyjit.SVI, lazyjit.JitTrace_ELBO()), (SVI, Trace_ELBO())]:
        pyro.get_param_store().set_state(copy.deepcopy(params))
        pyro.set_rng_seed(1)
        svi = svi_class(gaussian_model, make_guide(), OPTIMIZERS["adam"](), loss)
        svi.optim.set_state(copy.deepcopy(state))
        results.append(([svi.step(data) for _ in range(2)], svi.optim.get_state()))
    (losses, ours), (eager_losses, theirs) = results
    assert losses[0] == eager_losses[0] and losses == pytest.approx(eager_losses, rel=1e-6)
    for name in theirs:
        assert (
            float(ours[name]["state"][0]["step"]) == 5.0 == float(theirs[name]["state"][0]["step"])
        )


def test_a_run_imports_no_dynamo():
    """torch's Adam imports torch._dynamo when built and stepped (about a second of a
    short run); the fused run never builds or steps one through dynamo's wrappers. A
    fresh process: this one may have imported dynamo already."""
    code = """
import sys, pyro, torch, lazyjit
from pyro.infer.autoguide import AutoDiagonalNormal
from lazyjit.examples import gaussian_data, gaussian_model
lazyjit.config.COMPILE_WORKER = False
data = gaussian_data(100)
svi = lazyjit.SVI(gaussian_model, AutoDiagonalNormal(gaussian_model),
                  pyro.optim.Adam({"lr": 0.01}), lazyjit.JitTrace_ELBO())
for _ in range(20):
    svi.step(data)
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert "dynamo imported: False" in result.stdout, result.stderr


def test_plain_params_and_autonormal(fx_for_inductor):
    x, y = torch.randn(30, 3), torch.randn(30)
    setup = (regression, lambda: AutoNormal(regression), lambda: Adam({"lr": 0.1}))
    fused = run(lazyjit.SVI, lazyjit.JitTrace_ELBO(), *setup, (x, y), 15, wait_at=3)
    eager = run(SVI, Trace_ELBO(), *setup, (x, y), 15)
    assert_same_run(fused, eager)
    assert {"weight", "noise"} <= set(fused[1])


def test_enumerated_mixture(fx_for_inductor):
    def mixture(data):
        weights = pyro.param("weights", torch.ones(2) / 2, constraint=constraints.simplex)
        locs = pyro.param("locs", torch.tensor([-1.0, 1.0]))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("obs", dist.Normal(locs[z], 1.0), obs=data)

    def guide(data):
        pass

    data = torch.cat([torch.randn(20) - 2, torch.randn(20) + 2])
    setup = (mixture, lambda: guide, lambda: Adam({"lr": 0.1}))
    fused = run(lazyjit.SVI, lazyjit.JitTraceEnum_ELBO(max_plate_nesting=1), *setup, (data,), 10)
    eager = run(SVI, TraceEnum_ELBO(max_plate_nesting=1), *setup, (data,), 10)
    assert_same_run(fused, eager)


def test_new_batch_size_gets_its_own_fused_step(fx_for_inductor):
    full, last = gaussian_data(100), gaussian_data(37)
    batches = [full, full, full, last, full, last, last, full]
    losses, svis = [], []
    for svi_class, loss in [(lazyjit.SVI, lazyjit.JitTrace_ELBO()), (SVI, Trace_ELBO())]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = svi_class(
            gaussian_model, AutoDiagonalNormal(gaussian_model), Adam({"lr": 0.05}), loss
        )
        losses.append([svi.step(batch) for batch in batches])
        svis.append(svi)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert len(fused_steps(svis[0])) == 2


def test_evaluate_loss_matches(fx_for_inductor):
    data = gaussian_data(50)
    guide = AutoDiagonalNormal(gaussian_model)
    svi = lazyjit.SVI(gaussian_model, guide, Adam({"lr": 0.05}), lazyjit.JitTrace_ELBO())
    for _ in range(3):
        svi.step(data)
    svi.evaluate_loss(data)  # compiles the loss's no-grad entry
    torch.manual_seed(5)
    actual = svi.evaluate_loss(data)
    torch.manual_seed(5)
    assert actual == pytest.approx(Trace_ELBO().loss(gaussian_model, guide, data), rel=1e-5)


def test_argument_that_requires_grad_takes_pyros_step(fx_for_inductor):
    def model(data, shift):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc + shift, 1.0), obs=data)

    def guide(data, shift):
        pass

    data = torch.randn(10) + 1
    shift = torch.zeros((), requires_grad=True)
    svi = lazyjit.SVI(model, guide, Adam({"lr": 0.1}), lazyjit.JitTrace_ELBO())
    for _ in range(3):
        svi.step(data, shift)
    assert shift.grad is not None  # the loss's gradient reached the argument, as with Pyro
    assert not fused_steps(svi)


@pytest.mark.parametrize(
    "optim, match",
    [
        (lambda: SGD({"lr": 0.1}), "Adam and pyro.optim.ClippedAdam, not SGD"),
        (lambda: Adam({"lr": 0.1, "amsgrad": True}), "amsgrad"),
        (lambda: ClippedAdam({"lr": 0.1, "centered_variance": True}), "centered_variance"),
        (lambda: Adam({"lr": 0.1}, clip_args={"clip_norm": 1.0}), "clip_args"),
    ],
)
def test_unsupported_optimizer_is_a_clear_error(optim, match):
    with pytest.raises(LazyJitError, match=match):
        lazyjit.SVI(gaussian_model, AutoNormal(gaussian_model), optim(), lazyjit.JitTrace_ELBO())


def test_per_param_unsupported_option_is_a_clear_error(fx_for_inductor):
    data = gaussian_data(10)
    optim = Adam(lambda name: {"lr": 0.1, "maximize": True})
    svi = lazyjit.SVI(gaussian_model, AutoNormal(gaussian_model), optim, lazyjit.JitTrace_ELBO())
    with pytest.raises(LazyJitError, match="maximize"):
        svi.step(data)  # the first step, before it updates anything


def test_non_lazyjit_loss_is_a_clear_error():
    with pytest.raises(LazyJitError, match="lazyjit Jit ELBO"):
        lazyjit.SVI(gaussian_model, AutoNormal(gaussian_model), Adam({"lr": 0.1}), Trace_ELBO())


def test_failed_capture_runs_pyros_steps_with_one_warning(monkeypatch, fx_for_inductor):
    def broken(*args, **kwargs):
        raise RuntimeError("no capture today")

    monkeypatch.setattr(lazyjit.svi, "capture", broken)
    data = gaussian_data(50)
    guide = AutoDiagonalNormal(gaussian_model)
    pyro.set_rng_seed(0)
    svi = lazyjit.SVI(gaussian_model, guide, Adam({"lr": 0.05}), lazyjit.JitTrace_ELBO())
    svi.step(data)
    with pytest.warns(LazyJitWarning, match="no capture today"):
        svi.step(data)
    svi.step(data)  # no second warning (pytest's config turns one into an error)
    assert not fused_steps(svi)


@pytest.mark.slow
def test_fused_steps_with_inductor_match_pyro():
    data = gaussian_data(100)
    setup = (
        gaussian_model,
        lambda: AutoDiagonalNormal(gaussian_model),
        lambda: ClippedAdam({"lr": 0.05, "lrd": 0.99}),
    )
    fused = run(lazyjit.SVI, lazyjit.JitTrace_ELBO(), *setup, (data,), 20, wait_at=2)
    eager = run(SVI, Trace_ELBO(), *setup, (data,), 20)
    assert_same_run(fused, eager)
    (step,) = fused_steps(fused[3])
    assert step.program.lanes["call"].tier == "inductor"
