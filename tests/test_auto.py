"""The ``"auto"`` backend: TorchScript first, inductor in the background once hot.

Every case compares with the same Python run eagerly, from the same seed where the
function draws random numbers. Most cases swap inductor for a stand-in compiler (the
captured graph run as FX code), which exercises the tiering in milliseconds; the cases
that compile with inductor for real cost seconds each, and all but one are ``slow``.
"""

import threading
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal

import lazyjit
import lazyjit.backends
from lazyjit import LazyJitWarning, StructureWarning
from lazyjit.backends import TieredProgram, TorchScriptProgram, wait_for_compiles
from lazyjit.examples import gaussian_data, gaussian_model, scale_log_prob

SLOW = pytest.mark.slow
UNTIMED_CALLS = lazyjit.backends._UNTIMED_CALLS


@pytest.fixture(autouse=True)
def no_compile_left_behind():
    """A background compile must not outlive its test (it would meet the next one)."""
    yield
    assert wait_for_compiles(timeout=120)


@pytest.fixture
def hot_after(monkeypatch):
    """``hot_after(n)``: auto programs compiled from now on are hot after ``n`` calls."""
    auto = lazyjit.BACKENDS["auto"]

    def set_hot(calls, seconds=float("inf"), blocking_seconds=float("inf")):
        monkeypatch.setattr(auto, "warm_seconds", float("inf"))
        monkeypatch.setattr(auto, "warm_compile_factor", 0.0)
        monkeypatch.setattr(auto, "hot_calls", calls)
        monkeypatch.setattr(auto, "hot_seconds", seconds)
        monkeypatch.setattr(auto, "hot_compile_factor", 0.0)
        monkeypatch.setattr(auto, "blocking_hot_seconds", blocking_seconds)

    return set_hot


@pytest.fixture
def fx_for_inductor(monkeypatch):
    """Inductor replaced by the captured graph's own FX code: tiering without the cost."""
    compiled = []

    def compile_as_fx(graph_module, inputs, grad, config=None):
        compiled.append(grad)
        return graph_module.forward

    monkeypatch.setattr(lazyjit.backends, "inductor_compile", compile_as_fx)
    return compiled


@pytest.fixture
def held_inductor(monkeypatch):
    """Inductor replaced by FX code that is ready only once the returned Event is set."""
    release = threading.Event()

    def slow_compile(graph_module, inputs, grad, config=None):
        assert release.wait(timeout=60)
        return graph_module.forward

    monkeypatch.setattr(lazyjit.backends, "inductor_compile", slow_compile)
    yield release
    release.set()


def assert_close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def program_of(compiled):
    (program,) = compiled.compiled.values()
    return program


def eager_value_and_grads(fn, names, *args):
    value = fn(*args)
    params = [pyro.param(n).unconstrained() for n in names]
    return value.detach(), dict(zip(names, torch.autograd.grad(value, params)))


# A function with random draws, so that every comparison also checks the random stream.
def noisy_log_prob(x):
    loc = pyro.param("loc", torch.zeros(()))
    z = pyro.sample("z", dist.Normal(loc, 1.0).expand(x.shape).to_event(1))
    return dist.Normal(z, 1.0).log_prob(x).sum() + (z * loc).sum()


def assert_value_and_grad_match_eager(compiled, fn, *args, seed):
    torch.manual_seed(seed)
    value, grads = compiled.value_and_grad(*args)
    after = torch.rand(())
    torch.manual_seed(seed)
    expected, expected_grads = eager_value_and_grads(fn, list(grads.params), *args)
    assert_close(value, expected)
    assert_close(grads.params, expected_grads)
    assert after == torch.rand(())  # the same random numbers were drawn


