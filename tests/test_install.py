"""``lazyjit.install()`` reaches every Pyro module, MiniPyro included (issue 18)."""

import importlib
import pkgutil
import sys
import types
import warnings

import pyro
import pyro.contrib.minipyro as minipyro
import pyro.distributions as dist
import pytest
import torch

import lazyjit
import lazyjit.minipyro
from lazyjit.installer import REPLACEMENTS

ORIGINALS = {id(original): original for original, _ in REPLACEMENTS}


@pytest.fixture(scope="session")
def all_pyro_modules() -> list[str]:
    """Imports every module of the installed Pyro that imports (not those needing an
    optional dependency, such as funsor); their names."""
    imported = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of Pyro's own modules
        for info in pkgutil.walk_packages(pyro.__path__, "pyro.", onerror=lambda name: None):
            try:
                importlib.import_module(info.name)
            except Exception:  # noqa: BLE001 - an optional dependency is missing
                continue
            imported.append(info.name)
    return imported


def pyro_bindings() -> dict[tuple[str, str], object]:
    """Every attribute of an imported Pyro module that is one of Pyro's originals."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "pyro" or name.startswith("pyro.")):
            continue
        for attribute, value in list(vars(module).items()):
            if id(value) in ORIGINALS:
                found[name, attribute] = value
    return found


def test_install_replaces_every_binding_in_every_pyro_module(all_pyro_modules):
    assert "pyro.contrib.mue.models" in all_pyro_modules
    before = pyro_bindings()
    # Names bound by `from ... import` in modules that install() did not list before.
    for binding in [
        ("pyro.contrib.epidemiology.compartmental", "JitTrace_ELBO"),
        ("pyro.contrib.epidemiology.compartmental", "NUTS"),
        ("pyro.contrib.forecast.forecaster", "NUTS"),
        ("pyro.contrib.mue.models", "JitTrace_ELBO"),
        ("pyro.infer.mcmc.api", "HMC"),
        ("pyro.contrib.minipyro", "JitTrace_ELBO"),
    ]:
        assert binding in before
    replacement = {id(original): new for original, new in REPLACEMENTS}
    with lazyjit.install():
        assert pyro_bindings() == {}
        for (module, attribute), original in before.items():
            assert getattr(sys.modules[module], attribute) is replacement[id(original)]
    assert not lazyjit.is_installed()
    assert pyro_bindings() == before
    for (module, attribute), original in before.items():
        assert getattr(sys.modules[module], attribute) is original
    # lazyjit's classes keep Pyro's as their bases.
    assert issubclass(lazyjit.NUTS, pyro.infer.mcmc.nuts.NUTS)
    assert pyro.infer.mcmc.nuts.NUTS in lazyjit.NUTS.__mro__


def test_modules_that_imported_names_see_lazyjit_inside_install():
    import pyro.contrib.epidemiology.compartmental as compartmental
    import pyro.contrib.mue.models as mue

    pyro_nuts, pyro_elbo = compartmental.NUTS, compartmental.JitTrace_ELBO
    assert pyro_nuts is not lazyjit.NUTS
    with lazyjit.install():
        assert compartmental.NUTS is lazyjit.NUTS
        assert compartmental.JitTrace_ELBO is lazyjit.JitTrace_ELBO
        assert mue.JitTrace_ELBO is lazyjit.JitTrace_ELBO
        # A module imported inside install() binds the patched package attributes.
        later = types.ModuleType("later")
        exec("from pyro.infer import NUTS, JitTraceEnum_ELBO", later.__dict__)
        assert later.NUTS is lazyjit.NUTS
        assert later.JitTraceEnum_ELBO is lazyjit.JitTraceEnum_ELBO
        with lazyjit.install():  # nested: the inner exit keeps it installed
            pass
        assert compartmental.NUTS is lazyjit.NUTS
    assert compartmental.NUTS is pyro_nuts
    assert compartmental.JitTrace_ELBO is pyro_elbo


# ---------------------------------------------------------------------------- MiniPyro
# The model and guide of Pyro's examples/minipyro.py.


def model(data):
    loc = minipyro.sample("loc", dist.Normal(0.0, 1.0))
    with minipyro.plate("data", len(data), dim=-1):
        minipyro.sample("obs", dist.Normal(loc, 1.0), obs=data)


def guide(data):
    guide_loc = minipyro.param("guide_loc", torch.tensor(0.0))
    guide_scale = torch.exp(minipyro.param("guide_scale_log", torch.tensor(0.0)))
    minipyro.sample("loc", dist.Normal(guide_loc, guide_scale))


def run_minipyro_svi(elbo, steps: int = 20, data_size: int = 100):
    torch.manual_seed(0)
    data = torch.randn(data_size) + 3.0
    minipyro.get_param_store().clear()
    svi = minipyro.SVI(model, guide, minipyro.Adam({"lr": 0.1}), elbo)
    losses = [svi.step(data) for _ in range(steps)]
    params = {name: minipyro.param(name).detach().clone() for name in minipyro.PARAM_STORE}
    minipyro.get_param_store().clear()
    return losses, params


@pytest.mark.parametrize("backend", ["auto", "aten"])
def test_minipyro_jit_elbo_matches_eager(backend):
    eager_losses, eager_params = run_minipyro_svi(minipyro.elbo)
    elbo = lazyjit.minipyro.JitTrace_ELBO(backend=backend, ignore_jit_warnings=True)
    losses, params = run_minipyro_svi(elbo)
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    assert eager_losses[-1] < eager_losses[0]
    assert params.keys() == eager_params.keys() == {"guide_loc", "guide_scale_log"}
    for name in params:
        assert torch.allclose(params[name], eager_params[name], rtol=1e-5, atol=1e-6)
    assert len(elbo._entries) == 1  # one compile for 20 steps
    # The param store was cleared: the same signature finds its params anew.
    assert run_minipyro_svi(elbo, steps=3)[0] == pytest.approx(eager_losses[:3], rel=1e-5)
    assert len(elbo._entries) == 1
    run_minipyro_svi(elbo, steps=2, data_size=50)
    assert len(elbo._entries) == 2  # a new batch size is a new entry, not a wrong reuse


def test_install_routes_minipyro_and_pyro_generic():
    from pyro.generic import infer, pyro_backend

    original = minipyro.JitTrace_ELBO
    with lazyjit.install():
        assert minipyro.JitTrace_ELBO is lazyjit.minipyro.JitTrace_ELBO
        with pyro_backend("minipyro"):  # how examples/minipyro.py --jit picks its ELBO
            elbo = infer.JitTrace_ELBO(ignore_jit_warnings=True)
        assert type(elbo) is lazyjit.minipyro.JitTrace_ELBO
        losses, _ = run_minipyro_svi(elbo)
    assert minipyro.JitTrace_ELBO is original
    assert losses == pytest.approx(run_minipyro_svi(minipyro.elbo)[0], rel=1e-5)
