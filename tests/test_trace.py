"""lazyjit.trace: parity with pyro.ops.jit.trace, and the defects of the original fixed.

Tests parametrized with ``impl`` run on both; the ones that show a defect of Pyro's jit
are marked ``xfail(strict=True)`` for Pyro, so they keep proving the defect exists.
"""

import argparse
import contextlib
import gc
import pickle
import threading
import warnings
import weakref

import pyro
import pyro.distributions as dist
import pyro.ops.jit
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

import lazyjit
import lazyjit.config
from lazyjit import LazyJitError, LazyJitWarning, StructureWarning
from lazyjit.backends import Program

BACKENDS = ["torchscript", "eager", "aten"]
PYRO_DEFECT = pytest.mark.xfail(strict=True, reason="defect of pyro.ops.jit.trace")


def lazy(backend):
    return lambda fn=None, **kw: lazyjit.trace(fn, backend=backend, **kw)


IMPLS = [pytest.param(pyro.ops.jit.trace, id="pyro")] + [
    pytest.param(lazy(b), id=f"lazyjit-{b}") for b in BACKENDS
]


def pyro_fails(impls=IMPLS):
    """The same implementations, with Pyro's expected to fail."""
    return [
        pytest.param(*p.values, id=p.id, marks=PYRO_DEFECT) if p.id == "pyro" else p for p in impls
    ]


# The seed's log-prob example.
def model(x):
    scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
    return pyro.sample("y", dist.Normal(x, scale))


def model_log_prob_fn(x, y):
    cond_model = pyro.condition(model, data={"y": y})
    tr = poutine.trace(cond_model).get_trace(x)
    return tr.log_prob_sum()


def grads_of(value, names):
    params = [pyro.param(n).unconstrained() for n in names]
    return torch.autograd.grad(value, params)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", IMPLS)
