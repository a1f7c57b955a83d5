"""lazyjit's Jit ELBOs against Pyro's eager ELBOs: same seed, same loss, same gradients."""

from __future__ import annotations

import functools
import runpy
import textwrap
import warnings

import pyro
import pyro.distributions as dist
import pyro.infer
import pyro.infer.trace_elbo
import pyro.ops.jit
import pytest
import torch
from pyro import poutine
from pyro.infer import (
    SVI,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.optim import Adam
from torch.distributions import constraints

import lazyjit
from lazyjit import (
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    LazyJitError,
    LazyJitWarning,
    StructureWarning,
    examples,
)

BACKENDS = ["torchscript", "eager", "aten-jit"]
RTOL = 1e-5


@pytest.fixture(autouse=True)
def quiet_tracer():
    """Pyro's distributions make tensor constants; TorchScript says so on every compile."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


# ---------------------------------------------------------------------------- model zoo
# Each builder returns (model, guide, args, kwargs) with fresh functions and data.


def gaussian_autodiag():
    """The tutorial's Gaussian model with an AutoDiagonalNormal guide."""

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        scale = pyro.sample("scale", dist.LogNormal(0.0, 3.0))
        with pyro.plate("data", data.size(0)):
            pyro.sample("obs", dist.Normal(loc, scale), obs=data)

    data = dist.Normal(0.5, 2.0).sample((100,))
    return model, AutoDiagonalNormal(model), (data,), {}


def constrained_guide():
    """A hand-written guide whose params carry positive, interval and simplex constraints."""

    def model(data):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3)))
        locs = torch.tensor([-2.0, 0.0, 2.0])
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", data.size(0)):
            pyro.sample("obs", dist.Normal((weights * locs).sum(), scale), obs=data)

    def guide(data):
        concentration = pyro.param(
            "concentration", torch.full((3,), 2.0), constraint=constraints.positive
        )
        # Touched but outside the loss: its gradient is zero (eager leaves .grad unset).
        pyro.param("unused_probs", torch.ones(3) / 3, constraint=constraints.simplex)
        probs = pyro.param("probs", torch.tensor([0.2, 0.3, 0.5]), constraint=constraints.simplex)
        pyro.sample("weights", dist.Dirichlet(concentration * probs * 3))
        loc = pyro.param("scale_loc", torch.tensor(0.0))
        spread = pyro.param(
            "scale_spread", torch.tensor(0.5), constraint=constraints.interval(0.01, 2.0)
        )
        pyro.sample("scale", dist.LogNormal(loc, spread))

    data = dist.Normal(0.5, 1.0).sample((30,))
    return model, guide, (data,), {}


def autonormal_locals():
    """Global and per-datum latents under an AutoNormal guide."""

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", data.size(0)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.5), obs=data)

    data = dist.Normal(1.0, 1.5).sample((20,))
    return model, AutoNormal(model), (data,), {}


class Regression(PyroModule):
    def __init__(self):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](3, 1)
        self.offset = PyroSample(dist.Normal(0.0, 5.0))
        self.noise = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

    def forward(self, x, y=None):
        mean = self.linear(x).squeeze(-1) + self.offset
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, self.noise), obs=y)


