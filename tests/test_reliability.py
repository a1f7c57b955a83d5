"""Never silently wrong: the catalogue of bad inputs to ``lazyjit.trace`` and what each gets.

docs/reliability.md lists the same catalogue; each row there has a test here.
"""

import math
import threading

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import lazyjit
from lazyjit import LazyJitError
from lazyjit.examples import scale_log_prob

BACKENDS = ["torchscript", "eager"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def test_varying_non_tensor_positional_arguments_select_entries(backend):
    f = lazyjit.trace(lambda x, n: x.sum() * n, backend=backend, cache_size=4)
    for n in [1, 2, 3, 1, 2, 5, 6, 7, 8]:
        torch.testing.assert_close(f(torch.ones(2), n), torch.tensor(2.0 * n))
    assert f.stats.compilations == 7 and len(f.compiled) == 4


def test_tensors_mixed_with_python_numbers(backend):
    f = lazyjit.trace(lambda x, a, b: x * a + b, backend=backend)
    x = torch.randn(3)
    for a, b in [(2.0, 1), (3.0, 1), (2.0, 1)]:
        torch.testing.assert_close(f(x, a, b), x * a + b)
    assert f.stats.compilations == 2


def test_nan_and_inf_in_data_give_the_eager_answer(backend):
    """Pyro's validation runs while compiling only: compiled calls give what eager Pyro
    gives with validation off (the ELBOs then warn about a NaN loss, as Pyro's do)."""
    f = lazyjit.trace(scale_log_prob, backend=backend)
    x = torch.tensor([0.0, 1.0, 2.0])
    f(x, x)
    for y in [torch.tensor([math.nan, 0.0, 1.0]), torch.tensor([math.inf, 0.0, 1.0])]:
        with pyro.validation_enabled(False):
            torch.testing.assert_close(f(x, y), scale_log_prob(x, y), equal_nan=True)


def test_in_place_mutation_of_an_input_is_replayed(backend):
    def f(x):
        x.mul_(2)
        return x.sum()

    compiled = lazyjit.trace(f, backend=backend)
    for _ in range(2):
        x = torch.arange(3.0)
        assert compiled(x).item() == 6.0
        torch.testing.assert_close(x, torch.tensor([0.0, 2.0, 4.0]))


def test_none_arguments_are_static(backend):
    f = lazyjit.trace(
        lambda x, mask=None: x.sum() if mask is None else x[mask].sum(), backend=backend
    )
    x = torch.arange(4.0)
    assert f(x).item() == 6.0
    assert f(x, mask=torch.tensor([True, False, True, False])).item() == 2.0


def test_generator_arguments_are_a_clear_error(backend):
    f = lazyjit.trace(lambda xs: sum(x.sum() for x in xs), backend=backend)
    with pytest.raises(LazyJitError, match="pass a list or a tuple"):
        f(torch.ones(2) for _ in range(3))
    assert f([torch.ones(2)] * 3).item() == 6.0


def test_verify_passes_for_a_static_model_with_random_draws(backend):
    def sample_sum(x):
        loc = pyro.param("loc", torch.zeros(()))
        with pyro.plate("n", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
        return (z * x).sum()

    f = lazyjit.trace(sample_sum, backend=backend, verify=3)
    x = torch.randn(5)
    for _ in range(5):
        f(x)
        f.value_and_grad(x)
    (entry,) = f.entries
    assert entry.checks_left == 0


def test_verify_catches_global_state(backend):
    """A model reading a Python global is unsupported; ``verify`` is how to find out."""
    state = {"calls": 0}

    def counting(x):
        state["calls"] += 1
        w = pyro.param("w", torch.tensor(1.0))
        if state["calls"] >= 4:  # e.g. a param or a term switched on after a warm-up
            return (w * x).sum() + pyro.param("b", torch.tensor(10.0))
        return (w * x).sum()

    f = lazyjit.trace(counting, backend=backend, verify=10)
    x = torch.ones(2)
    if backend == "eager":  # eager runs the Python every time: it is right, and agrees
        for _ in range(4):
            f(x)
        return
    with pytest.raises(LazyJitError, match="disagrees with eager Pyro"):
        for _ in range(4):
            f(x)


def test_outer_handlers_do_not_leak_into_the_program(backend):
    f = lazyjit.trace(scale_log_prob, backend=backend)
    x, y = torch.randn(4), torch.randn(4)
    with poutine.scale(scale=100.0):
        first = f(x, y)
    torch.testing.assert_close(first, scale_log_prob(x, y))
    torch.testing.assert_close(f(x, y), scale_log_prob(x, y))


# ---------------------------------------------------------------------------- the rest of the catalogue

COMPILING_BACKENDS = [b for b in ("torchscript", "aten") if b in lazyjit.BACKENDS]


def test_new_param_on_call_5_is_optimized_like_eager():
    """A guide that creates a param from the fifth step on (a kwarg switches part of it
    on): a new signature, so a new entry with its own param list, and SVI optimizes the
    new param. The KL is analytic, so eager and compiled steps are deterministic and
    must agree exactly, step by step."""

    def model(extra=False):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide(extra=False):
        loc = pyro.param("loc", torch.tensor(1.0))
        if extra:
            loc = loc + pyro.param("shift", torch.tensor(0.5))
        pyro.sample("z", dist.Normal(loc, 0.5))

    lazy = lazyjit.JitTraceMeanField_ELBO()
    finals = []
    for elbo in (pyro.infer.TraceMeanField_ELBO(), lazy):
        pyro.clear_param_store()
        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), elbo)
        losses = [svi.step(extra=step >= 4) for step in range(8)]
        finals.append((losses, {k: v.detach().clone() for k, v in pyro.get_param_store().items()}))
    (expected_losses, expected), (actual_losses, actual) = finals
    assert actual_losses == pytest.approx(expected_losses, rel=1e-6)
    assert actual.keys() == expected.keys() == {"loc", "shift"}
    assert expected["shift"] != 0.5  # the new param was optimized
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name])
    assert lazy.compiled_fn.stats.compilations == 2


