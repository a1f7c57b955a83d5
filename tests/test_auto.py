"""The ``"auto"`` backend: eager first, the captured graph once warm, inductor once hot.

Every case compares with the same Python run eagerly, from the same seed where the
function draws random numbers. Most cases swap inductor for a stand-in compiler (the
captured graph run as FX code), which exercises the tiering in milliseconds; the cases
that compile with inductor for real cost seconds each, and all but one are ``slow``.
"""

import math
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
import lazyjit.backends.tiers
import lazyjit.config
from lazyjit import LazyJitWarning, StructureWarning
from lazyjit.backends import TieredProgram, TierPolicy, wait_for_compiles
from lazyjit.examples import gaussian_data, gaussian_model, scale_log_prob

SLOW = pytest.mark.slow
INF = float("inf")


@pytest.fixture(autouse=True)
def no_compile_left_behind():
    """A background compile must not outlive its test (it would meet the next one)."""
    yield
    assert wait_for_compiles(timeout=120)


@pytest.fixture
def policy(monkeypatch):
    """``policy(warm, hot, switch)``: auto programs compiled from now on follow it."""

    def set_policy(warm=INF, hot=INF, switch=0):
        policy = TierPolicy(warm, hot, switch, local_hot_calls=hot)
        monkeypatch.setattr(lazyjit.BACKENDS["auto"], "policy", policy)

    return set_policy


@pytest.fixture
def hot_after(policy):
    """``hot_after(n)``: auto lanes skip the warm tier, are hot after ``n`` calls and run
    inductor's code from the call after that."""
    return lambda calls: policy(hot=calls)


@pytest.fixture
def fx_for_inductor(monkeypatch):
    """Inductor replaced by the captured graph's own FX code: tiering without the cost
    (and without the compile worker, whose inductor this cannot replace)."""
    compiled = []
    monkeypatch.setattr(lazyjit.config, "COMPILE_WORKER", False)

    def compile_as_fx(graph_module, inputs, grad, config=None):
        compiled.append(grad)
        return graph_module.forward

    monkeypatch.setattr(lazyjit.backends.tiers, "inductor_compile", compile_as_fx)
    return compiled


@pytest.fixture
def held_inductor(monkeypatch):
    """Inductor replaced by FX code that is ready only once the returned Event is set."""
    release = threading.Event()
    monkeypatch.setattr(lazyjit.config, "COMPILE_WORKER", False)

    def slow_compile(graph_module, inputs, grad, config=None):
        assert release.wait(timeout=60)
        return graph_module.forward

    monkeypatch.setattr(lazyjit.backends.tiers, "inductor_compile", slow_compile)
    monkeypatch.setattr(
        lazyjit.config, "COMPILE_WORKER", False
    )  # it stands for inductor in this process only
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


def test_starts_eager_and_counts_calls(policy):
    policy(warm=INF)
    compiled = lazyjit.trace(scale_log_prob)
    x, y = torch.randn(10), torch.randn(10)
    for _ in range(3):
        assert_close(compiled(x, y), scale_log_prob(x, y))
        value, grads = compiled.value_and_grad(x, y)
        assert_close((value, grads.params), eager_value_and_grads(scale_log_prob, ["scale"], x, y))
    program = program_of(compiled)
    assert isinstance(program, TieredProgram) and type(program.base) is lazyjit.Program
    assert {lane.tier for lane in program.lanes.values()} == {"eager"}
    # The signature's first call ran eagerly and compiled the program; then it counts.
    assert program.lanes["value_and_grad"].calls == 3 and program.lanes["call"].calls == 2


def test_tiers_up_when_hot_and_matches_eager_throughout(hot_after, fx_for_inductor):
    hot_after(2)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(20)
    compiled.value_and_grad(x)  # runs eagerly and compiles
    for seed in range(2):  # the program's calls 1 and 2: the second is hot
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    program = program_of(compiled)
    assert program.wait(timeout=60)
    lane = program.lanes["value_and_grad"]
    assert lane.tier == "aten-jit" and lane.calls == 2 and lane.graph_module is not None
    assert fx_for_inductor == [False]  # an inference compile, in the background
    for seed in range(2, 4):  # the first of them takes the compiled code at its end
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    assert lane.tier == "inductor" and lane.calls == 3
    assert program.lanes["call"].tier == "eager"  # the other lane counts on its own