def pyromodule_regression():
    """A PyroModule with nn.Linear params, a PyroParam and a PyroSample latent."""
    model = Regression()
    x = torch.randn(40, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 + 0.1 * torch.randn(40)
    return model, AutoNormal(model), (x, y), {}


def subsampled_plate():
    """A plate with random subsampling (``subsample_size``) and local guide params."""
    size = 50

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", size, subsample_size=10) as ind:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.5), obs=data[ind])

    def guide(data):
        mu_loc = pyro.param("mu_loc", torch.tensor(0.0))
        pyro.sample("mu", dist.Normal(mu_loc, 1.0))
        z_loc = pyro.param("z_loc", torch.zeros(size))
        z_scale = pyro.param("z_scale", torch.ones(size), constraint=constraints.positive)
        with pyro.plate("data", size, subsample_size=10) as ind:
            pyro.sample("z", dist.Normal(z_loc[ind], z_scale[ind]))

    data = dist.Normal(1.0, 1.5).sample((size,))
    return model, guide, (data,), {}


# The tutorial's Gaussian HMM, with 3 states to keep the tests short.
hmm_model = functools.partial(examples.hmm_model, state_dim=3)


def hmm_guide():
    return AutoDiagonalNormal(poutine.block(hmm_model, expose=["trans", "emit_scale", "emit_loc"]))


def hmm():
    sequence = torch.randn(5)
    return hmm_model, hmm_guide(), (sequence,), {"num_sequences": 4, "length": 5}


def bernoulli_latent():
    """A non-reparameterized Bernoulli latent (score-function gradients) next to a Normal."""

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        z = pyro.sample("z", dist.Bernoulli(0.3))
        with pyro.plate("data", data.size(0)):
            pyro.sample("obs", dist.Normal(loc + 2.0 * z, 1.0), obs=data)

    def guide(data):
        loc_loc = pyro.param("loc_loc", torch.tensor(0.5))
        pyro.sample("loc", dist.Normal(loc_loc, 0.5))
        probs = pyro.param("z_probs", torch.tensor(0.4), constraint=constraints.unit_interval)
        pyro.sample("z", dist.Bernoulli(probs))

    data = dist.Normal(2.0, 1.0).sample((10,))
    return model, guide, (data,), {}


def beta_score_function():
    """A Beta latent forced onto score-function gradients (``has_rsample_(False)``)."""

    def model(data):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        with pyro.plate("data", data.size(0)):
            pyro.sample("obs", dist.Bernoulli(p), obs=data)

    def guide(data):
        a = pyro.param("a", torch.tensor(3.0), constraint=constraints.positive)
        b = pyro.param("b", torch.tensor(1.5), constraint=constraints.positive)
        pyro.sample("p", dist.Beta(a, b).has_rsample_(False))

    data = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    return model, guide, (data,), {}


def mean_field_kl():
    """Normal priors with Normal guide factors: every KL is analytic."""

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", data.size(0)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.5), obs=data)

    def guide(data):
        mu_loc = pyro.param("mu_loc", torch.tensor(0.3))
        mu_scale = pyro.param("mu_scale", torch.tensor(0.8), constraint=constraints.positive)
        pyro.sample("mu", dist.Normal(mu_loc, mu_scale))
        z_loc = pyro.param("z_loc", torch.zeros(data.size(0)))
        z_scale = pyro.param("z_scale", torch.ones(data.size(0)), constraint=constraints.positive)
        with pyro.plate("data", data.size(0)):
            pyro.sample("z", dist.Normal(z_loc, z_scale))

    data = dist.Normal(1.0, 1.5).sample((15,))
    return model, guide, (data,), {}


TRACE = (Trace_ELBO, JitTrace_ELBO)
ENUM = (TraceEnum_ELBO, JitTraceEnum_ELBO)
GRAPH = (TraceGraph_ELBO, JitTraceGraph_ELBO)
MEAN_FIELD = (TraceMeanField_ELBO, JitTraceMeanField_ELBO)
NO_ENUM = {"strict_enumeration_warning": False}

# (id, builder, (eager ELBO, lazyjit ELBO), ELBO options)
ZOO = [
    ("gaussian-trace", gaussian_autodiag, TRACE, {}),
    ("gaussian-enum", gaussian_autodiag, ENUM, {"max_plate_nesting": 1, **NO_ENUM}),
    ("gaussian-graph", gaussian_autodiag, GRAPH, {}),
    ("gaussian-meanfield", gaussian_autodiag, MEAN_FIELD, {}),
    ("gaussian-particles", gaussian_autodiag, TRACE, {"num_particles": 4}),
    (
        "gaussian-vectorized",
        gaussian_autodiag,
        TRACE,
        {"num_particles": 4, "vectorize_particles": True},
    ),
    ("constrained-trace", constrained_guide, TRACE, {}),
    ("constrained-graph-particles", constrained_guide, GRAPH, {"num_particles": 3}),
    ("autonormal-trace", autonormal_locals, TRACE, {}),
    (
        "autonormal-vectorized",
        autonormal_locals,
        TRACE,
        {"num_particles": 3, "vectorize_particles": True},
    ),
    ("pyromodule-trace", pyromodule_regression, TRACE, {}),
    ("subsample-trace", subsampled_plate, TRACE, {}),
    ("subsample-meanfield", subsampled_plate, MEAN_FIELD, {}),
    ("hmm-enum", hmm, ENUM, {"max_plate_nesting": 1}),
    ("hmm-enum-particles", hmm, ENUM, {"max_plate_nesting": 1, "num_particles": 2}),
    ("bernoulli-graph", bernoulli_latent, GRAPH, {}),
    ("bernoulli-trace", bernoulli_latent, TRACE, {}),
    ("beta-graph", beta_score_function, GRAPH, {}),
    ("meanfield-kl", mean_field_kl, MEAN_FIELD, {}),
    (
        "meanfield-kl-vectorized",
        mean_field_kl,
        MEAN_FIELD,
        {"num_particles": 3, "vectorize_particles": True},
    ),
]
ZOO_PARAMS = [pytest.param(*case[1:], id=case[0]) for case in ZOO]


# ---------------------------------------------------------------------------- helpers


def store_params() -> dict[str, torch.Tensor]:
    return dict(pyro.get_param_store()._params)


def take_grads() -> dict[str, torch.Tensor]:
    """The ``.grad`` of every param (zeros where it has none); clears them."""
    grads = {}
    for name, p in store_params().items():
        grads[name] = torch.zeros_like(p) if p.grad is None else p.grad.clone()
        p.grad = None
    return grads


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm().clamp(min=1e-6)).item()