def test_float64_inputs_after_a_float32_compile(backend):
    f = lazyjit.trace(scale_log_prob, backend=backend)
    x, y = torch.randn(4), torch.randn(4)
    f(x, y)
    x64, y64 = x.double(), y.double()
    value, grads = f.value_and_grad(x64, y64)
    expected = scale_log_prob(x64, y64)
    assert value.dtype == torch.float64  # float32 params meet float64 data, as in eager
    torch.testing.assert_close(value, expected.detach())
    (scale_grad,) = torch.autograd.grad(expected, pyro.param("scale").unconstrained())
    torch.testing.assert_close(grads.params["scale"], scale_grad)
    assert f.stats.compilations == 2


def test_a_tensor_that_switches_requires_grad(backend):
    f = lazyjit.trace(scale_log_prob, backend=backend)
    x, y = torch.randn(4), torch.randn(4)
    _, grads = f.value_and_grad(x, y)
    assert grads.args == (None, None)
    y_grad = y.clone().requires_grad_()
    _, grads = f.value_and_grad(x, y_grad)
    (expected,) = torch.autograd.grad(scale_log_prob(x, y_grad), y_grad)
    assert grads.args[0] is None
    torch.testing.assert_close(grads.args[1], expected)
    _, grads = f.value_and_grad(x, y)  # back to the first entry
    assert grads.args == (None, None)
    assert (f.stats.compilations, f.stats.hits) == (2, 1)


@pytest.mark.parametrize("compiling_backend", COMPILING_BACKENDS)
def test_two_threads_compile_and_call_two_signatures(compiling_backend):
    """Compilations are serialized per function; compiled programs run concurrently.
    (The eager backend and eager fallbacks run Pyro code, whose effect-handler stack is
    process-global: Pyro is not thread-safe, and neither are they.)"""
    f = lazyjit.trace(scale_log_prob, backend=compiling_backend)
    inputs = [(torch.randn(n), torch.randn(n)) for n in (3, 6)]
    expected = [scale_log_prob(x, y).detach() for x, y in inputs]
    barrier = threading.Barrier(2)
    results: list[list[torch.Tensor]] = [[], []]

    def work(i):
        barrier.wait()
        for _ in range(20):
            results[i].append(f(*inputs[i]).detach())

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(results[i]) == 20
        for r in results[i]:
            torch.testing.assert_close(r, expected[i])
    assert f.stats.compilations == 2 and f.stats.hits == 38


SCALE = torch.tensor(2.0)


def scaled_by_global(x):
    return x * SCALE


def scaled_by_argument(x, scale):
    return x * scale


@pytest.mark.parametrize("compiling_backend", COMPILING_BACKENDS)
def test_a_module_level_tensor_is_baked_in_pass_it_as_an_argument(compiling_backend):
    global SCALE
    x = torch.ones(2)
    by_global = lazyjit.trace(scaled_by_global, backend=compiling_backend, verify=5)
    by_argument = lazyjit.trace(scaled_by_argument, backend=compiling_backend)
    by_global(x)
    by_argument(x, SCALE)
    old = SCALE
    try:
        SCALE = torch.tensor(3.0)
        torch.testing.assert_close(by_argument(x, SCALE), torch.full((2,), 3.0))
        # The global version would return 2.0s; verify= notices instead.
        with pytest.raises(LazyJitError, match="disagrees with eager Pyro"):
            by_global(x)
    finally:
        SCALE = old