def assert_elbo_step_matches_pyro(lazy, guide, data, seed):
    """``lazy.loss_and_grads`` gives Pyro ``Trace_ELBO``'s loss and param gradients on
    the tutorial Gaussian model from the same seed."""
    results = []
    for elbo in [lazy, Trace_ELBO()]:
        for p in guide.parameters():
            p.grad = None
        torch.manual_seed(seed)
        loss = elbo.loss_and_grads(gaussian_model, guide, data)
        results.append((loss, {n: p.grad.clone() for n, p in guide.named_parameters()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert_close(results[0][1], results[1][1])


def test_auto_is_the_default():
    assert lazyjit.trace(scale_log_prob).backend.name == "auto"
    assert lazyjit.JitTrace_ELBO().compiled_fn.backend.name == "auto"
    assert lazyjit.JitTraceEnum_ELBO().compiled_fn.backend.name == "auto"
    assert lazyjit.NUTS(gaussian_model, jit_compile=True).backend == "auto"
    assert lazyjit.potential_fn(gaussian_model, (gaussian_data(10),)).compiled.backend.name == (
        "auto"
    )


def test_starts_on_torchscript():
    compiled = lazyjit.trace(scale_log_prob)
    x, y = torch.randn(10), torch.randn(10)
    for _ in range(3):
        assert_close(compiled(x, y), scale_log_prob(x, y))
        value, grads = compiled.value_and_grad(x, y)
        assert_close((value, grads.params), eager_value_and_grads(scale_log_prob, ["scale"], x, y))
    program = program_of(compiled)
    assert isinstance(program, TieredProgram) and isinstance(program.base, TorchScriptProgram)
    assert {lane.tier for lane in program.lanes.values()} == {"torchscript"}
    assert program.lanes["value_and_grad"].calls == 3 and program.lanes["call"].calls == 3
    # Tier 0 runs until a graph is captured: TorchScript's optimization would not pay.
    assert program.base.optimize is False and lazyjit.BACKENDS["torchscript"].optimize
    assert torch._C._get_graph_executor_optimize()  # the flag is put back after each call


def test_unoptimized_torchscript_runs_with_the_executor_optimization_off():
    seen = []
    real = TorchScriptProgram(lambda x: (seen.append(torch._C._get_graph_executor_optimize()), x))
    unoptimized = TorchScriptProgram(real.script, optimize=False)
    real(torch.ones(()))
    unoptimized(torch.ones(()))
    assert seen == [True, False] and torch._C._get_graph_executor_optimize()


def test_tiers_up_when_hot_and_matches_eager_throughout(hot_after, fx_for_inductor):
    hot_after(3)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(20)
    compiled.value_and_grad(x)  # compiles
    for seed in range(2):  # calls 2 and 3: the third is hot and starts the compile
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    program = program_of(compiled)
    assert program.wait(timeout=60)
    lane = program.lanes["value_and_grad"]
    assert lane.tier == "inductor" and lane.calls == 3 and lane.graph_module is not None
    assert fx_for_inductor == [False]  # an inference compile, in the background
    for seed in range(2, 4):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    assert program.lanes["call"].tier == "torchscript"  # the other lane counts on its own


def test_hot_after_seconds(hot_after, fx_for_inductor):
    hot_after(float("inf"), seconds=0.0)  # hot at its first timed call
    compiled = lazyjit.trace(scale_log_prob)
    x, y = torch.randn(5), torch.randn(5)
    with torch.no_grad():
        for _ in range(UNTIMED_CALLS):
            compiled(x, y)
        assert not program_of(compiled).lanes["call"].hot
        compiled(x, y)
    program = program_of(compiled)
    assert program.wait(timeout=60) and program.lanes["call"].tier == "inductor"
    with torch.no_grad():
        assert_close(compiled(x, y), scale_log_prob(x, y))


def test_differentiable_call_compiles_on_the_calling_thread(hot_after, fx_for_inductor):
    hot_after(1, seconds=0.0, blocking_seconds=float("inf"))
    compiled = lazyjit.trace(scale_log_prob)
    x, y = torch.randn(5), torch.randn(5)
    for _ in range(3):  # a differentiable call waits for blocking_hot_seconds
        compiled(x, y)
    program = program_of(compiled)
    assert program.lanes["call"].tier == "torchscript" and not fx_for_inductor

    hot_after(1, seconds=0.0, blocking_seconds=0.0)
    compiled = lazyjit.trace(scale_log_prob)
    for _ in range(UNTIMED_CALLS + 1):  # hot at its first timed call
        compiled(x, y)
    lane = program_of(compiled).lanes["call"]
    assert lane.tier == "inductor" and lane.future is None  # done before the call returned
    assert fx_for_inductor == [True]  # a training compile
    out = compiled(x, y)
    expected, expected_grads = eager_value_and_grads(scale_log_prob, ["scale"], x, y)
    assert_close(out.detach(), expected)
    scale = pyro.param("scale").unconstrained()
    assert_close(torch.autograd.grad(out, scale)[0], expected_grads["scale"])


def test_works_without_torchscript(monkeypatch, hot_after, fx_for_inductor):
    def no_torchscript(*args, **kwargs):
        raise RuntimeError("torch.jit is gone")

    monkeypatch.setattr(torch.jit, "trace", no_torchscript)
    monkeypatch.setattr(torch._C, "_create_graph_by_tracing", no_torchscript)
    hot_after(2)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(7)
    with pytest.warns(LazyJitWarning, match="torch.jit is gone"):
        compiled.value_and_grad(x)
    program = program_of(compiled)
    assert program.lanes["value_and_grad"].tier == "eager"
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=0)  # hot
    assert program.wait(timeout=60) and program.lanes["value_and_grad"].tier == "inductor"
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=1)
    assert compiled.stats.fallbacks == 0


def test_tier_zero_first_calls_count_as_its_compile(monkeypatch, hot_after):
    hot_after(float("inf"))
    monkeypatch.setattr(lazyjit.BACKENDS["auto"], "warm_seconds", 0.0)
    monkeypatch.setattr(lazyjit.BACKENDS["auto"], "warm_compile_factor", 1e6)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    t0 = lane.t0
    compiled.value_and_grad(x)  # its second call: still tier 0's compile
    assert lane.t0 > t0 and lane.seconds == 0.0
    assert lane.warm_seconds == pytest.approx(1e6 * lane.t0)
    t0 = lane.t0
    compiled.value_and_grad(x)  # its use
    assert lane.t0 == t0 and lane.seconds > 0.0 and not lane.warm


def test_warm_lane_runs_its_graph_on_torchscript_before_it_is_hot(monkeypatch, fx_for_inductor):
    auto = lazyjit.BACKENDS["auto"]
    monkeypatch.setattr(auto, "warm_seconds", 0.0)
    monkeypatch.setattr(auto, "warm_compile_factor", 0.0)
    monkeypatch.setattr(auto, "hot_seconds", float("inf"))
    monkeypatch.setattr(auto, "hot_calls", 5)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    # The first two calls are tier 0's compile (its execution plan): not timed, never warm.
    for seed in range(2):
        assert lane.seconds == 0.0 and lane.tier == "torchscript"
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    assert lane.warm and lane.tier == "aten-jit" and lane.seconds > 0.0
    assert not lane.hot and not fx_for_inductor  # inductor waits for the hot rule
    for seed in range(2, 4):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    assert lane.calls == 5 and lane.hot  # still counted on the warm tier
    assert program_of(compiled).wait(timeout=60) and lane.tier == "inductor"
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=4)
    assert fx_for_inductor == [False]


