"""The graph-capture backends: ``"aten"`` (make_fx, run as FX code) and ``"inductor"``.

Every case compares a compiled function with the same Python run eagerly, values and
gradients, from the same seed where it draws random numbers. Inductor compiles cost
seconds each, so all but two inductor cases are marked ``slow``.
"""

import functools
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from test_trace import Regression  # params a module reads from itself
from torch.distributions import constraints

import lazyjit
import lazyjit.backends.aten_jit
import lazyjit.graph.capture
from lazyjit import LazyJitError, LazyJitWarning, examples
from lazyjit.backends import GraphProgram
from lazyjit.examples import gaussian_data, gaussian_model, scale_log_prob

SLOW = pytest.mark.slow
GRAPH_BACKENDS = ["aten", "aten-jit", pytest.param("inductor", marks=SLOW)]


def assert_close(actual, expected, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def eager_value_and_grads(fn, names, *args):
    """``fn(*args)`` and its gradients w.r.t. the unconstrained params ``names``."""
    value = fn(*args)
    params = [pyro.param(n).unconstrained() for n in names]
    return value.detach(), dict(zip(names, torch.autograd.grad(value, params)))


def program_of(compiled):
    (program,) = compiled.compiled.values()
    return program


def assert_matches_eager(compiled, fn, *args, seed=None):
    """``compiled.value_and_grad`` and ``compiled(...).backward`` against eager Pyro."""
    if seed is not None:
        torch.manual_seed(seed)
    value, grads = compiled.value_and_grad(*args)
    if seed is not None:
        torch.manual_seed(seed)
    expected, expected_grads = eager_value_and_grads(fn, list(grads.params), *args)
    assert_close(value, expected)
    assert_close(grads.params, expected_grads)
    if seed is not None:
        torch.manual_seed(seed)
    out = compiled(*args)
    assert out.requires_grad
    names = list(grads.params)
    params = [pyro.param(n).unconstrained() for n in names]
    assert_close(out.detach(), expected)
    assert_close(dict(zip(names, torch.autograd.grad(out, params))), expected_grads)


def perturb_params():
    with torch.no_grad():
        for name in pyro.get_param_store().keys():
            p = pyro.param(name).unconstrained()
            p.add_(0.1 * torch.randn_like(p))


# The log-prob example.
@pytest.mark.parametrize("backend", ["aten", "inductor"])
def test_log_prob_example(backend):
    compiled = lazyjit.trace(scale_log_prob, backend=backend)
    x, y = torch.randn(100), torch.randn(100)
    for _ in range(3):
        value, grads = compiled.value_and_grad(x, y)
        expected, expected_grads = eager_value_and_grads(scale_log_prob, ["scale"], x, y)
        assert_close(value, expected)
        assert_close(grads.params, expected_grads)
        assert not value.requires_grad and not grads.params["scale"].requires_grad
        perturb_params()  # the graph reads current params, nothing is baked in
    program = program_of(compiled)
    assert isinstance(program, GraphProgram) and len(program.grad_graph_modules) == 1
    assert pyro.param("scale").unconstrained().grad is None  # nothing accumulated
    assert compiled.stats.fallbacks == 0


@pytest.mark.parametrize("backend", ["aten", "inductor"])
def test_a_strided_argument_gets_its_own_entry(backend):
    # Inductor compiles for the strides it saw: a view with the same shape and other
    # strides once failed its size asserts instead of compiling again.
    compiled = lazyjit.trace(scale_log_prob, backend=backend)
    x, y = torch.randn(100), torch.randn(100)
    compiled.value_and_grad(x, y)
    strided_y = torch.randn(100, 2)[:, 0].copy_(y)
    value, grads = compiled.value_and_grad(x, strided_y)
    expected, expected_grads = eager_value_and_grads(scale_log_prob, ["scale"], x, y)
    assert_close(value, expected)
    assert_close(grads.params, expected_grads)
    assert len(compiled.compiled) == 2


def test_inductor_code_runs_without_aot_wrappers_only_where_they_do_nothing():
    """A value-and-grad graph runs inductor's code directly, unless aot_autograd's
    runtime wrappers have work to do (here: an output that is an input)."""

    def fn(x, y):
        scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
        return dist.Normal(x, scale).log_prob(y).sum(), y

    def runner_name(compiled):
        (runner,) = program_of(compiled)._grad_runners.values()
        return runner.__qualname__

    x, y = torch.randn(5), torch.randn(5)
    for args in [(x, y), (y, y)]:  # an input passed twice runs directly too
        plain = lazyjit.trace(scale_log_prob, backend="inductor")
        plain.value_and_grad(*args)  # the first call runs eagerly
        assert_matches_eager(plain, scale_log_prob, *args)
        assert runner_name(plain) == "_direct_runner.<locals>.direct"
    compiled = lazyjit.trace(fn, backend="inductor")
    compiled.value_and_grad(x, y)
    (value, out_y), grads = compiled.value_and_grad(x, y)
    expected, expected_grads = eager_value_and_grads(lambda *a: fn(*a)[0], ["scale"], x, y)
    assert_close(value, expected)
    assert_close(grads.params, expected_grads)
    assert out_y is y
    assert "direct" not in runner_name(compiled)


def test_aten_graph_is_fx_code_with_gradients_inside():
    compiled = lazyjit.trace(scale_log_prob, backend="aten")
    x, y = torch.randn(10), torch.randn(10)
    for _ in range(2):  # the first call runs eagerly
        compiled.value_and_grad(x, y)
    program = program_of(compiled)
    assert "torch.ops.aten." in program.graph_module.code
    assert "lift_fresh_copy" not in program.graph_module.code  # dead code is gone
    ((wrt, grad_graph),) = program.grad_graph_modules.items()
    assert wrt == (0,)
    # Output 0 and its gradient: both come out of one graph...
    assert len(grad_graph.graph.output_node().args[0]) == 2
    # ...so calling it again runs no autograd at all.
    grad = torch.autograd.grad
    try:
        torch.autograd.grad = None
        value, grads = compiled.value_and_grad(x, y)
    finally:
        torch.autograd.grad = grad
    assert_close(grads.params, eager_value_and_grads(scale_log_prob, ["scale"], x, y)[1])


def test_value_and_grad_wrt_arguments():
    def fn(z, w):
        loc = pyro.param("loc", torch.zeros(3))
        return -dist.Normal(loc, 2.0).log_prob(z).sum() + (w**2).sum()

    compiled = lazyjit.trace(fn, backend="aten")
    z, w = torch.randn(3, requires_grad=True), torch.randn(2)
    value, grads = compiled.value_and_grad(z, w)
    expected = fn(z, w)
    gz, gloc = torch.autograd.grad(expected, [z, pyro.param("loc").unconstrained()])
    assert_close(value, expected.detach())
    assert_close(grads.args[0], gz)
    assert grads.args[1] is None
    assert_close(grads.params["loc"], gloc)


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_pyro_module_regression(backend):
    reg = Regression()
    x, y = torch.randn(20, 3), torch.randn(20)

    def log_prob(x, y):
        return poutine.trace(reg).get_trace(x, y).log_prob_sum()

    compiled = lazyjit.trace(log_prob, backend=backend)
    for _ in range(2):
        assert_matches_eager(compiled, log_prob, x, y)
        perturb_params()
    assert sorted(pyro.get_param_store().keys()) == ["linear.bias", "linear.weight", "noise"]
    assert compiled.stats.compilations == 1 and compiled.stats.fallbacks == 0


def test_pyro_module_primitive():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))

    def log_prob(x, y):
        mean = pyro.module("net", net)(x).squeeze(-1)
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        return dist.Normal(mean, scale).log_prob(y).sum()

    compiled = lazyjit.trace(log_prob, backend="aten")
    x, y = torch.randn(8, 3), torch.randn(8)
    for _ in range(2):
        assert_matches_eager(compiled, log_prob, x, y)
        perturb_params()
    assert len(pyro.get_param_store()) == 5


