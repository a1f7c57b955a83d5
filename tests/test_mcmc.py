"""HMC and NUTS with a lazily compiled potential energy and gradient (lazyjit.mcmc,
lazyjit.potential)."""

import importlib
import math
import pickle
import warnings

import pyro
import pyro.distributions as dist
import pyro.infer.mcmc
import pyro.infer.mcmc.api
import pyro.ops.integrator
import pytest
import torch
from pyro.infer import MCMC
from pyro.infer.autoguide.initialization import init_to_median, init_to_sample, init_to_uniform
from pyro.ops.integrator import potential_grad
from pyro.ops.stats import effective_sample_size
from torch.testing import assert_close

import lazyjit
import lazyjit.potential
from lazyjit import LazyJitError, StructureWarning, examples
from lazyjit.backends import AutoBackend, TierPolicy

# "aten" returns gradients computed inside its graph through the same value_and_grad.
BACKENDS = [b for b in ("torchscript", "eager", "aten", "aten-jit") if b in lazyjit.BACKENDS]

SLOW = pytest.mark.slow

# Pyro's own jit, the reference in some tests, warns that torch.jit.trace is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*:DeprecationWarning")


# Models live at module level: multi-chain MCMC pickles them into worker processes.


def eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", y.shape[0]):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def constrained_model(data):
    scale = pyro.sample("scale", dist.Gamma(2.0, 2.0).expand([3]).to_event(1))
    probs = pyro.sample("probs", dist.Dirichlet(torch.ones(3)))
    corr = pyro.sample("corr", dist.LKJCholesky(3, concentration=2.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample(
            "obs", dist.MultivariateNormal(probs, scale_tril=scale[..., None] * corr), obs=data
        )


def mixture(data):
    weight = pyro.sample("weight", dist.Beta(2.0, 2.0))
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    with pyro.plate("data", data.shape[0]):
        which = pyro.sample("which", dist.Bernoulli(weight))
        pyro.sample("obs", dist.Normal(locs[which.long()], 1.0), obs=data)


def normal_normal(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", data.shape[0]):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)


def branching_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    if x > 0:  # a decision on a latent value: a trace would bake in one branch
        pyro.sample("y", dist.Normal(x, 1.0), obs=torch.tensor(1.0))
    else:
        pyro.sample("y", dist.Normal(-x, 2.0), obs=torch.tensor(1.0))


def poisson_latent():
    count = pyro.sample("count", dist.Poisson(3.0))
    pyro.sample("obs", dist.Normal(count, 1.0), obs=torch.tensor(2.0))


def nan_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.factor("broken", x * torch.tensor(float("nan")))


def gaussian_args():
    return (examples.gaussian_data(100),)


def eight_schools_args():
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    return y, sigma


def constrained_args():
    return (dist.MultivariateNormal(torch.zeros(3), torch.eye(3)).sample((50,)),)


def mixture_args():
    return (torch.cat([torch.randn(20) - 2.0, torch.randn(20) + 2.0]),)


MODELS = {
    "gaussian": (examples.gaussian_model, gaussian_args),
    "eight_schools": (eight_schools, eight_schools_args),
    "constrained": (constrained_model, constrained_args),
    "logistic": (examples.logistic_model, examples.logistic_data),
    "enumerated_mixture": (mixture, mixture_args),
}


def rel_err(actual, expected):
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def nearby_points(z, num):
    """The initial point and ``num`` random points around it, all valid unconstrained values."""
    points = [z]
    for _ in range(num):
        points.append({k: v + 0.5 * torch.randn_like(v) for k, v in z.items()})
    return points


def run_nuts(kernel, args, num, seed=1, **mcmc_kwargs):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(kernel, num_samples=num, warmup_steps=num, disable_progbar=True, **mcmc_kwargs)
    mcmc.run(*args)
    return mcmc


def assert_same_posterior_means(ours, theirs, sites):
    """Means of independent chains agree within 4 Monte Carlo standard errors."""
    for k in sites:
        variance = 0.0
        for samples in (ours[k], theirs[k]):
            ess = effective_sample_size(samples[None, :, None]).item()
            variance += samples.std().item() ** 2 / ess
        assert abs(ours[k].mean() - theirs[k].mean()).item() < 4 * math.sqrt(variance), k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_potential_and_gradient_match_pyro(name, backend):
    model, make_args = MODELS[name]
    args = make_args()
    pe = lazyjit.potential_fn(model, args, backend=backend, ignore_jit_warnings=True)
    for z in nearby_points(pe.initial_params, 4):
        energy, grads = pe.value_and_grad(z)
        # Pyro's eager _PEMaker._potential_fn and autograd, on copies of the same point.
        expected_grads, expected = potential_grad(pe.fn, {k: v.clone() for k, v in z.items()})
        assert rel_err(energy, expected) < 1e-5
        assert grads.keys() == expected_grads.keys()
        for k in grads:
            assert rel_err(grads[k], expected_grads[k]) < 1e-5, k
        assert rel_err(pe(z), expected) < 1e-5
    # One compiled entry served the five points and the plain calls, none ran eagerly.
    assert pe.compiled.stats.compilations == 1
    assert pe.compiled.stats.fallbacks == 0


def test_potential_fn_returns_what_hmc_needs():
    args = gaussian_args()
    pe = lazyjit.potential_fn(examples.gaussian_model, args, ignore_jit_warnings=True)
    assert set(pe.initial_params) == set(pe.transforms) == {"loc", "scale"}
    assert pe.compiled.stats.compilations == 0  # lazy: nothing compiled before first use
    assert pe.prototype_trace.nodes["obs"]["is_observed"]
    assert torch.isfinite(pe(pe.initial_params))
    assert pe.compiled.stats.compilations == 1


def test_potential_is_differentiable_through_autograd():
    """Code that differentiates the potential itself (Pyro's own kernels) gets the
    compiled gradient; double backward is refused rather than silently wrong."""
    pe = lazyjit.potential_fn(examples.gaussian_model, gaussian_args(), ignore_jit_warnings=True)
    z = {k: v.clone().requires_grad_() for k, v in pe.initial_params.items()}
    energy = pe(z)
    grads = torch.autograd.grad(2.0 * energy, list(z.values()))
    _, expected = pe.value_and_grad(z)
    for g, k in zip(grads, z):
        assert torch.allclose(g, 2.0 * expected[k])
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(pe(z), list(z.values()), create_graph=True)


def test_nuts_matches_pyro_jit_draw_for_draw():
    """Same seed, same trajectories: lazyjit changes how the gradient is computed, not what.
    (On TorchScript: a gradient computed inside a graph rounds differently, and a chain
    is chaotic, so ``auto``'s warm tier matches in distribution only.)"""
    args = gaussian_args()
    kwargs = {"jit_compile": True, "ignore_jit_warnings": True}
    ours = run_nuts(
        lazyjit.NUTS(examples.gaussian_model, backend="torchscript", **kwargs), args, 50
    )
    theirs = run_nuts(pyro.infer.mcmc.NUTS(examples.gaussian_model, **kwargs), args, 50)
    for k, v in ours.get_samples().items():
        assert torch.allclose(v, theirs.get_samples()[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("full_mass", [False, True])
def test_hmc_matches_pyro_jit_draw_for_draw(full_mass):
    args = gaussian_args()
    # A fixed step size keeps num_steps (trajectory length / step size) at 5.
    kwargs = {"jit_compile": True, "ignore_jit_warnings": True}
    kwargs.update(step_size=0.1, num_steps=5, adapt_step_size=False)
    hmc = lazyjit.HMC(examples.gaussian_model, full_mass=full_mass, backend="torchscript", **kwargs)
    ours = run_nuts(hmc, args, 30)
    theirs = run_nuts(
        pyro.infer.mcmc.HMC(examples.gaussian_model, full_mass=full_mass, **kwargs), args, 30
    )
    for k, v in ours.get_samples().items():
        assert torch.allclose(v, theirs.get_samples()[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kernel_class, backend", [(lazyjit.NUTS, "torchscript"), (lazyjit.HMC, "auto")]
)
def test_integrator_gets_value_and_grad(monkeypatch, kernel_class, backend):
    """Every gradient the integrator asks for comes from value_and_grad (where NUTS does
    not compile its leaves whole); the hook is undone after."""
    calls = []
    original = lazyjit.CompiledPotential.value_and_grad

    def counted(self, z):
        calls.append(1)
        return original(self, z)

    def no_autograd(*args):
        raise AssertionError("the integrator differentiated the potential with autograd")

    monkeypatch.setattr(lazyjit.CompiledPotential, "value_and_grad", counted)
    monkeypatch.setattr(lazyjit.potential._AttachGradient, "apply", no_autograd)
    steps = []
    step = pyro.ops.integrator._single_step_verlet
    monkeypatch.setattr(
        pyro.ops.integrator, "_single_step_verlet", lambda *a: steps.append(1) or step(*a)
    )
    hooked = [m.potential_grad for m in lazyjit.potential._HOOKED_MODULES]
    kernel = kernel_class(
        examples.gaussian_model, jit_compile=True, ignore_jit_warnings=True, backend=backend
    )
    run_nuts(kernel, gaussian_args(), 20)
    assert len(calls) >= len(steps) > 40
    assert [m.potential_grad for m in lazyjit.potential._HOOKED_MODULES] == hooked
    assert pyro.ops.integrator.potential_grad is potential_grad


def nuts_state(model, args, **kwargs):
    """A NUTS kernel set up on ``model`` and moved 15 iterations from its initial point,
    and a leaf's inputs there: (kernel, z, r, z_grads, log_slice, energy)."""
    pyro.set_rng_seed(3)
    kernel = lazyjit.NUTS(model, jit_compile=True, ignore_jit_warnings=True, **kwargs)
    kernel.setup(10, *args)
    params = kernel.initial_params
    for _ in range(15):
        params = kernel.sample(params)
    z, potential_energy, z_grads = kernel._fetch_from_cache()
    r, r_unscaled = kernel._sample_r(name="r")
    energy = kernel._kinetic_energy(r_unscaled) + potential_energy
    return kernel, z, r, z_grads, -energy - 0.1, energy


LEAF_CASES = {
    "gaussian": (examples.gaussian_model, gaussian_args, {}),
    "dense_mass": (examples.gaussian_model, gaussian_args, {"full_mass": True}),
    "slice_sampling": (eight_schools, eight_schools_args, {"use_multinomial_sampling": False}),
    "constrained": (constrained_model, constrained_args, {}),
}


@pytest.mark.parametrize("case", LEAF_CASES)
@pytest.mark.parametrize("backend", ["aten-jit", "auto", pytest.param("inductor", marks=SLOW)])
def test_compiled_leaf_matches_pyro_leaf(backend, case):
    """A compiled leaf is Pyro's ``_build_basetree``, field by field, both directions, over
    a changing step size and mass matrix (inputs, not constants of the leaf)."""
    model, make_args, kwargs = LEAF_CASES[case]
    kernel, z, r, z_grads, log_slice, energy = nuts_state(
        model, make_args(), backend=backend, **kwargs
    )
    assert kernel._compiled_leaf() is not None
    pyro_leaf = pyro.infer.mcmc.NUTS._build_basetree
    adapter = kernel.mass_matrix_adapter
    for i in range(6):
        if i == 3:
            adapter.inverse_mass_matrix = {
                k: 2.0 * v + 0.1 * torch.eye(len(v)) if v.dim() == 2 else 1.5 * v
                for k, v in adapter.inverse_mass_matrix.items()
            }
        kernel._adapter.step_size *= 1.1
        for direction in (1, 0):
            with lazyjit.potential.compiled_gradients():
                ours = kernel._build_basetree(z, r, z_grads, log_slice, direction, energy)
                theirs = pyro_leaf(kernel, z, r, z_grads, log_slice, direction, energy)
            for field in theirs._fields:
                # The weight is the new energy minus the slice's: a difference of two
                # large numbers, exact only to their rounding.
                atol = 1e-5 + (1e-6 * energy.abs().item() if field == "weight" else 0.0)
                assert_close(
                    getattr(ours, field),
                    getattr(theirs, field),
                    rtol=1e-4,
                    atol=atol,
                    msg=lambda m, f=field: f"{f}: {m}",
                )
    # auto's leaf starts eager; make it reach its compiled tiers too.
    assert kernel._leaf.compiled.stats.fallbacks == 0


def test_compiled_leaf_auto_tiers_up_and_stays_right(monkeypatch):
    policy = TierPolicy(warm_calls=2, hot_calls=math.inf)  # not inductor yet
    monkeypatch.setattr(lazyjit.BACKENDS["auto"], "policy", policy)
    kernel, z, r, z_grads, log_slice, energy = nuts_state(
        examples.gaussian_model, gaussian_args(), backend="auto"
    )
    (program,) = kernel._leaf.compiled.compiled.values()
    assert program.lanes["call"].tier == "aten-jit"
    with lazyjit.potential.compiled_gradients():
        ours = kernel._build_basetree(z, r, z_grads, log_slice, 1, energy)
        theirs = pyro.infer.mcmc.NUTS._build_basetree(kernel, z, r, z_grads, log_slice, 1, energy)
    assert_close(tuple(ours), tuple(theirs), rtol=1e-4, atol=1e-5)


def test_compiled_leaf_auto_follows_autos_policy_from_an_eager_tier_zero():
    kernel, *_ = nuts_state(examples.gaussian_model, gaussian_args(), backend="auto")
    (program,) = kernel._leaf.compiled.compiled.values()
    assert type(program.base) is lazyjit.Program  # TorchScript cannot trace a leaf
    assert program.lanes["call"].policy == lazyjit.BACKENDS["auto"].policy


def test_a_backend_object_reaches_the_potential_and_the_leaves():
    # docs/backends.md's way to take inductor's code when ready instead of at a counted call.
    when_ready = AutoBackend().replace(switch_calls=None)
    kernel, *_ = nuts_state(examples.gaussian_model, gaussian_args(), backend=when_ready)
    (leaf,) = kernel._leaf.compiled.compiled.values()
    (potential,) = kernel.potential_fn.compiled.compiled.values()
    assert leaf.lanes["call"].policy.switch_calls is None
    assert potential.lanes["value_and_grad"].policy.switch_calls is None


@pytest.mark.parametrize("backend", ["aten-jit", "auto"])
def test_nuts_with_compiled_leaves_samples_the_posterior(backend):
    args = gaussian_args()
    kwargs = {"jit_compile": True, "ignore_jit_warnings": True}
    kernel = lazyjit.NUTS(examples.gaussian_model, backend=backend, **kwargs)
    ours = run_nuts(kernel, args, 300).get_samples()
    assert kernel._leaf is not None and kernel._leaf.compiled.stats.hits > 100
    theirs = run_nuts(pyro.infer.mcmc.NUTS(examples.gaussian_model), args, 300, seed=2)
    assert_same_posterior_means(ours, theirs.get_samples(), ["loc", "scale"])


def test_singular_matrix_gives_nan_energy_like_pyro():
    def potential(z):
        a = z["a"]
        matrix = torch.stack([torch.stack([a.new_ones(()), a]), torch.stack([a, a.new_ones(())])])
        return torch.linalg.cholesky(matrix).diagonal().log().sum()

    pe = lazyjit.CompiledPotential(potential)
    assert torch.isfinite(pe({"a": torch.tensor(0.5)}))  # compiles at a valid point
    bad = {"a": torch.tensor(2.0)}  # [[1, 2], [2, 1]] is not positive definite
    for grad_fn in (potential_grad, lazyjit.potential._potential_grad):
        grads, energy = grad_fn(pe, bad)
        assert torch.isnan(energy)
        assert torch.equal(grads["a"], torch.zeros(()))


def test_normal_normal_posterior_matches_analytic():
    pyro.set_rng_seed(0)
    data = torch.randn(20) + 1.5
    precision = 1.0 + len(data)
    mean, sd = data.sum().item() / precision, precision**-0.5
    kernel = lazyjit.NUTS(normal_normal, jit_compile=True, ignore_jit_warnings=True)
    samples = run_nuts(kernel, (data,), 300).get_samples()["loc"]
    ess = effective_sample_size(samples[None, :, None]).item()
    assert ess > 20
    assert abs(samples.mean().item() - mean) < 4 * sd / math.sqrt(ess)
    assert abs(samples.std().item() / sd - 1) < 4 / math.sqrt(2 * ess)


def test_seed_model_posterior_agrees_with_eager_pyro():
    args = gaussian_args()
    ours = run_nuts(
        lazyjit.NUTS(examples.gaussian_model, jit_compile=True, ignore_jit_warnings=True),
        args,
        200,
        seed=3,
    ).get_samples()
    eager = run_nuts(pyro.infer.mcmc.NUTS(examples.gaussian_model), args, 200, seed=4).get_samples()
    assert_same_posterior_means(ours, eager, ("loc", "scale"))


def test_user_potential_fn_with_jit_compile_is_compiled():
    pe = lazyjit.potential_fn(examples.gaussian_model, gaussian_args(), backend="eager")
    kernel = lazyjit.NUTS(potential_fn=pe.fn, jit_compile=True, ignore_jit_warnings=True)
    assert isinstance(kernel.potential_fn, lazyjit.CompiledPotential)
    mcmc = run_nuts(kernel, (), 30, initial_params=pe.initial_params, transforms=pe.transforms)
    assert kernel.potential_fn.compiled.stats.compilations == 1
    assert (mcmc.get_samples()["scale"] > 0).all()  # transformed back to the constrained space


def test_pyro_kernels_accept_the_compiled_potential():
    """Without lazyjit's kernels (no hook), Pyro's NUTS gets the same gradients through
    autograd on the potential's output, and draws the same chain (on TorchScript, whose
    gradients round as autograd's do)."""
    args = gaussian_args()
    pe = lazyjit.potential_fn(
        examples.gaussian_model, args, backend="torchscript", ignore_jit_warnings=True
    )
    kwargs = {"initial_params": pe.initial_params, "transforms": pe.transforms}
    theirs = run_nuts(pyro.infer.mcmc.NUTS(potential_fn=pe), (), 30, **kwargs).get_samples()
    ours = run_nuts(lazyjit.NUTS(potential_fn=pe), (), 30, **kwargs).get_samples()
    for k in ours:
        assert torch.equal(ours[k], theirs[k])


def test_jit_compile_false_is_pyro():
    args = gaussian_args()
    kernel = lazyjit.NUTS(examples.gaussian_model)
    ours = run_nuts(kernel, args, 20).get_samples()
    theirs = run_nuts(pyro.infer.mcmc.NUTS(examples.gaussian_model), args, 20).get_samples()
    assert not isinstance(kernel.potential_fn, lazyjit.CompiledPotential)
    for k in ours:
        assert torch.equal(ours[k], theirs[k])


def test_constructor_rejects_unknown_backend():
    with pytest.raises(LazyJitError, match="unknown lazyjit backend"):
        lazyjit.NUTS(examples.gaussian_model, jit_compile=True, backend="nope")


def kernel_settings(kernel):
    """Everything Pyro's constructor stored on ``kernel`` and its warmup adapter (helper
    objects by type), without what lazyjit adds."""

    def plain(value):
        simple = (int, float, str, list, tuple, dict, type(None))
        return value if isinstance(value, simple) or callable(value) else type(value)

    settings = {k: v for k, v in vars(kernel).items() if k not in ("backend", "strict", "_leaf")}
    adapter = vars(settings.pop("_adapter"))
    settings.update({f"adapter.{k}": v for k, v in adapter.items()})
    return {k: plain(v) for k, v in settings.items()}


# Pyro's positional order, every value off its default (Pyro 1.9's signatures).
HMC_POSITIONAL = (None, 0.3, None, 7, False, False, True, {}, 2, True, {"check_trace": False})
HMC_POSITIONAL += (True, 0.7, init_to_median)
NUTS_POSITIONAL = (None, 0.3, False, False, True, False, {}, 2, True, {"check_trace": False})
NUTS_POSITIONAL += (True, 0.7, 4, init_to_median)


@pytest.mark.parametrize(
    "ours, theirs, args",
    [
        (lazyjit.HMC, pyro.infer.mcmc.HMC, HMC_POSITIONAL),
        (lazyjit.NUTS, pyro.infer.mcmc.NUTS, NUTS_POSITIONAL),
    ],
    ids=["HMC", "NUTS"],
)
def test_positional_arguments_are_pyros(ours, theirs, args):
    kernel = ours(examples.gaussian_model, *args, backend="eager", strict=True)
    assert kernel_settings(kernel) == kernel_settings(theirs(examples.gaussian_model, *args))
    assert (kernel.backend, kernel.strict) == ("eager", True)
    assert kernel._jit_compile and kernel._adapter.target_accept_prob == 0.7
    with pytest.raises(TypeError):  # as many positional arguments as Pyro's, no more
        ours(examples.gaussian_model, *args, "auto")


@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        (lazyjit.HMC, pyro.infer.mcmc.HMC, {"min_stepsize": 1e-3, "max_stepsize": 5.0}),
        (lazyjit.NUTS, pyro.infer.mcmc.NUTS, {"max_tree_depth": 3, "full_mass": True}),
    ],
    ids=["HMC", "NUTS"],
)
def test_pyro_keyword_arguments_reach_pyros_kernel(ours, theirs, kwargs):
    kernel = ours(examples.gaussian_model, backend="aten", **kwargs)
    assert kernel_settings(kernel) == kernel_settings(theirs(examples.gaussian_model, **kwargs))
    assert all(kernel_settings(kernel)[f"_{k}"] == v for k, v in kwargs.items() if "step" in k)
    assert kernel.backend == "aten"
    with pytest.raises(TypeError, match="no_such_option"):
        ours(examples.gaussian_model, no_such_option=1)


def test_a_new_pyro_keyword_needs_no_lazyjit_change(monkeypatch):
    seen = {}
    pyro_init = pyro.infer.mcmc.nuts.NUTS.__init__

    def init(self, *args, new_option=None, **kwargs):  # a Pyro release with a new option
        seen["new_option"] = new_option
        pyro_init(self, *args, **kwargs)

    monkeypatch.setattr(pyro.infer.mcmc.nuts.NUTS, "__init__", init)
    kernel = lazyjit.NUTS(examples.gaussian_model, None, 0.5, new_option="on", strict=True)
    assert seen == {"new_option": "on"}
    assert kernel.step_size == 0.5 and kernel.strict


def test_compiled_gradients_hook_nests_and_restores():
    originals = [m.potential_grad for m in lazyjit.potential._HOOKED_MODULES]
    hook = lazyjit.potential._potential_grad
    with lazyjit.potential.compiled_gradients():
        with lazyjit.potential.compiled_gradients():
            assert all(m.potential_grad is hook for m in lazyjit.potential._HOOKED_MODULES)
        assert all(m.potential_grad is hook for m in lazyjit.potential._HOOKED_MODULES)
    assert [m.potential_grad for m in lazyjit.potential._HOOKED_MODULES] == originals
    assert pyro.ops.integrator.potential_grad is potential_grad


def test_leaves_compile_only_where_the_backend_compiles_a_graph():
    compiles = {name for name, b in lazyjit.BACKENDS.items() if b.compiles_graph}
    assert compiles == {"aten-jit", "inductor", "auto"} & set(lazyjit.BACKENDS)
    kernel, *_ = nuts_state(examples.gaussian_model, gaussian_args(), backend="aten")
    assert kernel._compiled_leaf() is None and kernel._leaf is None


# Bad input -------------------------------------------------------------------------------


def test_data_dependent_model_is_guarded():
    kernel = lazyjit.NUTS(branching_model, jit_compile=True, ignore_jit_warnings=True)
    with warnings.catch_warnings():
        # The latent's sign changes often: its leaf's guard may fail often enough to make
        # it run eagerly (with a StructureWarning), which is right too.
        warnings.simplefilter("ignore", StructureWarning)
        samples = run_nuts(kernel, (), 30).get_samples()["x"]
    assert torch.isfinite(samples).all()
    assert kernel.potential_fn.compiled.stats.fallbacks == 0
    # The compiled potential follows both branches.
    for x in (-1.0, 1.0, -2.0):
        z = {"x": torch.tensor(x)}
        assert torch.allclose(kernel.potential_fn(z), kernel.potential_fn.fn(z))


def test_data_dependent_model_strict_raises():
    kernel = lazyjit.NUTS(branching_model, jit_compile=True, ignore_jit_warnings=True, strict=True)
    with pytest.raises(LazyJitError, match="structure depends on tensor values"):
        run_nuts(kernel, (), 10)


@pytest.mark.parametrize("init_strategy", [init_to_uniform, init_to_sample])
def test_discrete_latent_that_cannot_be_enumerated_is_a_clear_error(init_strategy):
    # Pyro's default initialization names the site itself; others fail later, in
    # biject_to, and lazyjit names the site then.
    match = "discrete (sample|latent) site 'count'"
    with pytest.raises(ValueError, match=match):
        lazyjit.potential_fn(poisson_latent, init_strategy=init_strategy)
    kernel = lazyjit.NUTS(poisson_latent, jit_compile=True, init_strategy=init_strategy)
    with pytest.raises(ValueError, match=match):
        run_nuts(kernel, (), 10)


def test_model_with_no_finite_initial_point_is_a_clear_error():
    kernel = lazyjit.NUTS(nan_model, jit_compile=True)
    with pytest.raises(ValueError, match="cannot find valid initial params"):
        run_nuts(kernel, (), 10)


@pytest.mark.parametrize("via", ["model", "potential_fn"])
def test_nan_potential_at_given_initial_point_is_a_clear_error(via):
    pe = lazyjit.potential_fn(examples.gaussian_model, gaussian_args(), ignore_jit_warnings=True)
    initial = {"loc": torch.tensor(0.0), "scale": torch.tensor(float("nan"))}
    if via == "model":
        kernel = lazyjit.NUTS(examples.gaussian_model, jit_compile=True, ignore_jit_warnings=True)
        args = gaussian_args()
    else:
        kernel, args = lazyjit.NUTS(potential_fn=pe), ()
    with pytest.raises(ValueError, match="the potential energy is nan"):
        run_nuts(kernel, args, 10, initial_params=initial)


# Processes -------------------------------------------------------------------------------


def check_compiled_in_worker(kernel, params, stage, i):
    """An MCMC hook: runs in each worker process, on the kernel it unpickled."""
    stats = kernel.potential_fn.compiled.stats
    assert stats.compilations == 1 and stats.fallbacks == 0, stats


def test_kernel_pickles_without_compiled_programs():
    kernel = lazyjit.NUTS(examples.gaussian_model, jit_compile=True, ignore_jit_warnings=True)
    run_nuts(kernel, gaussian_args(), 10)
    assert kernel.potential_fn.compiled.compiled  # compiled in this process
    clone = pickle.loads(pickle.dumps(kernel))
    assert not clone.potential_fn.compiled.compiled
    z = {k: v.clone() for k, v in kernel.potential_fn.initial_params.items()}
    energy, grads = clone.potential_fn.value_and_grad(z)
    expected, expected_grads = kernel.potential_fn.value_and_grad(z)
    assert torch.equal(energy, expected)
    assert len(clone.potential_fn.compiled.compiled) == 1  # compiled again, on first use


def test_sequential_chains():
    kernel = lazyjit.NUTS(examples.gaussian_model, jit_compile=True, ignore_jit_warnings=True)
    with pytest.warns(UserWarning, match="Chains will be drawn sequentially"):
        mcmc = run_nuts(kernel, gaussian_args(), 20, num_chains=2)
    assert mcmc.get_samples(group_by_chain=True)["loc"].shape == (2, 20)


def test_parallel_chains_compile_in_each_worker(monkeypatch):
    """Pyro pickles the kernel into spawned worker processes; each compiles on first use.

    Pyro runs chains in processes only when it sees a spare CPU for each; pretend it
    does on small CI machines.
    """
    monkeypatch.setattr(pyro.infer.mcmc.api.mp, "cpu_count", lambda: 4)
    kernel = lazyjit.NUTS(examples.gaussian_model, jit_compile=True, ignore_jit_warnings=True)
    mcmc = run_nuts(
        kernel,
        gaussian_args(),
        20,
        num_chains=2,
        mp_context="spawn",
        hook_fn=check_compiled_in_worker,
    )
    samples = mcmc.get_samples(group_by_chain=True)
    assert samples["loc"].shape == (2, 20)
    assert not torch.equal(samples["loc"][0], samples["loc"][1])


# install() -------------------------------------------------------------------------------

PYRO_KERNEL_NAMES = [
    ("pyro.infer", "HMC"),
    ("pyro.infer", "NUTS"),
    ("pyro.infer.mcmc", "HMC"),
    ("pyro.infer.mcmc", "NUTS"),
    ("pyro.infer.mcmc.hmc", "HMC"),
    ("pyro.infer.mcmc.nuts", "NUTS"),
]


def test_install_routes_pyro_kernels():
    originals = {(m, n): getattr(importlib.import_module(m), n) for m, n in PYRO_KERNEL_NAMES}
    with lazyjit.install():
        for m, n in PYRO_KERNEL_NAMES:
            assert getattr(importlib.import_module(m), n) is getattr(lazyjit, n)
        kernel = pyro.infer.NUTS(
            examples.gaussian_model, jit_compile=True, ignore_jit_warnings=True
        )
        run_nuts(kernel, gaussian_args(), 10)
        assert kernel.potential_fn.compiled.stats.compilations == 1
    for (m, n), original in originals.items():
        assert getattr(importlib.import_module(m), n) is original


# Long runs -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in lazyjit.BACKENDS if b != "eager"])
def test_eight_schools_posterior_agrees_with_eager_pyro_long(backend):
    args = eight_schools_args()
    kernel = lazyjit.NUTS(
        eight_schools, jit_compile=True, ignore_jit_warnings=True, backend=backend
    )
    ours = run_nuts(kernel, args, 1000, seed=5).get_samples()
    eager = run_nuts(pyro.infer.mcmc.NUTS(eight_schools), args, 1000, seed=6).get_samples()
    assert_same_posterior_means(ours, eager, ("mu", "tau"))