@pytest.mark.parametrize("max_nodes, meanwhile", [(5000, "aten-jit"), (10, "aten")])
def test_runs_the_graph_on_torchscript_while_inductor_compiles(
    monkeypatch, hot_after, held_inductor, max_nodes, meanwhile
):
    # A graph too big to trace on the caller's thread runs as FX code instead.
    monkeypatch.setattr(lazyjit.backends, "_SCRIPT_MAX_NODES", max_nodes)
    hot_after(2)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    for _ in range(2):
        compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    assert lane.tier == meanwhile
    for seed in range(3):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    held_inductor.set()
    assert program_of(compiled).wait(timeout=60) and lane.tier == "inductor"
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=3)


def test_failed_inductor_compile_falls_back_one_tier_with_one_warning(monkeypatch, hot_after):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(lazyjit.backends, "inductor_compile", broken)
    hot_after(1)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)  # compiles, is hot, and the background compile fails
    program = program_of(compiled)
    assert program.wait(timeout=60)
    with pytest.warns(LazyJitWarning, match="no C.. compiler"):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        for seed in range(1, 3):
            assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    # One tier below inductor: the captured graph on TorchScript.
    assert program.lanes["value_and_grad"].tier == "aten-jit"


def test_failed_capture_stays_on_torchscript(monkeypatch, hot_after):
    def broken(*args, **kwargs):
        raise RuntimeError("no capture today")

    monkeypatch.setattr(lazyjit.backends, "capture_value_and_grad", broken)
    hot_after(2)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)
    with pytest.warns(LazyJitWarning, match="no capture today"):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=0)
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=1)
    assert program_of(compiled).lanes["value_and_grad"].tier == "torchscript"


def test_one_capture_or_compile_at_a_time(hot_after, held_inductor):
    """make_fx keeps global state: a lane that is hot while another program compiles
    waits on its tier, and tiers up at a call after the compile is done."""
    hot_after(1)
    first, second = lazyjit.trace(noisy_log_prob), lazyjit.trace(scale_log_prob)
    x, y = torch.randn(5), torch.randn(5)
    first.value_and_grad(x)  # hot: its compile starts, and waits
    for _ in range(3):
        second.value_and_grad(x, y)
    lane = program_of(second).lanes["value_and_grad"]
    assert lane.tier == "torchscript" and lane.graph_module is None and lane.calls == 3
    held_inductor.set()
    assert wait_for_compiles(timeout=60)
    second.value_and_grad(x, y)  # now it captures, and compiles
    assert wait_for_compiles(timeout=60) and lane.tier == "inductor"
    value, grads = second.value_and_grad(x, y)
    assert_close((value, grads.params), eager_value_and_grads(scale_log_prob, ["scale"], x, y))


