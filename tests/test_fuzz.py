"""Differential fuzzing: random Pyro programs through every Jit ELBO and backend, against eager.

A program is a plain description (:class:`Program`, a tuple of :class:`Site`) drawn by
hypothesis; :func:`model_and_guide` interprets it as a model and a guide. Each program
runs through every lazyjit ELBO that applies to it and through the eager Pyro ELBO it
subclasses, on the same seed, over several calls whose batch sizes change and whose
params move in between: loss and every param gradient must agree.

The default run draws a few derandomized examples per backend (inductor and auto
excluded: each inductor compilation takes seconds). The long run draws fresh examples on
every backend::

    LAZYJIT_FUZZ_EXAMPLES=3000 pytest -m slow tests/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO

import lazyjit
import lazyjit.config
from lazyjit import (
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    LazyJitWarning,
    StructureWarning,
)

# Inductor compilations take seconds each; "auto" moves hot programs to inductor.
FAST_BACKENDS = [name for name in lazyjit.BACKENDS if name not in ("inductor", "auto")]
ALL_BACKENDS = list(lazyjit.BACKENDS)
# Backends whose programs are (at first) TorchScript traces of the Pyro code: the
# tracer's dead-code elimination drops an unused random draw there.
TRACES_PYRO = {"torchscript", "auto"}

ELBOS = {
    "trace": (Trace_ELBO, JitTrace_ELBO),
    "graph": (TraceGraph_ELBO, JitTraceGraph_ELBO),
    "enum": (TraceEnum_ELBO, JitTraceEnum_ELBO),
    "meanfield": (TraceMeanField_ELBO, JitTraceMeanField_ELBO),
}

MAX_N = 6  # the data plate's full size; a call's batch is 1 to MAX_N of its points
MAX_PLATE_NESTING = 2  # "group" at dim -2, "data" at dim -1
PLATE_SETS = [(), ("group",), ("data",), ("group", "data")]
FAMILIES = ["normal", "lognormal", "gamma", "beta", "dirichlet", "categorical", "bernoulli", "mvn"]
EVENT_SHAPES = {"dirichlet": (3,), "categorical": (), "mvn": (2,)}
REPARAMETERIZED = {"normal", "lognormal", "gamma", "beta", "dirichlet", "mvn"}
# Positive parameters take one of these; Dirichlet guides may instead be a positive total
# times a simplex. Module-level objects: lazyjit checks a param's constraint by identity.
POSITIVE = {
    "positive": constraints.positive,
    "greater_than": constraints.greater_than(0.05),
    "interval": constraints.interval(0.05, 20.0),
    "softplus": constraints.softplus_positive,
}
PRIOR_TRIL = torch.tensor([[1.0, 0.0], [0.3, 0.8]])

# Float32 throughout. Gradients come from the same float32 ops in eager Pyro and in a
# compiled program. The loss does not: eager Pyro adds up site densities in Python floats,
# a compiled loss in float32, which for densities of these sizes stays well inside RTOL.
RTOL = 1e-4
ATOL = 1e-5


@dataclass(frozen=True)
class Site:
    family: str
    plates: tuple[str, ...]
    observed: bool
    parents: tuple[int, ...]  # earlier latents that shift this site's model distribution
    guide_parents: tuple[int, ...]  # earlier guide latents that shift its guide distribution
    scale: float | None  # poutine.scale around the site, in the model and the guide
    mask: str | None  # None, "false" (poutine.mask(mask=False)) or "tensor" (a data mask)
    mask_guide: bool  # the guide site is masked as well
    constraint: str  # a key of POSITIVE, or "simplex" for a Dirichlet guide
    score: bool  # the guide draws it without reparameterization (score-function gradient)

    @property
    def enumerated(self) -> bool:
        return self.family == "categorical" and not self.observed

    @property
    def in_guide(self) -> bool:
        return not self.observed and not self.enumerated


@dataclass(frozen=True)
class Program:
    sites: tuple[Site, ...]
    group_size: int
    group_subsample: int | None  # subsample_size of the "group" plate
    data_subsample: bool  # plate("data", MAX_N, subsample=idx) rather than plate("data", n)
    batch_sizes: tuple[int, ...]  # the data plate's size on each successive call
    num_particles: int
    vectorize: bool
    seed: int

    def elbos(self) -> list[str]:
        """The ELBOs this program is valid for."""
        if any(s.enumerated for s in self.sites):
            return ["enum"]  # a discrete latent only the enumerating ELBO can sum out
        names = ["trace", "graph", "enum"]
        guide = [s for s in self.sites if s.in_guide]
        if all(s.family in REPARAMETERIZED and not s.score and not s.guide_parents for s in guide):
            names.append("meanfield")
        return names


# ---------------------------------------------------------------------------- strategies


@st.composite
def sites(draw, scaled_plates: set[str], max_sites: int) -> tuple[Site, ...]:
    """1 to ``max_sites`` sites; each may depend on earlier latents in the same or fewer plates."""
    count = draw(st.integers(1, max_sites))
    drawn: list[Site] = []
    # Sites whose model density depends on an enumerated value. TraceEnum_ELBO needs one
    # common scale on all of them (Pyro raises otherwise): no poutine.scale, and no
    # subsampled plate, whose size ratio is a scale too.
    enum_dependent: set[int] = set()
    for i in range(count):
        family = draw(st.sampled_from(FAMILIES))
        # The last site observes data in the data plate: the batch size is that plate's.
        last = i == count - 1
        observed = last or draw(st.booleans())
        enumerated = family == "categorical" and not observed
        unscaled = [p for p in PLATE_SETS if not set(p) & scaled_plates]
        if last:
            plates = draw(st.sampled_from([p for p in PLATE_SETS if "data" in p]))
        else:
            plates = draw(st.sampled_from(unscaled if enumerated else PLATE_SETS))
        eligible = [
            j
            for j, s in enumerate(drawn)
            if not s.observed
            and set(s.plates) <= set(plates)
            and (j not in enum_dependent or plates in unscaled)
        ]
        parents = (
            draw(st.lists(st.sampled_from(eligible), unique=True, max_size=3)) if eligible else []
        )
        if enumerated or enum_dependent.intersection(parents):
            enum_dependent.add(i)
        guide_eligible = [j for j in eligible if drawn[j].in_guide]
        guide_parents = []
        if guide_eligible and not observed and not enumerated:
            guide_parents = draw(st.lists(st.sampled_from(guide_eligible), unique=True, max_size=2))
        scale = None if i in enum_dependent else draw(st.sampled_from([None, None, 0.3, 2.5]))
        mask = draw(st.sampled_from([None, None, "false", "tensor"]))
        constraint_choices = [*POSITIVE, "simplex"] if family == "dirichlet" else list(POSITIVE)
        drawn.append(
            Site(
                family=family,
                plates=plates,
                observed=observed,
                parents=tuple(sorted(parents)),
                guide_parents=tuple(sorted(guide_parents)),
                scale=scale,
                mask=mask,
                mask_guide=mask is not None and draw(st.booleans()),
                constraint=draw(st.sampled_from(constraint_choices)),
                score=family in REPARAMETERIZED
                and not observed
                and draw(st.sampled_from([False] * 3 + [True])),
            )
        )
    return tuple(drawn)


@st.composite
def programs(draw, max_sites: int = 20) -> Program:
    group_size = draw(st.integers(1, 4))
    group_subsample = draw(st.sampled_from([None, *range(1, group_size)]))
    data_subsample = draw(st.booleans())
    scaled = {name for name, on in [("group", group_subsample), ("data", data_subsample)] if on}
    n1, n2 = draw(st.lists(st.integers(1, MAX_N), min_size=2, max_size=2, unique=True))
    return Program(
        sites=draw(sites(scaled, max_sites)),
        group_size=group_size,
        group_subsample=group_subsample,
        data_subsample=data_subsample,
        batch_sizes=draw(st.sampled_from([(n1, n2, n1), (n1, n1, n2), (n1, n2, n2, n1)])),
        num_particles=draw(st.sampled_from([1, 1, 2])),
        vectorize=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


# ---------------------------------------------------------------------------- interpreter


def site_name(i: int, site: Site) -> str:
    return f"{i}_{site.family}"


def make_batch(program: Program, n: int, call: int) -> dict[str, torch.Tensor]:
    """A call's data: observed values and masks for its ``n`` points, and their indices."""
    gen = torch.Generator().manual_seed(program.seed * 1000 + call)
    if program.data_subsample:
        idx = torch.randperm(MAX_N, generator=gen)[:n]
    else:
        idx = torch.arange(n)
    batch = {"idx": idx}
    for i, site in enumerate(program.sites):
        shape = plate_shape(program, site, n)
        if site.mask == "tensor":
            batch[f"mask{i}"] = torch.rand(shape, generator=gen) < 0.6
        if site.observed:
            batch[f"obs{i}"] = observation(
                site.family, shape + EVENT_SHAPES.get(site.family, ()), gen
            )
    return batch