def assert_grads_match(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    assert any(g.abs().sum() > 0 for g in expected.values()), "a test without gradients"
    for name in expected:
        assert rel_err(actual[name], expected[name]) < RTOL, (name, actual[name], expected[name])


def assert_loss_match(actual: float, expected: float) -> None:
    assert isinstance(actual, float)
    assert abs(actual - expected) <= RTOL * max(1.0, abs(expected)), (actual, expected)


def warm_up(elbos, model, guide, args, kwargs) -> None:
    """Runs each ELBO once so lazy initialisation (autoguide prototypes, max_plate_nesting
    guesses, lazyjit's param discovery and tracing) does not shift the compared draws."""
    for elbo in elbos:
        elbo.loss_and_grads(model, guide, *args, **kwargs)
    take_grads()


def make_elbos(pair, options, backend, **lazy_options):
    eager_cls, lazy_cls = pair
    return eager_cls(**options), lazy_cls(**options, backend=backend, **lazy_options)


# ---------------------------------------------------------------------------- zoo tests


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, pair, options", ZOO_PARAMS)
def test_loss_and_grads_match_eager(build, pair, options, backend):
    model, guide, args, kwargs = build()
    eager, lazy = make_elbos(pair, options, backend)
    warm_up([eager, lazy], model, guide, args, kwargs)
    # SVI-like: the params move between calls and the compiled entry must follow them.
    for step in range(3):
        pyro.set_rng_seed(100 + step)
        expected_loss = eager.loss_and_grads(model, guide, *args, **kwargs)
        expected = take_grads()
        pyro.set_rng_seed(100 + step)
        actual_loss = lazy.loss_and_grads(model, guide, *args, **kwargs)
        actual = take_grads()
        assert_loss_match(actual_loss, expected_loss)
        assert_grads_match(actual, expected)
        with torch.no_grad():
            for name, p in store_params().items():
                p.sub_(0.05 * expected[name])
    assert lazy.compiled_fn.stats.compilations == 1
    assert lazy.compiled_fn.stats.fallbacks == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, pair, options", ZOO_PARAMS)
def test_loss_and_differentiable_loss_match_eager(build, pair, options, backend):
    model, guide, args, kwargs = build()
    eager, lazy = make_elbos(pair, options, backend)
    warm_up([eager, lazy], model, guide, args, kwargs)
    lazy.loss(model, guide, *args, **kwargs)  # compiles the no-grad entry

    pyro.set_rng_seed(7)
    expected_loss = eager.loss(model, guide, *args, **kwargs)
    pyro.set_rng_seed(7)
    actual_loss = lazy.loss(model, guide, *args, **kwargs)
    assert_loss_match(actual_loss, expected_loss)

    params = store_params()
    names = list(params)
    results = []
    # TraceGraph_ELBO has no eager differentiable_loss; its loss_and_grads is the reference.
    for elbo in (lazy, eager) if hasattr(eager, "differentiable_loss") else (lazy,):
        pyro.set_rng_seed(8)
        with warnings.catch_warnings():
            # A graph backend differentiates a call through a custom autograd Function
            # (Pyro's _SafeLog) eagerly, and says so.
            warnings.filterwarnings(
                "ignore", "lazyjit: a differentiable call runs eagerly", LazyJitWarning
            )
            loss = elbo.differentiable_loss(model, guide, *args, **kwargs)
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        grads = {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)}
        results.append((loss.item(), grads))
    if len(results) == 1:
        pyro.set_rng_seed(8)
        results.append((eager.loss_and_grads(model, guide, *args, **kwargs), take_grads()))
    (actual_loss, actual), (expected_loss, expected) = results
    assert_loss_match(actual_loss, expected_loss)
    assert_grads_match(actual, expected)


