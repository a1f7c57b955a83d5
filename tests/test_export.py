"""lazyjit.export and lazyjit.load: artifacts checked against eager Pyro on the same
inputs, params and random state."""

import json
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import lazyjit
from lazyjit.errors import StructureError
from lazyjit.examples import gaussian_data, gaussian_model, scale_log_prob


def observations(x):
    """The seed Gaussian model's observations, drawn for ``x``'s batch."""
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 3.0))
    with pyro.plate("data", x.size(0)):
        return pyro.sample("obs", dist.Normal(loc, scale))


@pytest.fixture
def guide():
    """An AutoNormal guide of the seed Gaussian model, fitted by SVI."""
    data = gaussian_data(50)
    guide = AutoNormal(gaussian_model)
    svi = pyro.infer.SVI(
        gaussian_model, guide, pyro.optim.Adam({"lr": 0.05}), lazyjit.JitTrace_ELBO()
    )
    for _ in range(30):
        svi.step(data)
    return guide


@pytest.fixture
def predictive(guide):
    """The posterior predictive of the seed Gaussian model: draws for ``x``'s batch."""

    def predict(x):
        latents = pyro.poutine.trace(guide).get_trace(x)
        return pyro.poutine.replay(observations, latents)(x)

    return predict


def eager_draws(fn, x, seed):
    torch.manual_seed(seed)
    return fn(x).detach()


def test_bake_freezes_the_params_and_matches_eager(tmp_path):
    x, y = torch.randn(5), torch.randn(5)
    expected = scale_log_prob(x, y).detach()
    artifact = lazyjit.export(scale_log_prob, (x, y), path=tmp_path / "lp.pt2")
    assert artifact.info.params == "bake" and artifact.info.param_names == ("scale",)
    assert torch.equal(artifact(x, y), expected)
    pyro.get_param_store()["scale"] = torch.tensor(3.0)
    assert torch.equal(artifact(x, y), expected)  # the fitted value, not the store's
    assert not torch.equal(scale_log_prob(x, y).detach(), expected)


def test_inputs_takes_the_params_by_name(tmp_path):
    x, y = torch.randn(5), torch.randn(5)
    artifact = lazyjit.export(
        lazyjit.trace(scale_log_prob), (x,), {"y": y}, path=tmp_path / "lp.pt2", params="inputs"
    )
    for scale in (0.5, 3.0):
        pyro.get_param_store()["scale"] = torch.tensor(scale)
        state = pyro.get_param_store().get_state()["params"]  # unconstrained, all params
        assert torch.equal(artifact(x, y, params=state), scale_log_prob(x, y).detach())
    with pytest.raises(TypeError, match="params="):
        artifact(x, y)
    with pytest.raises(KeyError, match="scale"):
        artifact(x, y, params={})


def test_one_artifact_serves_two_batch_sizes(tmp_path, predictive):
    artifact = lazyjit.export(
        predictive, (torch.zeros(10),), path=tmp_path / "p.pt2", dynamic={0: {0: "batch"}}
    )
    assert artifact.info.dynamic == {0: {0: "batch"}}
    for n in (3, 17):
        x = torch.zeros(n)
        torch.manual_seed(4)
        assert torch.equal(artifact(x), eager_draws(predictive, x, 4))


def test_random_program_draws_from_the_seed_or_generator_passed(tmp_path, predictive):
    x = torch.zeros(8)
    artifact = lazyjit.export(predictive, (x,), path=tmp_path / "p.pt2")
    assert artifact.info.random
    stream = torch.get_rng_state()
    assert torch.equal(artifact(x, seed=2), eager_draws(predictive, x, 2))
    torch.set_rng_state(stream)
    artifact(x, seed=2)
    assert torch.equal(torch.get_rng_state(), stream)  # the global stream is left alone
    generator = torch.Generator().manual_seed(9)
    draws = [artifact(x, generator=generator) for _ in range(2)]
    torch.manual_seed(9)
    assert all(torch.equal(d, predictive(x).detach()) for d in draws)
    assert not torch.equal(draws[0], draws[1])
    with pytest.raises(TypeError, match="not both"):
        artifact(x, seed=1, generator=generator)


def test_pyro_predictive_exports_with_its_dict_of_samples(tmp_path, guide):
    samples = pyro.infer.Predictive(observations, guide=guide, num_samples=20, parallel=True)
    artifact = lazyjit.export(
        samples, (torch.zeros(4),), path=tmp_path / "s.pt2", dynamic={0: {0: "batch"}}
    )
    x = torch.zeros(9)
    drawn = artifact(x, seed=1)
    torch.manual_seed(1)
    expected = samples(x)
    assert drawn.keys() == expected.keys() == {"loc", "scale", "obs"}
    assert all(torch.equal(drawn[k], expected[k]) for k in expected)
    assert drawn["obs"].shape == (20, 9)


def test_export_draws_nothing_from_the_callers_stream(tmp_path, predictive):
    x = torch.zeros(4)
    torch.manual_seed(3)
    expected = predictive(x).detach()
    torch.manual_seed(3)
    lazyjit.export(predictive, (x,), path=tmp_path / "p.pt2")
    assert torch.equal(predictive(x).detach(), expected)