def test_switches_at_a_fixed_call_and_waits_there(policy, held_inductor):
    """The switch to inductor happens at the call the policy names, never earlier (a
    compile that is done sooner waits) and never later (the call waits for it)."""
    policy(warm=1, hot=2, switch=3)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)  # the first call: eager, and compiles
    compiled.value_and_grad(x)  # call 1: eager; warm afterwards
    lane = program_of(compiled).lanes["value_and_grad"]
    compiled.value_and_grad(x)  # call 2: the graph on TorchScript; hot afterwards
    assert lane.tier == "aten-jit" and lane.future is not None and lane.switch_at == 5
    held_inductor.set()
    assert lane.future.result(timeout=60) is not None
    for call in (3, 4):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=call)
        assert lane.tier == "aten-jit"  # done, but not taken before call 5
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=5)
    assert lane.tier == "inductor"


def test_a_lane_on_fx_code_switches_at_its_own_fixed_call(monkeypatch, held_inductor):
    """FX code (no TorchScript here) takes about twice TorchScript's time a call: such a
    lane switches after fx_switch_calls, the same call in every run; a lane that moves
    to TorchScript after it was hot (a fused step) counts switch_calls instead."""
    policy = TierPolicy(1, 2, switch_calls=6, local_hot_calls=2, fx_switch_calls=3)
    monkeypatch.setattr(lazyjit.BACKENDS["auto"], "policy", policy)
    monkeypatch.setattr(lazyjit.config, "AUTO_SCRIPT_MAX_NODES", 0)  # FX code, always
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    for _ in range(3):
        compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    assert lane.tier == "aten" and lane.switch_at == 2 + 3
    held_inductor.set()
    for call in (3, 4, 5):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=call)
    assert lane.tier == "inductor"

    assert policy.switch_after("aten-jit") == 6 and policy.switch_after("aten") == 3
    assert policy.replace(switch_calls=2).switch_after("aten") == 2  # never later
    assert policy.replace(switch_calls=None).switch_after("aten") is None
    lane.future, lane.hot_call = object(), 10  # hot at call 10, on FX code, then traced
    lane.switch(lambda *inputs: inputs, "aten-jit")
    assert lane.switch_at == 16


def test_a_lane_of_slow_calls_switches_after_about_switch_seconds(monkeypatch, held_inductor):
    """A graph whose calls the estimate says are slow switches after about
    ``switch_seconds`` of them rather than ``switch_calls``: still a fixed call."""
    policy = TierPolicy(1, 2, switch_calls=1000, local_hot_calls=2, switch_seconds=100.0)
    monkeypatch.setattr(lazyjit.BACKENDS["auto"], "policy", policy)
    monkeypatch.setattr(lazyjit.backends.tiers, "OP_SECONDS", 1.5)  # a slow op
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    for _ in range(3):
        compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    after = math.ceil(100.0 / lane.seconds_a_call)
    assert 1 < after < 10 and lane.future is not None and lane.switch_at == 2 + after
    held_inductor.set()
    for call in range(3, 2 + after):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=call)
        assert lane.tier == "aten-jit"
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=2 + after)
    assert lane.tier == "inductor"


def test_the_policy_counts_calls_for_cheap_graphs_and_seconds_for_slow_ones():
    policy = TierPolicy()
    assert policy.hot_after(0.0) == 100 and policy.hot_after(1e-5) == 100
    assert policy.hot_after(0.01) == 25 and policy.hot_after(1.0) == 1
    assert policy.switch_after("aten-jit", 0.0) == 10000 and policy.switch_after("aten") == 5000
    assert policy.switch_after("aten-jit", 0.01) == 100 == policy.switch_after("aten", 0.01)
    assert policy.switch_after("aten-jit", 3.0) == 1
    assert policy.replace(switch_calls=None).switch_after("aten-jit", 3.0) is None
    counts_only = policy.replace(hot_seconds=math.inf, switch_seconds=math.inf)
    assert counts_only.hot_after(3.0) == 100 and counts_only.switch_after("aten", 3.0) == 5000


