"""Soak and leak tests: long SVI runs keep memory flat, the cache stays bounded, and
dropped models, guides and ELBOs are freed.

Pyro's jit lost users over memory growth (Ax and BoTorch turned it off). The long runs
are ``slow`` (``pytest -m slow tests/test_soak.py``); short variants run by default.
"""

from __future__ import annotations

import gc
import os
import warnings
import weakref

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal
from pyro.optim import Adam

import lazyjit
from lazyjit import JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO
from lazyjit.examples import gaussian_data, gaussian_model

MB = 2**20
RSS_GROWTH_LIMIT_MB = 20
ELBO_CLASSES = [JitTrace_ELBO, JitTraceEnum_ELBO, JitTraceGraph_ELBO, JitTraceMeanField_ELBO]
FAST_BACKENDS = [name for name in lazyjit.BACKENDS if name != "inductor"]
COMPILING_BACKENDS = [name for name in lazyjit.BACKENDS if name != "eager"]


@pytest.fixture(autouse=True)
def quiet_tracer():
    """Pyro's distributions make tensor constants; TorchScript says so on every compile."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def rss_mb() -> float:
    """Resident memory now (not the peak, which ``resource`` reports), after a collection."""
    gc.collect()
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc")


def gaussian_svi(**elbo_options) -> tuple[SVI, JitTrace_ELBO, torch.Tensor]:
    data = gaussian_data(150)
    elbo = JitTrace_ELBO(**elbo_options)
    guide = AutoDiagonalNormal(gaussian_model)
    return SVI(gaussian_model, guide, Adam({"lr": 0.01}), elbo), elbo, data


def cycling_sizes(num_sizes: int, repeat: int):
    """Batch sizes 51, 52, ... cycling through ``num_sizes`` values, each for ``repeat`` steps."""
    step = 0
    while True:
        yield 51 + (step // repeat) % num_sizes
        step += 1


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("backend", COMPILING_BACKENDS)
def test_20000_steps_keep_memory_flat(backend):
    svi, elbo, data = gaussian_svi(backend=backend)
    rss = {}
    losses = []
    for step in range(1, 20_001):
        losses.append(svi.step(data[:100]))
        if step in (2_000, 20_000):
            rss[step] = rss_mb()
    growth = rss[20_000] - rss[2_000]
    print(
        f"{backend}: RSS after step 2,000: {rss[2_000]:.1f} MB, after 20,000: {rss[20_000]:.1f} MB"
    )
    assert growth < RSS_GROWTH_LIMIT_MB, rss
    assert elbo.compiled_fn.stats.compilations == 1
    assert sum(losses[-100:]) < sum(losses[:100])  # it fitted: the run did real work


@pytest.mark.slow
@needs_proc
def test_20000_steps_with_cycling_batch_sizes_keep_cache_and_memory_bounded():
    """50 batch sizes through a 16-entry cache: a compilation and an eviction every 10
    steps, 2,000 of each over the run, on the backend that compiles fastest."""
    svi, elbo, data = gaussian_svi(backend="torchscript", cache_size=16)
    sizes = cycling_sizes(50, repeat=10)
    rss = {}
    for step in range(1, 20_001):
        svi.step(data[: next(sizes)])
        assert len(elbo.compiled_fn.compiled) <= 16
        if step in (2_000, 20_000):
            rss[step] = rss_mb()
    stats = elbo.compiled_fn.stats
    print(
        f"RSS after step 2,000: {rss[2_000]:.1f} MB, after 20,000: {rss[20_000]:.1f} MB; "
        f"{stats.compilations} compilations, {stats.evictions} evictions"
    )
    assert rss[20_000] - rss[2_000] < RSS_GROWTH_LIMIT_MB, rss
    assert stats.compilations == 2_000 and stats.evictions == 2_000 - 16


def test_cycling_batch_sizes_keep_the_cache_bounded():
    """The short variant: a working set that fits stops compiling; one that does not is
    evicted down to the bound."""
    svi, elbo, data = gaussian_svi(backend="torchscript", cache_size=16)
    sizes = cycling_sizes(10, repeat=1)
    for _ in range(300):
        svi.step(data[: next(sizes)])
    stats = elbo.compiled_fn.stats
    assert (stats.compilations, stats.hits, stats.evictions) == (10, 290, 0)
    for n in range(101, 121):  # 20 new sizes, each used once
        svi.step(data[:n])
    assert len(elbo.compiled_fn.compiled) == 16
    assert (stats.compilations, stats.evictions) == (30, 14)


# ---------------------------------------------------------------------------- leaks


def mean_field_problem():
    """A model and guide every Jit ELBO accepts, with a data tensor the cache must not keep."""

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
        with pyro.plate("data", data.size(0)):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    return model, AutoNormal(model), torch.randn(1000)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("elbo_cls", ELBO_CLASSES)
def test_dropping_model_guide_and_elbo_frees_them(elbo_cls, backend):
    model, guide, data = mean_field_problem()
    elbo = elbo_cls(backend=backend, max_plate_nesting=1, strict_enumeration_warning=False)
    svi = SVI(model, guide, Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        svi.step(data)
    (program,) = elbo.compiled_fn.compiled.values()
    refs = {
        name: weakref.ref(obj) for name, obj in [("model", model), ("guide", guide), ("data", data)]
    }
    program_ref = weakref.ref(program)
    del model, guide, data, program, svi
    gc.collect()
    assert [name for name, ref in refs.items() if ref() is not None] == []
    # The entry keyed on the dead model went with it, and its program with the entry.
    assert len(elbo.compiled_fn.compiled) == 0 and program_ref() is None

    elbo_ref, fn_ref = weakref.ref(elbo), weakref.ref(elbo.compiled_fn)
    del elbo
    gc.collect()
    assert elbo_ref() is None and fn_ref() is None