# An ELBO written by hand from traces, with an autoguide's random draws inside the graph.
def make_elbo(guide):
    def elbo(data):
        guide_tr = poutine.trace(guide).get_trace(data)
        model_tr = poutine.trace(poutine.replay(gaussian_model, trace=guide_tr)).get_trace(data)
        return guide_tr.log_prob_sum() - model_tr.log_prob_sum()

    return elbo


@pytest.mark.parametrize("guide_class", [AutoNormal, AutoDiagonalNormal])
@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_autoguide_elbo(backend, guide_class):
    data = gaussian_data(100)
    elbo = make_elbo(guide_class(gaussian_model))
    compiled = lazyjit.trace(elbo, backend=backend)
    compiled.value_and_grad(data)  # captures; later calls draw like eager from a seed
    for seed in range(3):
        assert_matches_eager(compiled, elbo, data, seed=seed)
        perturb_params()
    assert compiled.stats.fallbacks == 0


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_jit_trace_elbo_matches_pyro(backend):
    data = gaussian_data(100)
    guide = AutoDiagonalNormal(gaussian_model)
    compiled_elbo = lazyjit.JitTrace_ELBO(backend=backend)
    compiled_elbo.loss_and_grads(gaussian_model, guide, data)  # compiles
    results = []
    for elbo in [compiled_elbo, Trace_ELBO()]:
        for p in guide.parameters():
            p.grad = None
        torch.manual_seed(7)
        loss = elbo.loss_and_grads(gaussian_model, guide, data)
        results.append((loss, {n: p.grad.clone() for n, p in guide.named_parameters()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert_close(results[0][1], results[1][1])


def test_enumerated_hmm_takes_pyros_trace_safe_paths():
    """TraceEnum_ELBO branches on `mask.all()` unless it sees a tracer: the capture must
    show it one (and only while capturing)."""
    tracing_state = torch._C._get_tracing_state
    sequence = torch.randn(5)
    model = functools.partial(examples.hmm_model, num_sequences=4, length=5, state_dim=3)
    guide = AutoDiagonalNormal(poutine.block(model, expose=examples.HMM_LATENTS))
    compiled_elbo = lazyjit.JitTraceEnum_ELBO(max_plate_nesting=1, backend="aten", strict=True)
    compiled_elbo.loss_and_grads(model, guide, sequence)
    assert torch._C._get_tracing_state is tracing_state
    assert torch._C._get_tracing_state() is None
    results = []
    for elbo in [compiled_elbo, TraceEnum_ELBO(max_plate_nesting=1)]:
        for p in guide.parameters():
            p.grad = None
        torch.manual_seed(3)
        loss = elbo.loss_and_grads(model, guide, sequence)
        results.append((loss, {n: p.grad.clone() for n, p in guide.named_parameters()}))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert_close(results[0][1], results[1][1])


# Random draws are ops in the graph: drawn anew on every call, the same as eager's.
def noisy(x):
    loc = pyro.param("loc", torch.zeros(()))
    z = pyro.sample("z", dist.Normal(loc, 1.0).expand(x.shape).to_event(1))
    u = dist.Uniform(0.0, 1.0).rsample(x.shape)
    b = pyro.sample("b", dist.Bernoulli(0.3).expand(x.shape).to_event(1))
    dist.Normal(0.0, 1.0).sample()  # unused, but it advances the random stream
    return (z * x + u - b).sum(), z


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_random_draws_follow_the_seed(backend):
    compiled = lazyjit.trace(noisy, backend=backend, verify=2)  # verify: against eager
    x = torch.randn(50)
    compiled(x)
    first, second = compiled(x)[1], compiled(x)[1]
    assert not torch.equal(first, second)
    for seed in range(2):
        torch.manual_seed(seed)
        actual = compiled(x)
        after_compiled = torch.rand(())
        torch.manual_seed(seed)
        expected = noisy(x)
        assert_close(actual, expected)
        assert after_compiled == torch.rand(())  # the same draws were consumed
        value, grads = compiled.value_and_grad(x)
        assert_close(grads.params["loc"], x.sum().reshape(()))


def test_capture_does_not_advance_the_random_stream():
    compiled = lazyjit.trace(noisy, backend="aten")
    x = torch.randn(5)
    compiled(x)
    torch.manual_seed(0)
    compiled.value_and_grad(x)  # captures the value-and-grad graph, then runs it
    after = torch.rand(())
    torch.manual_seed(0)
    compiled.value_and_grad(x)
    assert after == torch.rand(())


NAN = float("nan")


# Structure that depends on tensor values.
def branchy(x):
    if x.sum() > 0:
        return x * pyro.param("w", torch.tensor(2.0))
    return x - 1


@pytest.mark.parametrize("backend", ["torchscript", "aten", "aten-jit"])
def test_data_dependent_branch_is_guarded(backend):
    compiled = lazyjit.trace(branchy, backend=backend)
    pos, neg = torch.ones(3), -3 * torch.ones(3)
    assert_close(compiled(pos), pos * 2)
    assert_close(compiled(neg), neg - 1)
    assert (compiled.stats.fallbacks, compiled.stats.guarded) == (0, 1)


def test_data_dependent_branch_strict_raises():
    compiled = lazyjit.trace(branchy, backend="aten", strict=True)
    with pytest.raises(LazyJitError, match="depends on tensor values"):
        compiled(torch.ones(3))


@pytest.mark.parametrize("backend", ["torchscript", "aten", "aten-jit"])
def test_item_is_guarded(backend):
    compiled = lazyjit.trace(lambda x: x * x.max().item(), backend=backend)
    assert_close(compiled(torch.arange(3.0)), torch.arange(3.0) * 2)
    assert_close(compiled(torch.arange(4.0)), torch.arange(4.0) * 3)
    assert_close(compiled(torch.tensor([5.0, 0.0, 1.0])), torch.tensor([25.0, 0.0, 5.0]))
    assert_close(compiled(torch.tensor([2.0, 0.0, 1.0])), torch.tensor([4.0, 0.0, 2.0]))
    stats = compiled.stats
    assert (stats.guarded, stats.fallbacks, stats.compilations) == (2, 0, 3)


def categorical_pick(locs, as_tuple):
    i = pyro.sample("i", dist.Categorical(torch.ones(3) / 3))
    loc = locs[(i,)] if as_tuple else locs[i]
    return dist.Normal(loc, 1.0).log_prob(torch.tensor(0.5))


@pytest.mark.parametrize("backend", ["torchscript", "aten", "aten-jit"])
@pytest.mark.parametrize("as_tuple", [False, True])
def test_indexing_with_a_sampled_integer(backend, as_tuple):
    """``locs[i]`` for a sampled 0-dim integer tensor ``i`` becomes an index op of the
    graph; ``locs[(i,)]`` reads ``i`` inside torch's indexing, where no Python
    conversion sees it: the capture guards that read (a specialization per value)."""
    compiled = lazyjit.trace(categorical_pick, backend=backend)
    locs = torch.tensor([0.0, 1.0, 2.0])
    for seed in range(12):
        torch.manual_seed(seed)
        actual = compiled(locs, as_tuple)
        torch.manual_seed(seed)
        assert_close(actual, categorical_pick(locs, as_tuple))
    (entry,) = compiled.entries
    specialized = as_tuple and backend != "torchscript"  # the tracer records an index op
    assert len(entry.programs) == (3 if specialized else 1)
    assert compiled.stats.fallbacks == 0


def count_above(data, loc):
    above = data[data > loc]
    scale = 1.0 if above.shape[0] > 2 else 3.0  # a shape the data chose, read by Python
    return (above * scale).sum()


@pytest.mark.parametrize("backend", ["aten", "aten-jit"])
def test_a_shape_the_data_chose_is_guarded(backend):
    compiled = lazyjit.trace(count_above, backend=backend)
    data = torch.linspace(-2.0, 2.0, 5)
    for loc in [0.0, -1.5, 1.5, 0.0, 1.5, -1.5]:
        loc = torch.tensor(loc)
        assert_close(compiled(data, loc), count_above(data, loc))
    assert compiled.stats.guarded == 1 and compiled.stats.fallbacks == 0


@pytest.mark.parametrize("backend", ["torchscript", "aten", "aten-jit", "auto"])
@pytest.mark.parametrize("read", ["tolist", "numpy"])
def test_whole_tensors_read_as_python_values_are_guarded(backend, read):
    def fn(x):
        values = x.tolist() if read == "tolist" else np.asarray(x).tolist()
        return x * sum(v for v in values if v == v)  # NaN left out

    compiled = lazyjit.trace(fn, backend=backend)
    for values in [[1.0, 2.0], [1.0, 2.0], [3.0, 2.0], [1.0, 2.0], [NAN, 2.0], [NAN, 2.0]]:
        x = torch.tensor(values)
        torch.testing.assert_close(compiled(x), fn(x), equal_nan=True)
    assert compiled.stats.fallbacks == 0


def test_static_shape_reads_compile():
    def f(x):
        n = int(x.shape[0])  # a shape, part of the cache key: static
        return x.sum() / n

    compiled = lazyjit.trace(f, backend="aten")
    assert_close(compiled(torch.ones(4)), torch.tensor(1.0))
    assert compiled.stats.fallbacks == 0


# Pyro's two xfailed jit tests, "grad cannot appear in jitted code".
def squared_distance_grads(x, y):
    loss = (x - y).pow(2).sum()
    return torch.autograd.grad(loss, [x, y], allow_unused=True)


@pytest.mark.parametrize("y_shape", [(2,), (1,)], ids=["grad", "grad_expand"])
@pytest.mark.parametrize("backend", ["aten", pytest.param("inductor", marks=SLOW)])
def test_grad_inside_compiled_function(backend, y_shape):
    compiled = lazyjit.trace(squared_distance_grads, backend=backend)
    for fill in [1.0, 0.0, -2.0]:
        x = torch.randn(2, requires_grad=True)
        y = torch.full(y_shape, fill, requires_grad=True)
        actual = compiled(x, y)
        expected = squared_distance_grads(x, y)
        assert_close([a.detach() for a in actual], list(expected))
    assert compiled.stats.compilations == 1 and compiled.stats.fallbacks == 0


# A graph records ops, not the grad mode they ran in: what eager did not differentiate,
# a plain call of the compiled function must not differentiate either.
def stop_gradients(x):
    w = pyro.param("w", torch.ones(3))
    with torch.no_grad():
        target = w * 2
    noise = dist.Normal(w, 1.0).sample()  # sample(), not rsample(): no gradient
    return ((w - target) ** 2).sum() + (noise * x).sum()


@pytest.mark.parametrize("backend", GRAPH_BACKENDS)
def test_no_grad_regions_stay_without_gradient(backend):
    compiled = lazyjit.trace(stop_gradients, backend=backend)
    x = torch.randn(3)
    compiled(x)
    for seed in range(2):
        assert_matches_eager(compiled, stop_gradients, x, seed=seed)
        perturb_params()


# A custom autograd.Function's backward is Python code: no aten graph can hold it.
def dirichlet_draw(x):
    concentration = pyro.param("concentration", torch.ones(3), constraint=constraints.positive)
    z = pyro.sample("z", dist.Dirichlet(concentration))
    return (z * x).sum()


def test_custom_autograd_function():
    compiled = lazyjit.trace(dirichlet_draw, backend="aten")
    x = torch.randn(3)
    compiled(x)  # the first call runs eagerly
    with pytest.warns(LazyJitWarning, match="_Dirichlet"):
        compiled(x)  # differentiable: runs eagerly, with the Function's own backward
    for seed in range(2):
        assert_matches_eager(compiled, dirichlet_draw, x, seed=seed)
    assert program_of(compiled).grad_graph_modules  # value_and_grad stayed compiled
    with torch.no_grad():
        compiled(x)  # compiles the no-grad entry
        torch.manual_seed(0)
        actual = compiled(x)
        torch.manual_seed(0)
        assert_close(actual, dirichlet_draw(x))


# Degrade, never break.
def test_works_without_torchscript(monkeypatch):
    def no_torchscript(*args, **kwargs):
        raise RuntimeError("torch.jit is gone")

    monkeypatch.setattr(torch.jit, "trace", no_torchscript)
    monkeypatch.setattr(torch._C, "_create_graph_by_tracing", no_torchscript)
    monkeypatch.setattr(torch.jit, "script", no_torchscript)
    reg = Regression()
    x, y = torch.randn(6, 3), torch.randn(6)

    def log_prob(x, y):
        return poutine.trace(reg).get_trace(x, y).log_prob_sum()

    compiled = lazyjit.trace(log_prob, backend="aten")
    assert_matches_eager(compiled, log_prob, x, y)
    assert compiled.stats.fallbacks == 0


def test_failed_gradient_capture_uses_autograd(monkeypatch):
    compiled = lazyjit.trace(scale_log_prob, backend="aten")
    x, y = torch.randn(5), torch.randn(5)
    compiled(x, y)

    def broken(*args, **kwargs):
        raise RuntimeError("no capture today")

    monkeypatch.setattr(lazyjit.graph.capture, "value_and_grad_of", broken)
    with pytest.warns(LazyJitWarning, match="no capture today"):
        value, grads = compiled.value_and_grad(x, y)
    expected, expected_grads = eager_value_and_grads(scale_log_prob, ["scale"], x, y)
    assert_close(value, expected)
    assert_close(grads.params, expected_grads)


@pytest.mark.parametrize("backend", ["inductor", "aten-jit"])
def test_failed_graph_compile_runs_fx_code(monkeypatch, backend):
    import torch._inductor.compile_fx

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler today")

    if backend == "inductor":
        monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", broken)
    else:  # TorchScript's tracer
        monkeypatch.setattr(lazyjit.backends.aten_jit, "jit_trace", broken)
    compiled = lazyjit.trace(scale_log_prob, backend=backend)
    x, y = torch.randn(5), torch.randn(5)
    with pytest.warns(LazyJitWarning, match="failed to compile .* no compiler today"):
        assert_matches_eager(compiled, scale_log_prob, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per program
        assert_matches_eager(compiled, scale_log_prob, x, y)


def test_captured_graphs_are_traced_without_value_names(monkeypatch):
    """TorchScript names each traced value by scanning the locals of the frame that made
    it: quadratic in a captured graph's FX code, whose locals are its nodes."""
    import torch.jit._trace

    def named(*args, **kwargs):
        raise AssertionError("the tracer looked up value names")

    monkeypatch.setattr(torch.jit._trace, "_create_interpreter_name_lookup_fn", named)
    compiled = lazyjit.trace(scale_log_prob, backend="aten-jit")
    x, y = torch.randn(5), torch.randn(5)
    assert_matches_eager(compiled, scale_log_prob, x, y)
    with pytest.warns(LazyJitWarning, match="value names"):  # TorchScript's own traces do
        lazyjit.trace(scale_log_prob, backend="torchscript")(x, y)


def test_traced_graphs_take_number_operands_as_tensors_of_their_dtype():
    """TorchScript keeps a Python number operand as a double tensor, converted at every
    call; a tensor of the other operand's dtype gives the same bits without the copy."""
    from lazyjit.backends.aten_jit import script_graph
    from lazyjit.graph.capture import capture

    def fn(x, n):
        aten = torch.ops.aten
        return (
            (x * 0.1 - 3).div(7) > 0.2,
            (n + 0.5) * 2,
            x.sub(1, alpha=0.3),
            aten.rsub.Scalar(x, 2.0),
            aten.sub.Scalar(x, 1, 0.5),  # a positional alpha: kept as it is
        )

    x, n = torch.randn(10), torch.arange(10)
    graph_module, _ = capture(fn, [x, n])
    script = script_graph(graph_module, [x, n], grad=False)
    constants = [
        node.output().type().scalarType()
        for node in script.graph.nodes()
        if node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType"
    ]
    # An integer tensor's number operand stays as the tracer made it: it promotes.
    assert sorted(constants) == ["Double"] + ["Float"] * 7
    x, n = torch.randn(10), torch.arange(10)
    for got, want in zip(script(x, n), fn(x, n)):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_torchscript_optimizes_only_graphs_up_to_its_node_limit():
    """The executor's optimization grows faster than the graph and no longer pays for a
    big one: a bigger graph runs unoptimized, with the same results."""
    x, y = torch.randn(5), torch.randn(5)
    optimized = []
    for limit in (10_000, 10):
        backend = lazyjit.backends.TorchScriptBackend(max_optimized_nodes=limit)
        compiled = lazyjit.trace(scale_log_prob, backend=backend)
        for _ in range(3):  # past the executor's profiling and optimizing calls
            assert_matches_eager(compiled, scale_log_prob, x, y)
        program = program_of(compiled)
        optimized.append(program.optimize)
        assert 10 < sum(1 for _ in program.script.graph.nodes()) < 10_000
    assert optimized == [True, False]
    assert lazyjit.BACKENDS["torchscript"].max_optimized_nodes == 15000


def test_captured_graphs_are_traced_from_a_small_loop():
    """The tracer looks up the Python line of every op it records, in time linear in its
    function's code: over a graph's generated forward (a line per node) that is quadratic
    in the graph. No traced op may come from the generated code."""
    compiled = lazyjit.trace(scale_log_prob, backend="aten-jit")
    x, y = torch.randn(5), torch.randn(5)
    assert_matches_eager(compiled, scale_log_prob, x, y)
    compiled.value_and_grad(x, y)
    program = program_of(compiled)
    runners = [program._forward, *program._grad_runners.values()]
    for runner in runners:
        ranges = [node.sourceRange() for node in runner.graph.nodes()]
        assert any("torch/fx/interpreter.py" in r for r in ranges)
        assert not any("eval_with_key" in r for r in ranges)


def test_no_grad_call_and_value_and_grad_entries():
    compiled = lazyjit.trace(scale_log_prob, backend="aten")
    x, y = torch.randn(5), torch.randn(5)
    with torch.no_grad():
        out = compiled(x, y)
        value, grads = compiled.value_and_grad(x, y)  # gradients even under no_grad
    assert not out.requires_grad
    expected, expected_grads = eager_value_and_grads(scale_log_prob, ["scale"], x, y)
    assert_close(out, expected)
    assert_close(grads.params, expected_grads)