# ---------------------------------------------------------------------------- specific cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_hmm_compiles_once_per_length(backend):
    lengths = [3, 5, 4]
    sequences = [torch.randn(n) for n in lengths for _ in range(2)]
    guide = hmm_guide()
    guide(sequences[0], num_sequences=len(sequences), length=len(sequences[0]))
    elbo = JitTraceEnum_ELBO(max_plate_nesting=1, backend=backend)
    svi = SVI(hmm_model, guide, Adam({"lr": 0.01}), elbo)
    for _ in range(2):
        for sequence in sequences:
            loss = svi.step(sequence, num_sequences=len(sequences), length=len(sequence))
            assert torch.isfinite(torch.tensor(loss))
    stats = elbo.compiled_fn.stats
    assert stats.compilations == 3
    assert stats.hits == 2 * len(sequences) - 3
    assert stats.fallbacks == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_irregular_batches_match_eager(backend):
    size = 27

    def model(batch, index):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", size, subsample=index):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z, 0.5), obs=batch)

    def guide(batch, index):
        pyro.sample("mu", dist.Normal(pyro.param("mu_loc", torch.tensor(0.0)), 1.0))
        z_loc = pyro.param("z_loc", torch.zeros(size))
        with pyro.plate("data", size, subsample=index):
            pyro.sample("z", dist.Normal(z_loc[index], 0.7))

    data = dist.Normal(1.0, 1.5).sample((size,))
    batches = [torch.arange(i, min(i + 10, size)) for i in range(0, size, 10)]
    assert [len(b) for b in batches] == [10, 10, 7]
    eager, lazy = Trace_ELBO(), JitTrace_ELBO(backend=backend)
    for epoch in range(2):
        for index in batches:
            args = (data[index], index)
            if epoch == 0:
                warm_up([eager, lazy], model, guide, args, {})
            pyro.set_rng_seed(epoch)
            expected_loss = eager.loss_and_grads(model, guide, *args)
            expected = take_grads()
            pyro.set_rng_seed(epoch)
            actual_loss = lazy.loss_and_grads(model, guide, *args)
            actual = take_grads()
            assert_loss_match(actual_loss, expected_loss)
            assert_grads_match(actual, expected)
    assert lazy.compiled_fn.stats.compilations == 2  # one per batch size


