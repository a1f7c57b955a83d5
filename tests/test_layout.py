"""The public seams between lazyjit's modules (docs/architecture.md): the backend registry,
the tiering policy as data, CompiledFunction's lookup and entries, clear_caches, and the
shared patches."""

import threading

import pyro
import pyro.distributions as dist
import pytest
import torch

import lazyjit
from lazyjit import LazyJitError
from lazyjit.backends import (
    BACKENDS,
    AutoBackend,
    Backend,
    EagerBackend,
    Program,
    TierPolicy,
    get_backend,
    register_backend,
)
from lazyjit.patching import SharedPatch


def log_prob(x):
    loc = pyro.param("loc", torch.tensor(0.3))
    return dist.Normal(loc, 1.0).log_prob(x).sum()


def eager_value_and_grad(x):
    loc = pyro.param("loc")
    value = log_prob(x)
    (grad,) = torch.autograd.grad(value, [loc.unconstrained()])
    return value.detach(), grad


class CountingBackend(Backend):
    """Eager programs, counted: a backend from outside the package."""

    name = "counting-test"

    def __init__(self):
        self.compiled = 0

    def compile(self, fn, inputs, options):
        self.compiled += 1
        return Program(fn)


@pytest.fixture
def counting():
    backend = CountingBackend()
    register_backend(backend)
    yield backend
    del BACKENDS[backend.name]


def test_a_registered_backend_is_selected_by_name(counting):
    pyro.clear_param_store()
    f = lazyjit.trace(log_prob, backend="counting-test")
    x = torch.randn(4)
    for _ in range(3):
        value, grads = f.value_and_grad(x)
    expected, expected_grad = eager_value_and_grad(x)
    assert counting.compiled == 1
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grads.params["loc"], expected_grad)


def test_registering_twice_or_a_non_backend_is_refused(counting):
    with pytest.raises(LazyJitError, match="registered already"):
        register_backend(CountingBackend())
    register_backend(CountingBackend(), replace=True)
    with pytest.raises(TypeError, match="Backend instance"):
        register_backend("eager")
    with pytest.raises(LazyJitError, match="unknown lazyjit backend 'nope'"):
        get_backend("nope")


def test_capability_flags_not_names_say_what_a_backend_does():
    graphs = {name for name, b in BACKENDS.items() if b.captures_graph}
    compiled = {name for name, b in BACKENDS.items() if b.compiles_graph}
    assert graphs == {"aten", "aten-jit", "inductor", "auto"}
    assert compiled == {"aten-jit", "inductor", "auto"}


def test_the_tier_policy_is_data():
    auto = get_backend("auto")
    early = auto.replace(hot_calls=5, name="auto-early")
    assert early is not auto and isinstance(early, AutoBackend)
    assert early.policy == TierPolicy(
        warm_calls=2, hot_calls=5, switch_calls=10000, local_hot_calls=2000
    )
    assert early.name == "auto-early" and auto.name == "auto"
    assert auto.policy == TierPolicy()  # unchanged
    assert isinstance(auto.replace(first=EagerBackend()).first, EagerBackend)
    with pytest.raises(AttributeError):
        auto.policy.hot_calls = 1  # frozen


def test_lookup_finds_the_entry_a_call_would_run_and_compiles_nothing():
    pyro.clear_param_store()
    f = lazyjit.trace(log_prob, backend="eager")
    x = torch.randn(4)
    assert f.lookup(x) is None
    assert f.stats.compilations == 0
    f(x)
    hit = f.lookup(x)
    (entry,) = f.entries
    assert hit.entry is entry and hit.leaves[0] is x
    assert hit.params[0] is pyro.get_param_store().get_param("loc").unconstrained()
    assert f.lookup(torch.randn(5)) is None  # another signature
    assert f.stats.compilations == 1


def test_clear_caches_drops_every_entry_and_the_next_call_compiles_again():
    pyro.clear_param_store()
    f = lazyjit.trace(log_prob, backend="aten")
    elbo = lazyjit.JitTrace_ELBO()
    x = torch.randn(4)
    f.value_and_grad(x)
    f.value_and_grad(x)
    assert len(f.entries) == 1
    lazyjit.clear_caches()
    assert f.entries == [] and elbo.compiled_fn.entries == []
    value, grads = f.value_and_grad(x)
    assert f.stats.compilations == 2
    expected, expected_grad = eager_value_and_grad(x)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grads.params["loc"], expected_grad)


class Target:
    inherited = "base"


class Child(Target):
    own = "own"


def test_a_shared_patch_holds_while_any_thread_holds_it():
    patch = SharedPatch(lambda: [(Child, "own", "patched"), (Child, "inherited", "patched")])
    entered, release = threading.Event(), threading.Event()

    def hold():
        with patch():
            entered.set()
            release.wait(timeout=10)

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait(timeout=10)
    with patch():
        assert Child.own == Child.inherited == "patched"
    assert Child.own == "patched"  # the other thread still holds it
    release.set()
    thread.join()
    assert Child.own == "own" and Child.inherited == "base"
    assert "inherited" not in vars(Child)  # uncovered, not copied down