def test_the_estimate_counts_ops_bytes_and_matrix_products():
    from lazyjit.backends.tiers import BYTE_SECONDS, FLOP_SECONDS, OP_SECONDS, call_seconds
    from lazyjit.graph.capture import capture

    graph_module, _ = capture(lambda a, b: ((a @ b).exp(),), [torch.ones(2, 3), torch.ones(3, 4)])
    ops, written, flops = 2, 2 * 8 * 4, 2 * 2 * 3 * 4  # mm and exp, each 2x4 float32
    expected = ops * OP_SECONDS + written * BYTE_SECONDS + flops * FLOP_SECONDS
    assert call_seconds(graph_module) == pytest.approx(expected)
    # A graph whose compile would take minutes keeps the counts.
    assert TierPolicy().seconds_a_call(graph_module) == call_seconds(graph_module)
    assert TierPolicy(seconds_max_ops=1).seconds_a_call(graph_module) == 0.0


def test_the_seed_model_switches_after_about_switch_seconds(monkeypatch, policy, fx_for_inductor):
    """The seed model's loss and fused step are hot after ``hot_calls`` and switch after
    about ``switch_seconds`` of their estimated calls: thousands of calls, below the
    ``switch_calls`` cap (the calls the benchmarks' seeded figures rest on)."""
    lanes = []
    init = lazyjit.backends.tiers.Lane.__init__

    def registering(self, *args, **kwargs):
        init(self, *args, **kwargs)
        lanes.append(self)

    monkeypatch.setattr(lazyjit.backends.tiers.Lane, "__init__", registering)
    policy(warm=1)
    for svi_class in (pyro.infer.SVI, lazyjit.SVI):
        pyro.clear_param_store()
        guide = AutoDiagonalNormal(gaussian_model)
        elbo = lazyjit.JitTrace_ELBO()
        svi = svi_class(gaussian_model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
        for _ in range(3):
            svi.step(gaussian_data(100))
    estimates = [lane.seconds_a_call for lane in lanes if lane.graph_module is not None]
    assert len(estimates) == 2 and all(seconds > 0 for seconds in estimates)
    default = TierPolicy()
    for seconds in estimates:
        assert default.hot_after(seconds) == default.hot_calls
        after = math.ceil(default.switch_seconds / seconds)
        assert 1000 < after < default.switch_calls
        assert default.switch_after("aten-jit", seconds) == after
        assert default.switch_after("aten", seconds) == min(after, default.fx_switch_calls)


def test_a_late_compile_is_waited_for(policy, monkeypatch):
    release = threading.Event()

    def slow_compile(graph_module, inputs, grad, config=None):
        release.wait(timeout=60)
        return graph_module.forward

    monkeypatch.setattr(lazyjit.backends.tiers, "inductor_compile", slow_compile)
    monkeypatch.setattr(
        lazyjit.config, "COMPILE_WORKER", False
    )  # it stands for inductor in this process only
    policy(hot=1, switch=1)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)  # compiles
    compiled.value_and_grad(x)  # hot: the compile starts and hangs
    threading.Timer(0.2, release.set).start()
    compiled.value_and_grad(x)  # the switch call: waits for the compile
    lane = program_of(compiled).lanes["value_and_grad"]
    assert lane.tier == "inductor" and lane.waited_seconds >= 0.1


def test_switch_when_ready_takes_a_done_compile_at_the_next_call(policy, held_inductor):
    policy(hot=1, switch=None)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    for _ in range(3):  # not done: no wait, the lane stays where it is
        compiled.value_and_grad(x)
    assert lane.tier == "aten-jit"
    held_inductor.set()
    assert program_of(compiled).wait(timeout=60)
    compiled.value_and_grad(x)
    assert lane.tier == "inductor"


def test_differentiable_call_compiles_on_the_calling_thread(hot_after, fx_for_inductor):
    hot_after(2)
    compiled = lazyjit.trace(scale_log_prob)
    x, y = torch.randn(5), torch.randn(5)
    compiled(x, y)  # compiles
    compiled(x, y)
    lane = program_of(compiled).lanes["call"]
    assert lane.tier == "eager" and not fx_for_inductor
    compiled(x, y)  # hot: compiles before it returns
    assert lane.tier == "inductor" and lane.future is None
    assert fx_for_inductor == [True]  # a training compile
    out = compiled(x, y)
    expected, expected_grads = eager_value_and_grads(scale_log_prob, ["scale"], x, y)
    assert_close(out.detach(), expected)
    scale = pyro.param("scale").unconstrained()
    assert_close(torch.autograd.grad(out, scale)[0], expected_grads["scale"])