def plate_shape(program: Program, site: Site, data_size: int) -> tuple[int, ...]:
    """The site's extent in its plates: the group dim, then the data dim."""
    group = (program.group_size,) if "group" in site.plates else ()
    return group + ((data_size,) if "data" in site.plates else ())


def observation(family: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if family in ("normal", "mvn"):
        return torch.randn(shape, generator=gen)
    if family in ("lognormal", "gamma"):
        return (0.5 * torch.randn(shape, generator=gen)).exp()
    if family == "beta":
        return 0.1 + 0.8 * torch.rand(shape, generator=gen)
    if family == "dirichlet":
        x = 0.1 + torch.rand(shape, generator=gen)
        return x / x.sum(-1, keepdim=True)
    if family == "categorical":
        return torch.randint(0, 3, shape, generator=gen)
    return torch.randint(0, 2, shape, generator=gen).float()  # bernoulli


def init(shape: tuple[int, ...], low: float, high: float, seed: int):
    """A lazy, deterministic param initializer (called once, when the param is created)."""
    return lambda: (
        low + (high - low) * torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    )


def tril_init(shape: tuple[int, ...], seed: int):
    def make() -> torch.Tensor:
        noise = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
        return torch.tril(0.3 * noise, -1) + torch.diag_embed(
            0.5 + noise.diagonal(dim1=-2, dim2=-1)
        )

    return make


class Params:
    """Creates a site's params: ``local`` ones get one value per plate element."""

    def __init__(self, program: Program, i: int, site: Site, local_shape: tuple[int, ...]):
        self.prefix = site_name(i, site)
        self.seed = program.seed * 100 + i
        self.local_shape = local_shape

    def __call__(self, suffix, shape, low=0.5, high=2.0, constraint=constraints.real, local=True):
        shape = (self.local_shape if local else ()) + shape
        self.seed += 1
        make = tril_init(shape, self.seed) if constraint is constraints.lower_cholesky else None
        return pyro.param(
            f"{self.prefix}.{suffix}",
            make or init(shape, low, high, self.seed),
            constraint=constraint,
        )


class Run:
    """One run of the model or the guide: its plates, indices and latent values."""

    def __init__(self, program: Program, batch: dict[str, torch.Tensor]):
        self.batch = batch
        n = batch["idx"].shape[0]
        self.group = pyro.plate(
            "group", program.group_size, subsample_size=program.group_subsample, dim=-2
        )
        if program.data_subsample:
            self.data = pyro.plate("data", MAX_N, subsample=batch["idx"], dim=-1)
        else:
            self.data = pyro.plate("data", n, dim=-1)
        self.features: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def site(self, i: int, site: Site, guide: bool):
        """Enters the site's plates, scale and mask; yields the plates' indices."""
        with contextlib.ExitStack() as stack:
            indices = {}
            for plate in site.plates:
                indices[plate] = stack.enter_context(getattr(self, plate))
            if site.scale is not None:
                stack.enter_context(poutine.scale(scale=site.scale))
            if site.mask is not None and (site.mask_guide or not guide):
                mask = False if site.mask == "false" else self.local_data(site, f"mask{i}", indices)
                stack.enter_context(poutine.mask(mask=mask))
            yield indices

    def local_data(self, site: Site, key: str, indices: dict) -> torch.Tensor:
        """A batch tensor (its data dim already the batch) at the site's batch shape."""
        value = self.batch[key]
        if "group" in site.plates:
            value = value[indices["group"]]
            if "data" not in site.plates:
                value = value.unsqueeze(1)
        return value

    def shift(self, parents: tuple[int, ...]) -> torch.Tensor:
        total = torch.zeros(())
        for j in parents:
            total = total + self.features[j]
        return 0.5 * torch.tanh(total)


def local_param(value: torch.Tensor, site: Site, indices: dict) -> torch.Tensor:
    """A param with one value per plate element, cut to this call's plate indices."""
    if "group" in site.plates:
        value = value[indices["group"]]
        if "data" in site.plates:
            value = value[:, indices["data"]]
        else:
            value = value.unsqueeze(1)
    elif "data" in site.plates:
        value = value[indices["data"]]
    return value


def feature(value: torch.Tensor, family: str) -> torch.Tensor:
    """What a latent passes to its children: one number per batch element."""
    if family in ("dirichlet", "mvn"):
        return value[..., 0]
    return value.to(torch.get_default_dtype())


def prior(program: Program, i: int, site: Site, shift: torch.Tensor):
    """A latent site's model distribution."""
    f = site.family
    if f == "normal":
        return dist.Normal(shift, 1.5)
    if f == "lognormal":
        return dist.LogNormal(shift, 0.5)
    if f == "gamma":
        return dist.Gamma(3.0 * shift.exp(), 2.0)
    if f == "beta":
        return dist.Beta(3.0 * shift.exp(), 2.0)
    if f == "dirichlet":
        return dist.Dirichlet(2.0 * shift.exp().unsqueeze(-1).expand(shift.shape + (3,)))
    if f == "bernoulli":
        return dist.Bernoulli(logits=shift)
    if f == "mvn":
        return dist.MultivariateNormal(
            shift.unsqueeze(-1).expand(shift.shape + (2,)), scale_tril=PRIOR_TRIL
        )
    params = Params(program, i, site, ())
    probs = params("probs", (3,), constraint=constraints.simplex, local=False)
    return dist.Categorical(logits=probs.log() + shift.unsqueeze(-1))


def likelihood(program: Program, i: int, site: Site, shift: torch.Tensor):
    """An observed site's model distribution, whose parameters are model params."""
    params = Params(program, i, site, ())
    positive = POSITIVE.get(site.constraint, constraints.positive)
    f = site.family
    if f in ("normal", "lognormal"):
        cls = dist.Normal if f == "normal" else dist.LogNormal
        return cls(shift, params("noise", (), constraint=positive, local=False))
    if f == "gamma":
        rate = params("rate", (), constraint=positive, local=False)
        return dist.Gamma(
            params("concentration", (), constraint=positive, local=False), rate * shift.exp()
        )
    if f == "beta":
        a = params("a", (), 1.0, 3.0, constraint=positive, local=False)
        return dist.Beta(
            a * shift.exp(), params("b", (), 1.0, 3.0, constraint=positive, local=False)
        )
    if f == "dirichlet":
        concentration = params("concentration", (3,), 1.0, 3.0, constraint=positive, local=False)
        return dist.Dirichlet(concentration * shift.exp().unsqueeze(-1))
    if f == "categorical":
        probs = params("probs", (3,), constraint=constraints.simplex, local=False)
        return dist.Categorical(logits=probs.log() + shift.unsqueeze(-1))
    if f == "bernoulli":
        probs = params("probs", (), 0.2, 0.8, constraint=constraints.unit_interval, local=False)
        return dist.Bernoulli(logits=probs.logit() + shift)
    tril = params("scale_tril", (2, 2), constraint=constraints.lower_cholesky, local=False)
    return dist.MultivariateNormal(shift.unsqueeze(-1).expand(shift.shape + (2,)), scale_tril=tril)


def guide_dist(program: Program, i: int, site: Site, shift: torch.Tensor, indices: dict):
    """A latent site's guide distribution; its params have one value per plate element."""
    make = Params(program, i, site, plate_shape(program, site, MAX_N))
    positive = POSITIVE.get(site.constraint, constraints.positive)

    def param(suffix, shape, low=0.5, high=2.0, constraint=constraints.real):
        return local_param(make(suffix, shape, low, high, constraint), site, indices)

    f = site.family
    if f in ("normal", "lognormal"):
        cls = dist.Normal if f == "normal" else dist.LogNormal
        d = cls(param("loc", (), -0.5, 0.5) + shift, param("scale", (), 0.3, 1.0, positive))
    elif f == "gamma":
        d = dist.Gamma(
            param("concentration", (), 2.0, 5.0, positive),
            param("rate", (), 1.0, 3.0, positive) * shift.exp(),
        )
    elif f == "beta":
        d = dist.Beta(
            param("a", (), 2.0, 5.0, positive) * shift.exp(), param("b", (), 2.0, 5.0, positive)
        )
    elif f == "dirichlet":
        if site.constraint == "simplex":
            total = param("total", (), 5.0, 10.0, constraints.positive).unsqueeze(-1)
            concentration = total * param("probs", (3,), 0.5, 1.0, constraints.simplex)
        else:
            concentration = param("concentration", (3,), 2.0, 5.0, positive)
        d = dist.Dirichlet(concentration * shift.exp().unsqueeze(-1))
    elif f == "bernoulli":
        d = dist.Bernoulli(
            logits=param("probs", (), 0.2, 0.8, constraints.unit_interval).logit() + shift
        )
    else:
        loc = param("loc", (2,), -0.5, 0.5) + shift.unsqueeze(-1)
        d = dist.MultivariateNormal(
            loc, scale_tril=param("scale_tril", (2, 2), constraint=constraints.lower_cholesky)
        )
    return d.has_rsample_(False) if site.score else d


def model_and_guide(program: Program):
    """Fresh model and guide functions for ``program``: each takes a batch (a dict)."""

    def model(batch):
        run = Run(program, batch)
        for i, site in enumerate(program.sites):
            with run.site(i, site, guide=False) as indices:
                shift = run.shift(site.parents)
                if site.observed:
                    obs = run.local_data(site, f"obs{i}", indices)
                    pyro.sample(site_name(i, site), likelihood(program, i, site, shift), obs=obs)
                    continue
                infer = {"enumerate": "parallel"} if site.enumerated else {}
                value = pyro.sample(site_name(i, site), prior(program, i, site, shift), infer=infer)
                run.features[i] = feature(value, site.family)

    def guide(batch):
        run = Run(program, batch)
        for i, site in enumerate(program.sites):
            if not site.in_guide:
                continue
            with run.site(i, site, guide=True) as indices:
                d = guide_dist(program, i, site, run.shift(site.guide_parents), indices)
                run.features[i] = feature(pyro.sample(site_name(i, site), d), site.family)

    return model, guide


# ---------------------------------------------------------------------------- the check


def unused_random_draws(program: Program, elbo: str) -> bool:
    """Whether the program, under ``elbo``, may draw random numbers it never uses: the
    subsample indices of a "group" plate that no site enters, or, under the mean-field
    ELBO, a guide site's draw that no other site depends on (its KL is analytic, so
    nothing reads the value)."""
    if program.group_subsample and not any("group" in s.plates for s in program.sites):
        return True
    if elbo != "meanfield":
        return False
    read = {j for s in program.sites for j in (*s.parents, *s.guide_parents)}
    return any(s.in_guide and i not in read for i, s in enumerate(program.sites))


def take_grads() -> dict[str, torch.Tensor]:
    """The ``.grad`` of every param (zeros where it has none); clears them."""
    grads = {}
    for name, p in pyro.get_param_store()._params.items():
        grads[name] = torch.zeros_like(p) if p.grad is None else p.grad
        p.grad = None
    return grads


def check_elbo(program: Program, elbo: str, backend: str) -> None:
    pyro.clear_param_store()
    model, guide = model_and_guide(program)
    options = {
        "num_particles": program.num_particles,
        "vectorize_particles": program.vectorize,
        "max_plate_nesting": MAX_PLATE_NESTING,
    }
    if elbo == "enum":
        options["strict_enumeration_warning"] = False
    eager_cls, lazy_cls = ELBOS[elbo]
    eager, lazy = eager_cls(**options), lazy_cls(**options, backend=backend)
    moves = torch.Generator().manual_seed(program.seed)
    compiled_sizes = set()
    for call, n in enumerate(program.batch_sizes):
        batch = make_batch(program, n, call)
        if n not in compiled_sizes:
            # Compiling runs the model and guide more than once, drawing random numbers.
            compiled_sizes.add(n)
            try:
                lazy.loss_and_grads(model, guide, batch)
            except Exception as e:
                # lazyjit may refuse a program only where eager Pyro refuses it (some
                # programs hit Pyro's own limitations, e.g. pyro-ppl/pyro#3110).
                pyro.set_rng_seed(call)
                with pytest.raises(type(e)):
                    eager.loss_and_grads(model, guide, batch)
                event(f"eager Pyro and lazyjit raise {type(e).__name__} ({elbo})")
                return
            take_grads()
        pyro.set_rng_seed(call)
        expected_loss = eager.loss_and_grads(model, guide, batch)
        expected = take_grads()
        pyro.set_rng_seed(call)
        actual_loss = lazy.loss_and_grads(model, guide, batch)
        actual = take_grads()
        where = f"{elbo} on {backend}, call {call} (batch size {n})"
        assert actual_loss == pytest.approx(expected_loss, rel=RTOL, abs=ATOL, nan_ok=True), (
            f"{where}: loss {actual_loss} != {expected_loss}"
        )
        for name in expected:
            torch.testing.assert_close(
                actual[name],
                expected[name],
                rtol=RTOL,
                atol=ATOL,
                equal_nan=True,
                msg=lambda m, where=f"{where}, {name}": f"{where}: {m}",
            )
        # The next call must see the params move, as after an optimizer step.
        with torch.no_grad():
            for p in pyro.get_param_store()._params.values():
                p.add_(0.1 * torch.randn(p.shape, generator=moves))
    assert lazy.compiled_fn.stats.compilations == len(compiled_sizes), lazy.compiled_fn.stats


def check(program: Program, backend: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LazyJitWarning)
        # Pyro's distributions make tensor constants; TorchScript says so on every compile.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # Known issue (docs/reliability.md): TorchScript's graph optimizer reorders
        # independent random ops, so an optimized TorchScript program draws other numbers
        # than eager Pyro from the same seed. Until the backend runs its programs
        # unoptimized, the fuzzer does, and so checks the traced program op for op.
        with torch.jit.optimized_execution(False):
            for elbo in program.elbos():
                if backend in TRACES_PYRO and unused_random_draws(program, elbo):
                    # Known issue (docs/reliability.md): torch.jit.trace drops a random
                    # op whose result is unused, so the program draws fewer numbers
                    # than eager Pyro.
                    event(f"skipped: torchscript drops an unused draw ({elbo})")
                    continue
                check_elbo(program, elbo, backend)
    for w in caught:
        message = str(w.message).split("\n")[0]
        # Every generated program is static: a structure guard that fires is a false alarm.
        assert not issubclass(w.category, StructureWarning), message
        if issubclass(w.category, LazyJitWarning):
            # A backend that cannot compile a program runs it eagerly, and says so: not
            # wrong (the numbers were compared), only slower. Counted in the statistics.
            event(f"{backend} fallback: {message[:120]}")


HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
# The default run: a few derandomized (hence reproducible) examples per backend, fewer for
# the backends whose compilations cost more, and at most 12 sites per program.
CI_EXAMPLES = {"eager": 25, "torchscript": 15}
CI_EXAMPLES_OTHER = 4
CI_MAX_SITES = 12


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_compiled_elbos_match_eager(backend):
    @settings(
        max_examples=CI_EXAMPLES.get(backend, CI_EXAMPLES_OTHER),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=HEALTH,
    )
    @given(program=programs(max_sites=CI_MAX_SITES))
    def fuzz(program):
        check(program, backend)

    fuzz()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@settings(
    max_examples=int(os.environ.get("LAZYJIT_FUZZ_EXAMPLES", "1000")),
    deadline=None,
    suppress_health_check=HEALTH,
    print_blob=True,
)
@given(program=programs())
def test_compiled_elbos_match_eager_long(backend, program):
    check(program, backend)


# A program of the long run on which inductor's masked vectorization of loop tails wrote
# out of bounds (torch 2.13, CPU): the process aborted in the trace ELBO's first call.
TAIL_LOOP_PROGRAM = Program(
    sites=(
        Site("normal", (), False, (), (), 0.3, "tensor", True, "interval", False),
        Site("lognormal", ("group",), True, (), (), None, None, False, "positive", False),
        Site(
            "bernoulli", ("group", "data"), False, (), (), 2.5, None, False, "greater_than", False
        ),
        Site("beta", ("group", "data"), False, (), (2,), 0.3, "false", True, "interval", True),
        Site("dirichlet", ("group", "data"), False, (), (2,), 2.5, None, False, "softplus", False),
        Site("mvn", ("group",), False, (0,), (0,), None, None, False, "softplus", False),
        Site("mvn", ("group",), False, (), (0, 5), None, "tensor", True, "interval", False),
        Site("normal", ("group",), False, (0, 5, 6), (6,), None, "false", True, "softplus", True),
        Site("beta", ("group", "data"), True, (3, 5), (), None, None, False, "positive", False),
        Site("categorical", (), True, (), (), None, None, False, "greater_than", False),
        Site("beta", ("data",), True, (0,), (), None, "false", True, "softplus", False),
        Site("dirichlet", (), True, (0,), (), 2.5, "tensor", False, "positive", False),
        Site("lognormal", (), True, (0,), (), None, "tensor", True, "greater_than", False),
        Site("gamma", (), False, (), (), None, "tensor", True, "interval", False),
        Site(
            "lognormal",
            ("group", "data"),
            True,
            (5, 7, 13),
            (),
            2.5,
            None,
            False,
            "greater_than",
            False,
        ),
    ),
    group_size=4,
    group_subsample=3,
    data_subsample=True,
    batch_sizes=(3, 2, 3),
    num_particles=2,
    vectorize=True,
    seed=18,
)


@pytest.mark.slow
def test_inductor_tail_loops():
    """lazyjit.config.INDUCTOR_CONFIG turns masked tail vectorization off: this program
    then matches eager Pyro, where it corrupted the heap before."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        check_elbo(TAIL_LOOP_PROGRAM, "trace", "inductor")