def test_graph_score_function_gradient_sign():
    """JitTraceGraph_ELBO's score-function gradient agrees in sign with the exact one."""

    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("obs", dist.Normal(4.0 * z - 2.0, 1.0), obs=torch.tensor(1.5))

    def guide():
        probs = pyro.param("q", torch.tensor(0.3), constraint=constraints.unit_interval)
        pyro.sample("z", dist.Bernoulli(probs))

    guide()
    unconstrained = pyro.get_param_store()._params["q"]
    # Exact: the ELBO is a sum over z in {0, 1}.
    u = unconstrained.detach().clone().requires_grad_()
    q = torch.sigmoid(u)
    joint = (
        torch.stack(
            [
                dist.Normal(-2.0, 1.0).log_prob(torch.tensor(1.5)),
                dist.Normal(2.0, 1.0).log_prob(torch.tensor(1.5)),
            ]
        )
        + torch.tensor(0.5).log()
    )
    probs = torch.stack([1 - q, q])
    exact_loss = -(probs * (joint - probs.log())).sum()
    (exact,) = torch.autograd.grad(exact_loss, u)
    assert exact < -0.5  # raising q lowers the loss: z = 1 explains the data far better

    options = {"num_particles": 2000, "vectorize_particles": True, "max_plate_nesting": 0}
    eager, lazy = TraceGraph_ELBO(**options), JitTraceGraph_ELBO(**options)
    warm_up([eager, lazy], model, guide, (), {})
    pyro.set_rng_seed(3)
    eager.loss_and_grads(model, guide)
    expected = take_grads()["q"]
    pyro.set_rng_seed(3)
    lazy.loss_and_grads(model, guide)
    actual = take_grads()["q"]
    assert torch.sign(actual) == torch.sign(expected) == torch.sign(exact)
    assert rel_err(actual, expected) < RTOL
    assert rel_err(actual, exact) < 0.2  # a Monte Carlo estimate of the exact gradient


