"""Soak and leak tests: long SVI runs keep memory flat, the cache stays bounded, and
dropped models, guides and ELBOs are freed.

Pyro's jit lost users over memory growth (Ax and BoTorch turned it off). The long runs
are ``slow`` (``pytest -m slow tests/test_soak.py``); short variants run by default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import itertools
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2():
    try:
        mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
    except (AttributeError, OSError, TypeError):
        return None  # not glibc 2.33 or later
    mallinfo2.restype = _MallInfo2
    return mallinfo2


MALLINFO2 = _mallinfo2()
needs_mallinfo = pytest.mark.skipif(MALLINFO2 is None, reason="needs glibc's mallinfo2")


def heap_mb() -> float:
    """Memory malloc has handed out and not had back (small blocks and mmapped ones)."""
    gc.collect()
    info = MALLINFO2()
    return (info.uordblks + info.hblkhd) / MB


def gaussian_svi(**elbo_options) -> tuple[SVI, JitTrace_ELBO, torch.Tensor]:
    data = gaussian_data(150)
    elbo = JitTrace_ELBO(**elbo_options)
    guide = AutoDiagonalNormal(gaussian_model)
    return SVI(gaussian_model, guide, Adam({"lr": 0.01}), elbo), elbo, data


def cycling_batches(data: torch.Tensor, num_sizes: int, repeat: int):
    """Batches of 51, 52, ... points, cycling through ``num_sizes`` sizes, each size for
    ``repeat`` consecutive steps."""
    step = 0
    while True:
        yield data[: 51 + (step // repeat) % num_sizes]
        step += 1


def soak(svi: SVI, batches, steps: int = 20_000) -> dict[int, float]:
    """Runs ``steps`` SVI steps; returns the resident memory after step 2,000 and at the
    end. Fails as soon as memory has grown past the limit: a leak must not take the
    machine down with it."""
    rss = {}
    for step in range(1, steps + 1):
        svi.step(next(batches))
        if step == 2_000:
            rss[step] = rss_mb()
        elif step > 2_000 and step % 1_000 == 0:
            rss[step] = rss_mb()
            assert rss[step] - rss[2_000] < RSS_GROWTH_LIMIT_MB, rss
    return rss


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("backend", COMPILING_BACKENDS)
def test_20000_steps_keep_memory_flat(backend):
    svi, elbo, data = gaussian_svi(backend=backend)
    rss = soak(svi, itertools.repeat(data[:100]))
    print(
        f"{backend}: RSS after step 2,000: {rss[2_000]:.1f} MB, after 20,000: {rss[20_000]:.1f} MB"
    )
    assert elbo.compiled_fn.stats.compilations == 1
    # It fitted: the run did real work.
    assert abs(svi.guide.median()["loc"] - data[:100].mean()) < 0.5


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("backend", ["torchscript", "aten", "auto"])
def test_20000_steps_with_cycling_batch_sizes_keep_cache_and_memory_bounded(backend):
    """50 batch sizes through a 16-entry cache: a compilation and an eviction every 10
    steps, 2,000 of each over the run."""
    svi, elbo, data = gaussian_svi(backend=backend, cache_size=16)
    rss = soak(svi, cycling_batches(data, 50, repeat=10))
    stats = elbo.compiled_fn.stats
    print(
        f"{backend}: RSS after step 2,000: {rss[2_000]:.1f} MB, after 20,000: "
        f"{rss[20_000]:.1f} MB; {stats.compilations} compilations, {stats.evictions} evictions"
    )
    assert stats.compilations == 2_000 and stats.evictions == 2_000 - 16
    assert len(elbo.compiled_fn.compiled) == 16


def test_cycling_batch_sizes_keep_the_cache_bounded():
    """A working set that fits stops compiling; one that does not is evicted down to the
    bound."""
    svi, elbo, data = gaussian_svi(backend="torchscript", cache_size=16)
    batches = cycling_batches(data, 10, repeat=1)
    for _ in range(300):
        svi.step(next(batches))
    stats = elbo.compiled_fn.stats
    assert (stats.compilations, stats.hits, stats.evictions) == (10, 290, 0)
    for n in range(101, 121):  # 20 new sizes, each used once
        svi.step(data[:n])
    assert len(elbo.compiled_fn.compiled) == 16
    assert (stats.compilations, stats.evictions) == (30, 14)


@needs_mallinfo
@pytest.mark.parametrize("backend", ["torchscript", "aten"])
def test_evicted_entries_are_freed(backend):
    """The short soak: with a full cache, 24 more batch sizes replace 24 entries by as
    many of the same kind, so the heap in use must not grow. (Resident memory would not
    tell: a leak can fill pages that earlier tests freed.)"""
    svi, elbo, data = gaussian_svi(backend=backend, cache_size=16)
    batches = cycling_batches(data, 40, repeat=1)
    for _ in range(16):
        svi.step(next(batches))
    before = heap_mb()
    for _ in range(24):
        svi.step(next(batches))
    assert elbo.compiled_fn.stats.evictions == 24
    assert heap_mb() - before < 4


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