def test_works_without_torchscript(monkeypatch, policy, fx_for_inductor):
    def no_torchscript(*args, **kwargs):
        raise RuntimeError("torch.jit is gone")

    monkeypatch.setattr(torch.jit, "trace", no_torchscript)
    monkeypatch.setattr(torch._C, "_create_graph_by_tracing", no_torchscript)
    policy(warm=1, hot=2)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(7)
    compiled.value_and_grad(x)
    compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    assert lane.tier == "aten"  # the captured graph as FX code
    for seed in range(3):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    assert lane.tier == "inductor" and compiled.stats.fallbacks == 0


def test_warm_lane_runs_its_graph_on_torchscript_before_it_is_hot(policy, fx_for_inductor):
    policy(warm=2, hot=5)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)  # compiles
    compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    assert lane.tier == "eager" and not lane.warm
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=0)
    assert lane.warm and lane.tier == "aten-jit"
    assert not lane.hot and not fx_for_inductor  # inductor waits for the hot rule
    for seed in range(1, 4):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    assert lane.calls == 5 and lane.hot and lane.tier == "aten-jit"
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=4)
    assert lane.tier == "inductor" and fx_for_inductor == [False]


@pytest.mark.parametrize("max_nodes, meanwhile", [(5000, "aten-jit"), (10, "aten")])
def test_runs_the_graph_on_torchscript_while_inductor_compiles(
    monkeypatch, policy, held_inductor, max_nodes, meanwhile
):
    # A graph too big to trace on the caller's thread runs as FX code instead.
    monkeypatch.setattr(lazyjit.config, "AUTO_SCRIPT_MAX_NODES", max_nodes)
    policy(hot=2, switch=None)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    for _ in range(3):
        compiled.value_and_grad(x)
    lane = program_of(compiled).lanes["value_and_grad"]
    assert lane.tier == meanwhile
    for seed in range(3):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    held_inductor.set()
    assert program_of(compiled).wait(timeout=60)
    assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=3)
    assert lane.tier == "inductor"


def test_failed_inductor_compile_falls_back_one_tier_with_one_warning(monkeypatch, hot_after):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(lazyjit.backends.tiers, "inductor_compile", broken)
    monkeypatch.setattr(
        lazyjit.config, "COMPILE_WORKER", False
    )  # it stands for inductor in this process only
    hot_after(1)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)  # compiles
    compiled.value_and_grad(x)  # hot, and the background compile fails
    with pytest.warns(LazyJitWarning, match="no C.. compiler"):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        for seed in range(1, 3):
            assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    # One tier below inductor: the captured graph on TorchScript.
    assert program_of(compiled).lanes["value_and_grad"].tier == "aten-jit"


def test_failed_capture_stays_eager(monkeypatch, policy):
    def broken(*args, **kwargs):
        raise RuntimeError("no capture today")

    monkeypatch.setattr(lazyjit.backends.tiers, "capture_value_and_grad", broken)
    policy(warm=1, hot=3)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(5)
    compiled.value_and_grad(x)
    with pytest.warns(LazyJitWarning, match="no capture today"):
        compiled.value_and_grad(x)
    for seed in range(3):
        assert_value_and_grad_match_eager(compiled, noisy_log_prob, x, seed=seed)
    assert program_of(compiled).lanes["value_and_grad"].tier == "eager"
    assert compiled.stats.fallbacks == 1  # the lane that stays eager is counted


def test_a_capture_runs_beside_a_background_compile(policy, held_inductor):
    """A lane that is warm while another program compiles captures at once: its
    switch points follow its own calls, whatever the compiler thread is doing."""
    policy(warm=1, hot=1, switch=None)
    first, second = lazyjit.trace(noisy_log_prob), lazyjit.trace(scale_log_prob)
    x, y = torch.randn(5), torch.randn(5)
    first.value_and_grad(x)
    first.value_and_grad(x)  # hot: its compile starts, and waits
    for _ in range(4):
        second.value_and_grad(x, y)
    lane = program_of(second).lanes["value_and_grad"]
    assert lane.tier == "aten-jit" and lane.graph_module is not None and lane.calls == 3
    held_inductor.set()
    assert wait_for_compiles(timeout=60)
    second.value_and_grad(x, y)
    assert lane.tier == "inductor"
    value, grads = second.value_and_grad(x, y)
    assert_close((value, grads.params), eager_value_and_grads(scale_log_prob, ["scale"], x, y))