def test_mean_field_uses_analytic_kl():
    """With analytic KL and no observations, the loss is exact: no two seeds differ."""

    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.5))
        scale = pyro.param("scale", torch.tensor(0.7), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(loc, scale))

    elbo = JitTraceMeanField_ELBO()
    losses = []
    for seed in range(3):
        pyro.set_rng_seed(seed)
        losses.append(elbo.loss_and_grads(model, guide))
    kl = torch.distributions.kl_divergence(dist.Normal(0.5, 0.7), dist.Normal(0.0, 1.0))
    assert losses == pytest.approx([kl.item()] * 3, rel=RTOL)
    grads = take_grads()
    # d KL / d loc = loc for a standard normal prior.
    assert grads["loc"].item() == pytest.approx(3 * 0.5, rel=RTOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_flow_to_tensor_arguments(backend):
    """A data tensor computed by the user's own graph (an encoder outside the model)."""

    def model(x):
        loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
        with pyro.plate("data", x.size(0)):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pyro.sample("loc", dist.Normal(pyro.param("loc_loc", torch.tensor(0.0)), 0.5))

    weight = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    raw = torch.randn(4, 3)
    eager, lazy = Trace_ELBO(), JitTrace_ELBO(backend=backend)
    warm_up([eager, lazy], model, guide, (raw @ weight.detach(),), {})
    warm_up([lazy], model, guide, (raw @ weight,), {})  # an entry for an argument with grad
    grads = []
    for elbo in (eager, lazy):
        weight.grad = None
        pyro.set_rng_seed(5)
        elbo.loss_and_grads(model, guide, raw @ weight)
        grads.append((weight.grad.clone(), take_grads()))
    (expected_w, expected), (actual_w, actual) = grads
    assert rel_err(actual_w, expected_w) < RTOL
    assert_grads_match(actual, expected)


@pytest.mark.parametrize(
    "build, pair, options", [p for p in ZOO_PARAMS if p.id in ("gaussian-trace", "beta-graph")]
)
def test_verify_agrees_with_eager(build, pair, options):
    """lazyjit's own check (``verify=``) runs the compiled program and eager Pyro side by side."""
    model, guide, args, kwargs = build()
    _, lazy = make_elbos(pair, options, "torchscript", verify=3)
    for _ in range(4):
        lazy.loss_and_grads(model, guide, *args, **kwargs)
    take_grads()
    assert lazy.compiled_fn.stats.compilations == 1


def test_autoguide_needs_no_warm_up():
    """The autoguide builds itself in lazyjit's param discovery run, never in the trace."""
    model, guide, args, _ = gaussian_autodiag()
    elbo = JitTrace_ELBO()
    svi = SVI(model, guide, Adam({"lr": 0.01}), elbo)
    losses = [svi.step(*args) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert set(store_params()) == {"AutoDiagonalNormal.loc", "AutoDiagonalNormal.scale"}
    assert elbo.compiled_fn.stats.compilations == 1
    assert elbo.compiled_fn.stats.fallbacks == 0


def test_grads_accumulate_like_backward():
    model, guide, args, kwargs = gaussian_autodiag()
    elbo = JitTrace_ELBO()
    warm_up([elbo], model, guide, args, kwargs)
    pyro.set_rng_seed(1)
    elbo.loss_and_grads(model, guide, *args)
    once = take_grads()
    for _ in range(2):
        pyro.set_rng_seed(1)
        elbo.loss_and_grads(model, guide, *args)
    twice = take_grads()
    for name in once:
        assert rel_err(twice[name], 2 * once[name]) < RTOL


def test_elbo_module_interface():
    """``elbo(model, guide)`` returns a module whose call is ``differentiable_loss``."""
    model, guide, args, _ = gaussian_autodiag()
    guide(*args)
    loss_fn = JitTrace_ELBO()(model, guide)
    for _ in range(2):
        loss = loss_fn(*args)
        loss.backward()
    assert loss.requires_grad and loss.dim() == 0
    assert all(p.grad is not None for p in store_params().values())
    assert loss_fn.elbo.compiled_fn.stats.compilations == 1


def test_constructor_accepts_pyro_arguments():
    elbo = JitTraceEnum_ELBO(
        3,
        max_plate_nesting=2,
        vectorize_particles=True,
        strict_enumeration_warning=False,
        ignore_jit_warnings=True,
        jit_options={"check_trace": False},
        retain_graph=True,
        backend="eager",
        strict=True,
        cache_size=4,
        verify=2,
    )
    assert isinstance(elbo, TraceEnum_ELBO)
    assert elbo.num_particles == 3 and elbo.max_plate_nesting == 3  # + the particle plate
    assert elbo.compiled_fn.backend.name == "eager"
    assert elbo.compiled_fn.strict and elbo.compiled_fn.ignore_warnings
    assert elbo.compiled_fn.verify == 2 and elbo.compiled_fn.cache_size == 4
    with pytest.raises(LazyJitError, match="unknown lazyjit backend"):
        JitTrace_ELBO(backend="nope")


def test_elbo_does_not_keep_model_alive():
    import gc
    import weakref

    model, guide, args, _ = gaussian_autodiag()
    elbo = JitTrace_ELBO()
    elbo.loss_and_grads(model, guide, *args)
    model_ref, elbo_ref = weakref.ref(model), weakref.ref(elbo)
    del model, guide
    gc.collect()
    assert model_ref() is None
    assert len(elbo.compiled_fn.compiled) == 0  # the entry went with the model
    del elbo
    gc.collect()
    assert elbo_ref() is None


# ---------------------------------------------------------------------------- bad input


def branchy():
    """A model that branches in Python on a sampled value."""

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        if loc > 0:
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)
        else:
            pyro.sample("obs", dist.Normal(-3.0 * loc, 2.0), obs=data)

    def guide(data):
        pyro.sample("loc", dist.Normal(pyro.param("loc_loc", torch.tensor(0.0)), 1.0))

    return model, guide, (torch.tensor(0.7),), {}


@pytest.mark.parametrize("backend", ["auto", "torchscript", "aten", "aten-jit"])
def test_a_branch_on_a_sampled_value_is_guarded(backend):
    """A guide draws on one side of a branch or the other: each call's guard sends the
    other side to eager, and every step equals eager Pyro's from the same seed."""
    model, guide, args, _ = branchy()
    eager, lazy = Trace_ELBO(), JitTrace_ELBO(backend=backend)
    branches = set()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StructureWarning)
        warm_up([eager, lazy], model, guide, args, {})
        for seed in range(6):
            pyro.set_rng_seed(seed)
            branches.add(poutine.trace(guide).get_trace(*args).nodes["loc"]["value"].item() > 0)
            pyro.set_rng_seed(seed)
            expected_loss = eager.loss_and_grads(model, guide, *args)
            expected = take_grads()
            pyro.set_rng_seed(seed)
            actual_loss = lazy.loss_and_grads(model, guide, *args)
            actual = take_grads()
            assert_loss_match(actual_loss, expected_loss)
            assert_grads_match(actual, expected)
    assert branches == {True, False}  # both sides of the branch were compared
    stats = lazy.compiled_fn.stats
    assert (stats.compilations, stats.fallbacks, stats.guarded) == (2, 0, 1)  # one each side