def test_aot_artifact_matches_eager_across_batch_sizes(tmp_path, predictive):
    path = tmp_path / "aot.pt2"
    artifact = lazyjit.export(
        predictive, (torch.zeros(10),), path=path, dynamic={0: {0: "batch"}}, aot=True
    )
    assert artifact.aot and artifact.info.aot
    plain = torch._inductor.aoti_load_package(str(path))  # the documented torch-only route
    for n in (2, 33):
        x = torch.zeros(n)
        expected = eager_draws(predictive, x, 6)
        # The same draws; inductor's vectorized math may round otherwise than aten's.
        torch.testing.assert_close(artifact(x, seed=6), expected, rtol=1e-5, atol=1e-6)
        torch.manual_seed(6)
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)
    program = lazyjit.load(path, aot=False)
    assert not program.aot and torch.equal(program(x, seed=6), expected)


@pytest.mark.slow
def test_aot_artifact_takes_params_as_inputs(tmp_path):
    x, y = torch.randn(6), torch.randn(6)
    artifact = lazyjit.export(
        scale_log_prob, (x, y), path=tmp_path / "a.pt2", params="inputs", aot=True
    )
    pyro.get_param_store()["scale"] = torch.tensor(2.5)
    state = pyro.get_param_store().get_state()["params"]
    assert torch.allclose(artifact(x, y, params=state), scale_log_prob(x, y).detach())


LOADER = textwrap.dedent(
    """
    import json, sys
    import torch
    import lazyjit

    path = sys.argv[1]
    artifact = lazyjit.load(path)
    draws = artifact(torch.zeros(7), seed=5)
    torch.manual_seed(5)
    plain = torch.export.load(path).module()(torch.zeros(7))
    print(json.dumps({
        "draws": draws.tolist(), "plain": plain.tolist(),
        "pyro_imported": any(m == "pyro" or m.startswith("pyro.") for m in sys.modules),
        "settings": lazyjit.config.COMPILE_WORKER in (True, False),
    }))
    """
)


def test_a_fresh_process_loads_and_runs_it_without_pyro(tmp_path, predictive):
    path = tmp_path / "p.pt2"
    lazyjit.export(predictive, (torch.zeros(3),), path=path, dynamic={0: {0: "n"}})
    done = subprocess.run(
        [sys.executable, "-c", LOADER, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    expected = eager_draws(predictive, torch.zeros(7), 5).tolist()
    assert result == {
        "draws": expected,
        "plain": expected,
        "pyro_imported": False,
        "settings": True,
    }


def branchy(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    if z > 0:  # the line the error names
        return x + z
    return x - z


def test_a_value_dependent_structure_names_the_line_and_site(tmp_path):
    with pytest.raises(StructureError, match="after Pyro site 'z'") as error:
        lazyjit.export(branchy, (torch.ones(3),), path=tmp_path / "b.pt2")
    line = branchy.__code__.co_firstlineno + 2
    assert error.value.site == f"{__file__}:{line}"


def test_unexportable_calls_raise_clear_errors(tmp_path):
    path = tmp_path / "e.pt2"
    x = torch.ones(6)
    with pytest.raises(lazyjit.LazyJitError, match="returned float"):
        lazyjit.export(lambda x: (x.sum(), 3.0), (x,), path=path)
    with pytest.raises(lazyjit.LazyJitError, match="returned NoneType"):
        lazyjit.export(gaussian_model, (x,), path=path)
    with pytest.raises(lazyjit.LazyJitError, match="returns no tensor"):
        lazyjit.export(lambda x: {}, (x,), path=path)
    with pytest.raises(lazyjit.LazyJitError, match="fixes some of them"):
        lazyjit.export(lambda x: x.reshape(2, 3), (x,), path=path, dynamic={0: {0: "n"}})
    with pytest.raises(ValueError, match="params must be"):
        lazyjit.export(scale_log_prob, (x, x), path=path, params="frozen")
    with pytest.raises(ValueError, match=r"\.pt2"):
        lazyjit.export(scale_log_prob, (x, x), path=tmp_path / "e.pt")
    with pytest.raises(ValueError, match="does not have"):
        lazyjit.export(scale_log_prob, (x, x), path=path, dynamic={2: {0: "n"}})
    with pytest.raises(ValueError, match="not a tensor"):
        lazyjit.export(lambda x, k: x * k, (x, 2), path=path, dynamic={1: {0: "n"}})
    with pytest.raises(ValueError, match="has 1"):
        lazyjit.export(scale_log_prob, (x, x), path=path, dynamic={0: {1: "n"}})
    with pytest.raises(ValueError, match="2 or more"):
        lazyjit.export(scale_log_prob, (x[:1], x[:1]), path=path, dynamic={0: {0: "n"}})


def test_load_and_call_errors(tmp_path):
    x = torch.randn(3)
    not_one = tmp_path / "not.pt2"
    not_one.write_text("hello")
    with pytest.raises(lazyjit.LazyJitError, match="not an artifact"):
        lazyjit.load(not_one)
    artifact = lazyjit.export(scale_log_prob, (x, x), path=tmp_path / "lp.pt2")
    with pytest.raises(lazyjit.LazyJitError, match="aot=True"):
        lazyjit.load(artifact.path, aot=True)
    with pytest.raises(TypeError, match="2 tensor arguments, got 1"):
        artifact(x)
    with pytest.raises(TypeError, match="baked"):
        artifact(x, x, params={})