def test_value_dependent_structure_is_guarded_on_every_tier(policy, fx_for_inductor):
    def branchy(x):
        if x.sum() > 0:
            return (x * pyro.param("w", torch.tensor(2.0))).sum()
        return (x - 1).sum()

    policy(warm=1, hot=3)
    compiled = lazyjit.trace(branchy)
    pos, neg = torch.ones(3), -torch.ones(3)
    tiers = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        for _ in range(3):
            for x, expected in ((pos, 6.0), (neg, -6.0)):
                value, _ = compiled.value_and_grad(x)
                assert_close(value, torch.tensor(expected))
                tiers.add(program_of(compiled).lanes["value_and_grad"].tier)
    assert tiers == {"eager", "aten-jit", "inductor"}
    (entry,) = compiled.entries
    assert compiled.stats.guarded == 1 and len(entry.programs) == 2  # one for each side
    assert compiled.stats.fallbacks == 0


def test_elbo_with_auto_matches_pyro_across_the_switch(hot_after, fx_for_inductor):
    hot_after(3)
    data = gaussian_data(50)
    guide = AutoDiagonalNormal(gaussian_model)
    guide(data)
    lazy = lazyjit.JitTrace_ELBO()
    lazy.loss_and_grads(gaussian_model, guide, data)  # compiles
    for step in range(6):  # hot at the program's third call; inductor from the fifth
        if step == 4:
            assert program_of(lazy.compiled_fn).lanes["value_and_grad"].tier == "inductor"
        assert_elbo_step_matches_pyro(lazy, guide, data, seed=step)


# Inductor for real. One case in the default run: the background compile must leave the
# caller's random stream alone (inductor saves and restores the global RNG state).
def test_background_inductor_compile(policy):
    policy(hot=2, switch=None)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(10)
    compiled.value_and_grad(x)
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
    compiled.value_and_grad(x)
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
    for _ in range(4):
        lazy.loss_and_grads(gaussian_model, guide, data)
    assert program_of(lazy.compiled_fn).lanes["value_and_grad"].tier == "inductor"
    for seed in range(3):
        assert_elbo_step_matches_pyro(lazy, guide, data, seed=seed)


@SLOW
def test_differentiable_call_with_inductor_training_compile(hot_after):
    hot_after(1)
    compiled = lazyjit.trace(noisy_log_prob)
    x = torch.randn(10)
    compiled(x)
    compiled(x)  # hot: compiles before it returns
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
    # NUTS's steps run in compiled leaves (lazyjit.mcmc.CompiledLeaf), each a call.
    assert program_of(kernel._leaf.compiled).lanes["call"].tier == "inductor"
    samples = mcmc.get_samples()
    assert abs(samples["loc"].mean() - data.mean()) < 0.5
    assert abs(samples["scale"].mean() - data.std()) < 0.5


def test_differentiable_plain_calls_run_the_captured_graph_once_warm(policy):
    """``.backward()`` on the output of a plain call (MiniPyro's SVI, ``differentiable_loss``):
    the warm tier is the graph traced with its backward, long before any inductor compile."""
    policy(warm=1)
    compiled = lazyjit.trace(scale_log_prob)
    x, y = torch.randn(5), torch.randn(5)
    for _ in range(3):
        out = compiled(x, y)
    assert program_of(compiled).lanes["call"].tier == "aten-jit"
    expected, expected_grads = eager_value_and_grads(scale_log_prob, ["scale"], x, y)
    assert_close(out.detach(), expected)
    scale = pyro.param("scale").unconstrained()
    assert_close(torch.autograd.grad(out, scale)[0], expected_grads["scale"])


def test_a_capture_meets_no_cached_result_of_the_call_before(policy):
    """A torch Transform with a cache (Pyro's HaarReparam keeps one across calls) would
    hand a capture made on the very tensors of the call before that call's result, whose
    autograd graph is gone: captures run on copies of the call's tensors."""
    exp = torch.distributions.transforms.ExpTransform(cache_size=1)

    def fn(x):
        return (exp(x) * pyro.param("w", torch.tensor(2.0))).sum()

    policy(warm=1)
    compiled = lazyjit.trace(fn)
    for _ in range(3):  # fresh tensors at each call, as a sampler passes them
        x = torch.randn(4, requires_grad=True)
        value, grads = compiled.value_and_grad(x)
    assert program_of(compiled).lanes["value_and_grad"].tier == "aten-jit"
    assert_close(value, fn(x).detach())
    assert_close(grads.leaves[0], 2.0 * x.detach().exp())