def test_data_dependent_branch_strict_raises():
    model, guide, args, _ = branchy()
    elbo = JitTrace_ELBO(strict=True)
    with pytest.raises(LazyJitError, match="structure depends on tensor values"):
        for _ in range(4):  # auto: at its first capture
            elbo.loss_and_grads(model, guide, *args)


def test_branch_on_a_data_dependent_shape_strict_raises():
    """Shapes are in the cache key, but not the size of a selection made by the data."""

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        above = data[data > loc]
        scale = 1.0 if above.shape[0] > 2 else 3.0
        with pyro.plate("data", data.size(0)):
            pyro.sample("obs", dist.Normal(loc, scale), obs=data)

    def guide(data):
        pyro.sample("loc", dist.Normal(pyro.param("loc_loc", torch.tensor(0.0)), 1.0))

    elbo = JitTrace_ELBO(strict=True)
    with pytest.raises(LazyJitError, match="structure depends on tensor values"):
        for _ in range(4):  # auto: at its first capture
            elbo.loss_and_grads(model, guide, torch.linspace(-2.0, 2.0, 5))


@pytest.mark.parametrize(
    "lazy_cls", [JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO]
)
def test_every_elbo_routes_strict(lazy_cls):
    model, guide, args, _ = branchy()
    elbo = lazy_cls(
        strict=True, max_plate_nesting=0, strict_enumeration_warning=False, backend="aten"
    )
    with pytest.raises(LazyJitError, match=lazy_cls.__name__):
        elbo.loss_and_grads(model, guide, *args)


# ---------------------------------------------------------------------------- install