def test_log_prob_example_matches_eager(impl):
    compiled = impl(model_log_prob_fn)
    for _ in range(3):
        x, y = torch.randn(7), torch.randn(7)
        expected = model_log_prob_fn(x, y)
        actual = compiled(x, y)
        assert_close(actual, expected)
        assert_close(grads_of(actual, ["scale"]), grads_of(expected, ["scale"]))
        # Compiled code must read the param's current value, not a value baked in.
        with torch.no_grad():
            pyro.param("scale").unconstrained().add_(0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_and_grad_matches_autograd(backend):
    compiled = lazyjit.trace(model_log_prob_fn, backend=backend)
    x, y = torch.randn(5), torch.randn(5)
    for _ in range(3):
        value, grads = compiled.value_and_grad(x, y)
        expected = model_log_prob_fn(x, y)
        assert_close(value, expected.detach())
        assert set(grads.params) == {"scale"}
        assert_close(grads.params["scale"], grads_of(expected, ["scale"])[0])
        assert grads.args == (None, None) and grads.kwargs == {}
        assert pyro.param("scale").unconstrained().grad is None  # nothing accumulated
        with torch.no_grad():
            pyro.param("scale").unconstrained().mul_(0.5)


def test_program_gradients_come_from_the_engine_directly(monkeypatch):
    # Program.value_and_grad skips torch.autograd.grad's Python wrapper (a tenth of a
    # compiled SVI step); the gradients must still be autograd's, zeros where unused.
    def fn(x, y, unused):
        return (x.sin() * y.exp()).sum(), x * 2

    x, y, unused = (torch.randn(3, requires_grad=True) for _ in range(3))
    expected = torch.autograd.grad(fn(x, y, unused)[0], [x, y])

    def wrapper_called(*args, **kwargs):
        raise AssertionError("the fast path went through torch.autograd.grad")

    monkeypatch.setattr(torch.autograd, "grad", wrapper_called)
    program = Program(fn)
    for mode in (torch.enable_grad, torch.no_grad):
        with mode():
            outputs, grads = program.value_and_grad([x, y, unused], [0, 1, 2])
        assert_close(grads[:2], list(expected))
        assert torch.equal(grads[2], torch.zeros(3))
        assert not any(o.requires_grad for o in outputs)
    # An input that does not require grad is differentiated all the same.
    _, grads = program.value_and_grad([x.detach(), y, unused], [0])
    assert_close(grads[0], expected[0])
    monkeypatch.undo()
    # A non-scalar output goes to torch.autograd.grad, which says what is wrong.
    with pytest.raises(RuntimeError, match="scalar outputs"):
        Program(lambda x: (x * 2,)).value_and_grad([x], [0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_and_grad_wrt_arguments(backend):
    def fn(z, scale=1.0):
        loc = pyro.param("loc", torch.zeros(3))
        return -dist.Normal(loc, scale).log_prob(z["a"]).sum() + (z["b"] ** 2).sum()

    compiled = lazyjit.trace(fn, backend=backend)
    a = torch.randn(3, requires_grad=True)
    b = torch.randn(2)
    value, grads = compiled.value_and_grad({"a": a, "b": b}, scale=2.0)
    expected = fn({"a": a, "b": b}, scale=2.0)
    ga, gloc = torch.autograd.grad(expected, [a, pyro.param("loc").unconstrained()])
    assert_close(value, expected.detach())
    assert_close(grads.args[0]["a"], ga)
    assert grads.args[0]["b"] is None
    assert_close(grads.params["loc"], gloc)


@pytest.mark.parametrize("impl", IMPLS)
def test_decorator_forms(impl):
    @impl
    def f(x):
        return x * pyro.param("w", torch.ones(()))

    @impl(ignore_warnings=True)
    def g(x):
        return x + pyro.param("w", torch.ones(()))

    x = torch.randn(3)
    assert_close(f(x), x)
    assert_close(g(x), x + 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_varying_number_of_args(impl):
    @impl
    def f(*args):
        w = pyro.param("w", torch.tensor(2.0))
        return w * sum(a.sum() for a in args)

    for n in range(1, 4):
        args = [torch.randn(3) for _ in range(n)]
        assert_close(f(*args), 2.0 * sum(a.sum() for a in args))


@pytest.mark.parametrize("impl", IMPLS)
def test_varying_kwargs_select_entries(impl):
    @impl
    def f(x, power=1, names=("a",)):
        w = pyro.param("w", torch.tensor(1.5))
        return (w * x**power).sum() + len(names)

    x = torch.randn(4)
    for power in [1, 2, 3, 2, 1]:
        for names in [("a",), ("a", "b")]:
            assert_close(f(x, power=power, names=names), (1.5 * x**power).sum() + len(names))


@pytest.mark.parametrize("impl", IMPLS)
def test_unhashable_kwargs(impl):
    @impl
    def f(x, opts=None):
        return x * opts["scale"][0] + len(opts["tags"])

    x = torch.randn(3)
    for scale in [1.0, 2.0]:
        opts = {"scale": [scale], "tags": {"u", "v"}, "ns": argparse.Namespace(a=1)}
        assert_close(f(x, opts=opts), x * scale + 2)


class Regression(PyroModule):
    def __init__(self):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](3, 1)
        self.noise = PyroParam(torch.tensor(0.7), constraint=constraints.positive)

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(mean, self.noise), obs=y)


@pytest.mark.parametrize("impl", IMPLS)
def test_pyro_module_params_get_gradients(impl):
    reg = Regression()
    x, y = torch.randn(10, 3), torch.randn(10)

    def log_prob(x, y):
        return poutine.trace(reg).get_trace(x, y).log_prob_sum()

    compiled = impl(log_prob)
    compiled(x, y)
    names = sorted(pyro.get_param_store().keys())
    assert names == ["linear.bias", "linear.weight", "noise"]
    for _ in range(2):
        actual, expected = compiled(x, y), log_prob(x, y)
        assert_close(actual, expected)
        assert_close(grads_of(actual, names), grads_of(expected, names))
        with torch.no_grad():
            for n in names:
                pyro.param(n).unconstrained().add_(0.1)


@pytest.mark.parametrize("impl", IMPLS)
def test_guide_with_constrained_params(impl):
    def guide(x):
        loc = pyro.param("loc", torch.zeros(2))
        scale = pyro.param("scale", torch.ones(2), constraint=constraints.positive)
        probs = pyro.param("probs", torch.ones(3) / 3, constraint=constraints.simplex)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        pyro.sample("c", dist.Categorical(probs), obs=torch.tensor(1))

    def guide_log_prob(x, z):
        tr = poutine.trace(pyro.condition(guide, data={"z": z})).get_trace(x)
        return tr.log_prob_sum()

    compiled = impl(guide_log_prob)
    names = ["loc", "scale", "probs"]
    for _ in range(3):
        x, z = torch.randn(2), torch.randn(2)
        actual, expected = compiled(x, z), guide_log_prob(x, z)
        assert_close(actual, expected)
        assert_close(grads_of(actual, names), grads_of(expected, names))
        with torch.no_grad():
            for n in names:
                pyro.param(n).unconstrained().add_(
                    0.2 * torch.randn_like(pyro.param(n).unconstrained())
                )


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_visible_to_outer_param_capture(backend):
    """SVI.step finds the params to optimise by tracing pyro.param statements."""
    compiled = lazyjit.trace(model_log_prob_fn, backend=backend)
    for _ in range(2):
        with poutine.trace(param_only=True) as tr:
            compiled(torch.randn(3), torch.randn(3))
        assert set(tr.trace.nodes) == {"scale"}


@pytest.mark.parametrize("outer", ["alone", "under another handler"])
def test_announced_params_are_recorded_as_pyro_records_them(outer):
    """A trace alone (an SVI step) records the params without Pyro's message passing;
    its sites must be the ones Pyro's own statements would leave."""

    def fn(x):
        loc = pyro.param("loc", torch.tensor(0.3))
        scale = pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)
        weight = pyro.param("weight", torch.tensor(0.2), constraint=constraints.interval(0, 2))
        return loc + scale * x * weight

    def recorded(statements):
        with poutine.block(hide=["other"]) if outer != "alone" else contextlib.nullcontext():
            with poutine.trace(param_only=True) as tr:
                statements()
        return tr.trace.nodes

    compiled = lazyjit.trace(fn, backend="eager")
    x = torch.randn(3)
    compiled(x)
    names = ["loc", "scale", "weight"]
    for _ in range(2):
        actual = recorded(lambda: compiled(x))
        expected = recorded(lambda: [pyro.param(name) for name in names])
        assert list(actual) == list(expected) == names
        for name, site in actual.items():
            want = expected[name]
            assert site.keys() == want.keys()
            assert {k: v for k, v in site.items() if k != "value"} == {
                k: v for k, v in want.items() if k != "value"
            }
            assert_close(site["value"], want["value"])
            assert site["value"].unconstrained() is pyro.param(name).unconstrained()
        with torch.no_grad():  # as an optimizer step does: the values must follow
            for name in names:
                pyro.param(name).unconstrained().add_(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_svi_with_compiled_loss_matches_eager(backend):
    def guide(x, y):
        pyro.param("scale", torch.tensor(0.5), constraint=constraints.positive)

    def loss(model, guide, x, y):
        return -model_log_prob_fn(x, y)

    x, y = torch.randn(20), torch.randn(20) * 3
    scales = []
    for compile_loss in [False, True]:
        pyro.clear_param_store()
        loss_fn = lazyjit.trace(loss, backend=backend) if compile_loss else loss
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss_fn)
        for _ in range(20):
            svi.step(x, y)
        scales.append(pyro.param("scale").detach().clone())
    assert not torch.equal(scales[0], torch.tensor(0.5))
    assert_close(scales[1], scales[0])


# Improvement 1: the cache key is the full signature.
def sequence_model(x):
    loc = pyro.param("loc", torch.tensor(0.3))
    for t in range(x.shape[0]):  # structure follows the shape, which is in lazyjit's key
        pyro.sample(f"x_{t}", dist.Normal(loc, 1.0), obs=x[t])


def sequence_log_prob(x):
    return poutine.trace(sequence_model).get_trace(x).log_prob_sum()


@pytest.mark.parametrize("impl", pyro_fails())
def test_irregular_batch_sizes_give_eager_answer(impl):
    compiled = impl(sequence_log_prob)
    data = torch.randn(30)
    # Pyro's jit reuses the first trace: a longer batch is silently cut short and a
    # shorter one (the last mini-batch) crashes.
    for batch in [data[:8], data[8:20], data[20:28], data[28:], data[:8]]:
        assert_close(compiled(batch), sequence_log_prob(batch))


@pytest.mark.parametrize("backend", BACKENDS)
def test_key_covers_dtype_requires_grad_and_static_values(backend):
    f = lazyjit.trace(lambda x, k=1: x * k, backend=backend)
    f(torch.ones(3))
    f(torch.ones(3))
    f(torch.ones(3, dtype=torch.float64))
    f(torch.ones(3, requires_grad=True))
    f(torch.ones(3), k=2)
    f(torch.ones(3), k=2.0)  # equal but a different type: its own entry
    assert f.stats.compilations == 5 and f.stats.hits == 1
    assert f(torch.ones(3, dtype=torch.float64)).dtype == torch.float64


# Improvement 2: tensors may sit anywhere.
@pytest.mark.parametrize("impl", pyro_fails())
def test_tensors_nested_with_non_tensors(impl):
    @impl
    def f(batch, opts):
        x, n = batch
        return pyro.param("w", torch.tensor(2.0)) * x.sum() * n + opts["y"].sum()

    for _ in range(3):
        x, y = torch.randn(4), torch.randn(2)
        assert_close(f((x, 3), {"y": y}), 2.0 * x.sum() * 3 + y.sum())


@pytest.mark.parametrize("impl", pyro_fails())
def test_tensor_kwargs_are_inputs_not_keys(impl):
    @impl
    def f(x, data=None):
        return (x * data["y"]).sum()

    for _ in range(4):
        x, y = torch.randn(3), torch.randn(3)
        assert_close(f(x, data={"y": y}), (x * y).sum())
    assert len(f.compiled) == 1


# Improvement 3: params that change after compiling.
@pytest.mark.parametrize("impl", pyro_fails())
def test_param_created_on_later_call(impl):
    @impl
    def f(x, extra=False):
        out = pyro.param("a", torch.tensor(1.0)) * x
        if extra:
            out = out + pyro.param("b", torch.tensor(10.0)) * x
        return out.sum()

    x = torch.ones(2)
    assert_close(f(x), torch.tensor(2.0))
    assert_close(f(x, extra=True), torch.tensor(22.0))
    assert_close(f(x), torch.tensor(2.0))
    assert_close(f(x * 2), torch.tensor(4.0))


@pytest.mark.parametrize("impl", pyro_fails())
def test_cleared_param_store_recompiles(impl):
    compiled = impl(model_log_prob_fn)
    x, y = torch.randn(3), torch.randn(3)
    compiled(x, y)
    pyro.clear_param_store()
    actual = compiled(x, y)
    assert_close(actual, model_log_prob_fn(x, y))
    assert "scale" in pyro.get_param_store()


@pytest.mark.parametrize("backend", [*BACKENDS, "inductor"])
def test_a_param_given_new_data_of_another_shape_recompiles(backend):
    def fn(x):
        return (pyro.param("w", torch.ones(3)) * x).sum() + pyro.param("w").sum()

    compiled = lazyjit.trace(fn, backend=backend)
    compiled(torch.ones(()))
    param = pyro.param("w").unconstrained()
    param.data = torch.arange(5.0)  # the same tensor: only its layout tells
    assert_close(compiled(torch.ones(())), fn(torch.ones(())))
    assert compiled.stats.recompiles == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_reloaded_and_reconstrained_params(backend, tmp_path):
    compiled = lazyjit.trace(model_log_prob_fn, backend=backend)
    x, y = torch.randn(3), torch.randn(3)
    compiled(x, y)
    store = pyro.get_param_store()
    store.save(tmp_path / "params.pt")
    with torch.no_grad():
        pyro.param("scale").unconstrained().fill_(3.0)
    store.load(tmp_path / "params.pt")  # new tensors with the saved values
    assert_close(compiled(x, y), model_log_prob_fn(x, y))
    # Same name, new constraint: the constraint's transform is inside the program.
    store._constraints["scale"] = constraints.greater_than(0.1)
    assert_close(compiled(x, y), model_log_prob_fn(x, y))
    assert compiled.stats.recompiles == 2


# Improvement 4: the cache is bounded.
@pytest.mark.parametrize("impl", pyro_fails())
def test_cache_is_bounded(impl):
    def fn(x, k=0):
        return x * k

    compiled = impl(fn)
    if isinstance(compiled, lazyjit.CompiledFunction):
        compiled = lazyjit.trace(fn, backend=compiled.backend.name, cache_size=4)
    for k in range(10):
        assert_close(compiled(torch.ones(2), k=k), torch.full((2,), float(k)))
    assert len(compiled.compiled) <= 4


def test_lru_keeps_recently_used():
    f = lazyjit.trace(lambda x: x + 1, backend="eager", cache_size=2)
    f(torch.ones(1))
    f(torch.ones(2))
    f(torch.ones(1))  # refresh shape (1,)
    f(torch.ones(3))  # evicts shape (2,)
    f(torch.ones(1))
    assert f.stats.compilations == 3 and f.stats.evictions == 1 and f.stats.hits == 2


def test_an_entry_keyed_by_an_object_freed_at_shutdown_drops_quietly(monkeypatch):
    """A keyed object freed while the interpreter shuts down drops its entry through a
    weak-reference callback that runs after the module's globals are gone (seen as
    "Exception ignored in LRUCache.put" at the exit of a run whose compile was loading)."""
    import lazyjit.signature

    class Model:
        def __call__(self, x):
            return x + 1

    f = lazyjit.trace(lambda x, model: model(x), backend="eager")
    model = Model()
    f(torch.ones(1), model)
    assert len(f.compiled) == 1
    monkeypatch.setattr(lazyjit.signature, "_drop", None)  # as at shutdown
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        unraisable = []
        monkeypatch.setattr("sys.unraisablehook", unraisable.append)
        del model
        gc.collect()
    assert not unraisable and not caught
    assert len(f.compiled) == 0


# Improvement 5: no leak.
@pytest.mark.parametrize("impl", pyro_fails())
def test_dropping_model_and_data_frees_them(impl):
    def log_prob(x, model=None, extra=None):
        return poutine.trace(model).get_trace(x).log_prob_sum() + extra.sum()

    compiled = impl(log_prob)

    def run():
        m = Regression()
        x, y = torch.randn(5, 3), torch.randn(5)
        big = torch.randn(1000)
        compiled(x, model=poutine.condition(m, data={"y": y}), extra=big)
        return weakref.ref(m), weakref.ref(big)

    refs = run()
    pyro.clear_param_store()
    gc.collect()
    assert all(r() is None for r in refs)


def test_dead_identity_arguments_drop_their_entries():
    f = lazyjit.trace(lambda x, obj=None: x + 1, backend="eager")

    class Thing:
        pass

    for _ in range(5):
        f(torch.ones(1), obj=Thing())
        gc.collect()
    assert len(f.compiled) <= 1


def test_an_identity_key_is_made_once_per_live_object():
    from lazyjit.signature import _IDENTITY_REFS, signature

    class Thing:
        pass

    thing = Thing()
    first, second = (signature((thing,), {})[0] for _ in range(2))
    assert first == second and first[0][0][1] is second[0][0][1]
    key = id(thing)
    del thing
    gc.collect()
    assert key not in _IDENTITY_REFS  # a later object with this id gets a key of its own


# The structure guard.
def branchy(x):
    if x.sum() > 0:
        return x * pyro.param("w", torch.tensor(2.0))
    return x - 1


def test_data_dependent_branch_is_guarded():
    compiled = lazyjit.trace(branchy, backend="torchscript")
    pos, neg = torch.ones(3), -3 * torch.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        assert_close(compiled(pos), pos * 2)
        assert_close(compiled(neg), neg - 1)  # not the baked branch: its guard fails
        assert_close(compiled(pos), pos * 2)
        assert_close(compiled(neg), neg - 1)
    stats = compiled.stats
    assert (stats.fallbacks, stats.guard_failures) == (0, 0)
    assert stats.compilations == 2  # a specialization for each side of the branch
    (entry,) = compiled.entries
    assert len(entry.programs) == 2


def test_an_entry_whose_guards_keep_failing_runs_eagerly(monkeypatch):
    monkeypatch.setattr(lazyjit.config, "MAX_GUARD_FAILURES", 3)
    monkeypatch.setattr(lazyjit.config, "MAX_SPECIALIZATIONS", 1)
    compiled = lazyjit.trace(branchy, backend="aten")
    pos, neg = torch.ones(3), -3 * torch.ones(3)
    compiled(pos)
    with pytest.warns(StructureWarning, match="changed in 3 calls"):
        for _ in range(3):
            assert_close(compiled(neg), neg - 1)
    assert type(next(iter(compiled.compiled.values()))) is lazyjit.Program
    assert_close(compiled(neg), neg - 1)
    assert_close(compiled(pos), pos * 2)
    assert compiled.stats.guard_failures == 3 and compiled.stats.fallbacks == 1


@pytest.mark.parametrize("backend", ["torchscript", "auto"])
def test_data_dependent_branch_strict_raises(backend):
    compiled = lazyjit.trace(lambda x: branchy(x).sum(), strict=True, backend=backend)
    with pytest.raises(LazyJitError, match="depends on tensor values"):
        for _ in range(4):  # auto: at its first capture
            compiled.value_and_grad(torch.ones(3))


def test_data_dependent_branch_under_pyro_jit_is_silently_wrong():
    """Why the guard exists: Pyro's jit bakes the first branch in."""
    compiled = pyro.ops.jit.trace(branchy, ignore_warnings=True)
    compiled(torch.ones(3))
    assert not torch.allclose(compiled(-3 * torch.ones(3)), -3 * torch.ones(3) - 1)


def test_ignore_jit_warnings_marks_a_safe_site():
    def f(x):
        with lazyjit.ignore_jit_warnings():
            n = int(x.shape[0])  # static for a given shape, which is in the key
        return x * n

    compiled = lazyjit.trace(f)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_close(compiled(torch.ones(3)), torch.full((3,), 3.0))
    assert compiled.stats.fallbacks == 0


# Bad input.
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_tensor_output_is_a_clear_error(backend):
    compiled = lazyjit.trace(lambda x: (x.sum(), "done"), backend=backend)
    with pytest.raises(LazyJitError, match="must return tensors"):
        compiled(torch.ones(2))


def test_unknown_backend():
    with pytest.raises(LazyJitError, match="unknown lazyjit backend 'nope'"):
        lazyjit.trace(lambda x: x, backend="nope")


def test_not_callable():
    with pytest.raises(TypeError, match="expects a callable"):
        lazyjit.CompiledFunction(3)


def test_unhashable_static_argument_is_keyed_by_identity_with_warning():
    class Config:
        __hash__ = None

        def __init__(self, k):
            self.k = k

    f = lazyjit.trace(lambda x, cfg=None: x * cfg.k, backend="eager")
    cfg = Config(2.0)
    with pytest.warns(LazyJitWarning, match="by identity"):
        assert_close(f(torch.ones(2), cfg=cfg), torch.full((2,), 2.0))
    assert_close(f(torch.ones(2), cfg=Config(3.0)), torch.full((2,), 3.0))


def test_compile_time_and_stats():
    f = lazyjit.trace(model_log_prob_fn, backend="torchscript")
    assert f.compile_time is None
    f(torch.randn(2), torch.randn(2))
    f(torch.randn(2), torch.randn(2))
    assert f.compile_time > 0 and f.stats.compile_seconds == pytest.approx(f.compile_time)
    assert (f.stats.compilations, f.stats.hits, f.stats.misses) == (1, 1, 1)
    (program,) = f.compiled.values()
    assert "aten::" in str(program.script.graph)


def test_time_compilation_option_is_accepted():
    f = lazyjit.trace(model_log_prob_fn, jit_options={"time_compilation": True})
    f(torch.randn(2), torch.randn(2))
    assert f.compile_time > 0


def test_pickle_drops_programs_and_recompiles():
    f = lazyjit.trace(model_log_prob_fn)
    x, y = torch.randn(2), torch.randn(2)
    expected = f(x, y)
    g = pickle.loads(pickle.dumps(f))
    assert len(g.compiled) == 0
    assert_close(g(x, y), expected)


def test_calls_from_two_threads():
    f = lazyjit.trace(model_log_prob_fn)
    x, y = torch.randn(6), torch.randn(6)
    expected = model_log_prob_fn(x, y).detach()
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(f(x, y).detach())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 40 and all(torch.allclose(r, expected) for r in results)
    assert f.stats.compilations == 1


def test_a_repeated_signature_is_checked_not_recomputed(monkeypatch):
    import lazyjit.jit

    computed = []
    real = lazyjit.jit.signature
    monkeypatch.setattr(lazyjit.jit, "signature", lambda *a: computed.append(1) or real(*a))

    def fn(model, x, scale):
        return model(x) * scale

    compiled = lazyjit.trace(fn, backend="eager")
    model = torch.nn.Identity()
    x = torch.ones(3)
    for _ in range(3):
        assert_close(compiled(model, x, 2.0), x * 2)
    assert len(computed) == 1
    # Anything the key takes in that differs is seen, and computed again.
    changes = [
        lambda: compiled(torch.nn.Identity(), x, 2.0),  # another object
        lambda: compiled(model, torch.ones(4), 2.0),  # a shape
        lambda: compiled(model, torch.ones(3, dtype=torch.float64), 2.0),
        lambda: compiled(model, torch.ones(3, 2)[:, 0], 2.0),  # strides
        lambda: compiled(model, torch.ones(3, requires_grad=True), 2.0),
        lambda: compiled(model, x, 3.5),  # a value
        lambda: compiled(model, x=x, scale=2.0),  # keywords: no guard at all
    ]
    for i, change in enumerate(changes):
        change()
        compiled(model, x, 2.0)  # back to the guarded signature, computed again
        assert len(computed) == 3 + 2 * i
    with torch.no_grad():
        compiled(model, x, 2.0)
    assert len(computed) == 2 + 2 * len(changes)