def test_value_dependent_structure_runs_eagerly_and_never_tiers_up(hot_after, fx_for_inductor):
    def branchy(x):
        if x.sum() > 0:
            return (x * pyro.param("w", torch.tensor(2.0))).sum()
        return (x - 1).sum()

    hot_after(1)
    compiled = lazyjit.trace(branchy)
    pos, neg = torch.ones(3), -torch.ones(3)
    with pytest.warns(StructureWarning):
        assert_close(compiled(pos), torch.tensor(6.0))
    assert_close(compiled(neg), torch.tensor(-6.0))
    assert compiled.stats.fallbacks == 1 and not fx_for_inductor


def test_elbo_with_auto_matches_pyro_across_the_switch(hot_after, fx_for_inductor):
    hot_after(3)
    data = gaussian_data(50)
    guide = AutoDiagonalNormal(gaussian_model)
    guide(data)
    lazy = lazyjit.JitTrace_ELBO()
    lazy.loss_and_grads(gaussian_model, guide, data)  # compiles
    for step in range(6):  # hot at the third call; the rest after the switch
        if step == 3:
            assert wait_for_compiles(timeout=60)
            assert program_of(lazy.compiled_fn).lanes["value_and_grad"].tier == "inductor"
        assert_elbo_step_matches_pyro(lazy, guide, data, seed=step)


# Inductor for real. One case in the default run: the background compile must leave the
# caller's random stream alone (inductor saves and restores the global RNG state).
def test_background_inductor_compile(hot_after):
    hot_after(2)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(10)
    compiled.value_and_grad(x)
    torch.manual_seed(0)
    compiled.value_and_grad(x)  # hot: the compile starts in the background
    program = program_of(compiled)
    draws = []
    while not program.wait(timeout=0.01):  # the caller's loop goes on meanwhile
        draws.append(torch.rand(8))
    draws.append(torch.rand(8))
    # What eager would have drawn in the same order from the same seed.
    torch.manual_seed(0)
    eager_value_and_grads(noisy_log_prob, ["loc"], x)
    assert torch.equal(torch.cat(draws), torch.rand(8 * len(draws)))
    assert program.lanes["value_and_grad"].tier == "inductor"
    for seed in range(2):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)


@SLOW
def test_elbo_tiers_up_to_inductor_and_matches_pyro(hot_after):
    hot_after(2)
    data = gaussian_data(100)
    guide = AutoDiagonalNormal(gaussian_model)
    guide(data)
    lazy = lazyjit.JitTrace_ELBO()
    for _ in range(2):
        lazy.loss_and_grads(gaussian_model, guide, data)
    assert wait_for_compiles(timeout=600)
    assert program_of(lazy.compiled_fn).lanes["value_and_grad"].tier == "inductor"
    for seed in range(3):
        assert_elbo_step_matches_pyro(lazy, guide, data, seed=seed)


@SLOW
def test_differentiable_call_with_inductor_training_compile(hot_after):
    hot_after(1, seconds=0.0, blocking_seconds=0.0)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(10)
    for _ in range(UNTIMED_CALLS + 1):  # hot at its first timed call
        compiled(x)
    assert program_of(compiled).lanes["call"].tier == "inductor"
    for seed in range(2):
        torch.manual_seed(seed)
        out = compiled(x)
        torch.manual_seed(seed)
        expected, expected_grads = eager_value_and_grads(noisy_log_prob, ["loc"], x)
        assert_close(out.detach(), expected)
        loc = pyro.param("loc").unconstrained()
        assert_close(torch.autograd.grad(out, loc)[0], expected_grads["loc"])


@SLOW
def test_nuts_tiers_up_and_samples_the_posterior(hot_after):
    hot_after(100)
    data = gaussian_data(100)
    kernel = lazyjit.NUTS(gaussian_model, jit_compile=True, ignore_jit_warnings=True)
    mcmc = pyro.infer.MCMC(kernel, num_samples=300, warmup_steps=300, disable_progbar=True)
    mcmc.run(data)
    assert wait_for_compiles(timeout=600)
    # NUTS's steps run in compiled leaves (lazyjit.mcmc.CompiledLeaf), each a call.
    assert program_of(kernel._leaf.compiled).lanes["call"].tier == "inductor"
    samples = mcmc.get_samples()
    assert abs(samples["loc"].mean() - data.mean()) < 0.5
    assert abs(samples["scale"].mean() - data.std()) < 0.5