def test_install_swaps_and_restores():
    originals = {
        "trace": pyro.ops.jit.trace,
        "infer": pyro.infer.JitTrace_ELBO,
        "module": pyro.infer.trace_elbo.JitTrace_ELBO,
        "enum": pyro.infer.JitTraceEnum_ELBO,
        "graph": pyro.infer.tracegraph_elbo.JitTraceGraph_ELBO,
        "mean_field": pyro.infer.trace_mean_field_elbo.JitTraceMeanField_ELBO,
    }
    assert originals["infer"] is not JitTrace_ELBO
    with lazyjit.install():
        assert lazyjit.is_installed()
        assert pyro.ops.jit.trace is lazyjit.trace
        assert pyro.infer.JitTrace_ELBO is JitTrace_ELBO
        assert pyro.infer.trace_elbo.JitTrace_ELBO is JitTrace_ELBO
        assert pyro.infer.JitTraceEnum_ELBO is JitTraceEnum_ELBO
        assert pyro.infer.traceenum_elbo.JitTraceEnum_ELBO is JitTraceEnum_ELBO
        assert pyro.infer.JitTraceGraph_ELBO is JitTraceGraph_ELBO
        assert pyro.infer.tracegraph_elbo.JitTraceGraph_ELBO is JitTraceGraph_ELBO
        assert pyro.infer.JitTraceMeanField_ELBO is JitTraceMeanField_ELBO
        with lazyjit.install():  # nested: the inner exit keeps it installed
            pass
        assert pyro.infer.JitTrace_ELBO is JitTrace_ELBO
    assert not lazyjit.is_installed()
    assert pyro.ops.jit.trace is originals["trace"]
    assert pyro.infer.JitTrace_ELBO is originals["infer"]
    assert pyro.infer.trace_elbo.JitTrace_ELBO is originals["module"]
    assert pyro.infer.JitTraceEnum_ELBO is originals["enum"]
    assert pyro.infer.tracegraph_elbo.JitTraceGraph_ELBO is originals["graph"]
    assert pyro.infer.trace_mean_field_elbo.JitTraceMeanField_ELBO is originals["mean_field"]

    lazyjit.install()
    lazyjit.install()
    lazyjit.uninstall()
    assert pyro.infer.JitTrace_ELBO is originals["infer"]
    lazyjit.uninstall()  # a no-op when not installed


UNMODIFIED_SCRIPT = """
import torch
import pyro
import pyro.distributions as dist
from pyro.infer import SVI, JitTrace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.optim import Adam

def model(data):
    loc = pyro.sample("loc", dist.Normal(0., 10.))
    scale = pyro.sample("scale", dist.LogNormal(0., 3.))
    with pyro.plate("data", data.size(0)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)

@pyro.ops.jit.trace
def log_density(data):
    return pyro.poutine.trace(model).get_trace(data).log_prob_sum()

data = dist.Normal(0.5, 2.).sample((100,))
guide = AutoDiagonalNormal(model)
guide(data)
elbo = JitTrace_ELBO()
svi = SVI(model, guide, Adam({"lr": 0.01}), elbo)
losses = [svi.step(data) for _ in range(20)]
density = log_density(data)
"""


def test_unmodified_script_runs_through_lazyjit(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(UNMODIFIED_SCRIPT))
    with lazyjit.install():
        result = runpy.run_path(str(script))
    elbo = result["elbo"]
    assert type(elbo) is JitTrace_ELBO
    assert elbo.compiled_fn.stats.compilations == 1
    assert elbo.compiled_fn.stats.hits == 19
    assert isinstance(result["log_density"], lazyjit.CompiledFunction)
    assert torch.isfinite(result["density"])
    assert result["losses"][-1] < result["losses"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pyro's own jit, uninstalled
        assert type(runpy.run_path(str(script))["elbo"]) is pyro.infer.trace_elbo.JitTrace_ELBO


# ---------------------------------------------------------------------------- convergence


def run_svi(elbo, steps: int) -> dict[str, torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide, args, _ = gaussian_autodiag()
    guide(*args)
    # The compiled ELBO's first call draws extra random numbers (param discovery and
    # tracing); spend them before the seed is set so both runs see the same draws.
    elbo.loss_and_grads(model, guide, *args)
    take_grads()
    pyro.set_rng_seed(1)
    svi = SVI(model, guide, Adam({"lr": 0.01}), elbo)
    for _ in range(steps):
        svi.step(*args)
    return {"median": guide.median(), "data_mean": args[0].mean()}


def test_svi_converges_to_eager_posterior():
    expected = run_svi(Trace_ELBO(), 2000)
    actual = run_svi(JitTrace_ELBO(), 2000)
    assert abs(expected["median"]["loc"] - expected["data_mean"]) < 0.3  # it did converge
    for site in ("loc", "scale"):
        assert abs(actual["median"][site] - expected["median"][site]) < 0.05
