"""Never silently wrong: the catalogue of bad inputs to ``lazyjit.trace`` and what each gets.

docs/reliability.md lists the same catalogue; each row there has a test here.
"""

import math

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
    entry = next(iter(f._cache.items()))[1]
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
