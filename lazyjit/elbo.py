"""Drop-in replacements for Pyro's ``Jit*_ELBO`` classes, compiled with :func:`lazyjit.trace`.

Each class subclasses the matching eager Pyro ELBO and compiles one function per call
signature: ``(model, guide, *args, **kwargs) -> (surrogate_loss, loss)``. The model and
the guide are arguments of that function, so the cache keys them by identity (weakly:
a dead model cannot select a stale entry). :meth:`loss_and_grads` gets the loss and
every gradient from one :meth:`CompiledFunction.value_and_grad` call, so a backend that
computes gradients inside its graph serves SVI unchanged.
"""

from __future__ import annotations

import weakref
from typing import Any

import pyro
import torch
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer.trace_elbo import Trace_ELBO
from pyro.infer.trace_mean_field_elbo import TraceMeanField_ELBO
from pyro.infer.traceenum_elbo import TraceEnum_ELBO
from pyro.infer.tracegraph_elbo import TraceGraph_ELBO
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled
from pyro.nn import PyroModule
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.util import warn_if_nan
from torch.distributions import kl_divergence
from torch.nn.parallel import DistributedDataParallel

from . import pyro_shim
from .backends import Backend
from .config import DEFAULT_CACHE_SIZE
from .errors import LazyJitError
from .jit import CompiledFunction, Gradients, trace
from .signature import signature


class LazyJitELBO:
    """What the four Jit ELBOs share: the compiled function :attr:`compiled_fn`, and
    ``loss``, ``differentiable_loss`` and ``loss_and_grads`` on it. Each ELBO adds
    ``_surrogate_and_loss``.

    ``_surrogate_and_loss(model, guide, args, kwargs)`` returns two scalar tensors: the
    surrogate loss, whose gradient is the ELBO gradient estimate (first, because
    ``value_and_grad`` differentiates the first output), and the loss estimate.
    """

    def __init__(
        self,
        *args: Any,
        backend: str | Backend = "auto",
        strict: bool = False,
        cache_size: int = DEFAULT_CACHE_SIZE,
        verify: int = 0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        # The compiled function lives on self; a strong reference back would make a cycle.
        weakself = weakref.ref(self)

        def surrogate_and_loss(model, guide, *args, **kwargs):
            _check_modules(model, guide)  # Python only: runs on eager calls, not compiled ones
            with _NoGradSamples():
                return weakself()._surrogate_and_loss(model, guide, args, kwargs)

        # Names the ELBO in lazyjit's warnings and errors.
        surrogate_and_loss.__qualname__ = type(self).__name__
        self.compiled_fn: CompiledFunction = trace(
            surrogate_and_loss,
            ignore_warnings=self.ignore_jit_warnings,
            jit_options=self.jit_options,
            backend=backend,
            strict=strict,
            cache_size=cache_size,
            verify=verify,
        )

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """The ELBO loss estimate (negative ELBO) as a float; computes no gradients."""
        # No gradients needed, so a no-grad entry skips building the backward graph.
        with torch.no_grad():
            _, loss = self.compiled_fn(model, guide, *args, **kwargs)
        return warn_if_nan(loss.item(), "loss")

    def differentiable_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """A tensor whose value is the loss estimate and whose gradient is the ELBO
        gradient estimate (the surrogate's)."""
        surrogate, loss = self.compiled_fn(model, guide, *args, **kwargs)
        return warn_if_nan(loss.detach() + (surrogate - surrogate.detach()), "loss")

    def loss_and_grads(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        """Returns the loss estimate and adds the ELBO gradient estimate to the ``.grad``
        of every param (and of every tensor argument that requires grad), like
        ``backward()`` would."""
        (_, loss), grads = self.compiled_fn.value_and_grad(model, guide, *args, **kwargs)
        _accumulate(grads, args, kwargs, self.retain_graph)
        return warn_if_nan(loss.item(), "loss")


def _check_modules(model: Any, guide: Any) -> None:
    """Raises :class:`LazyJitError` for the modules whose params a compiled call cannot
    follow (see ``docs/distributed.md``).

    A ``DistributedDataParallel`` module inside the model or guide: its forward arms the
    gradient all-reduce, and a compiled call does not run it, so ranks would drift apart.
    A ``PyroModule`` under ``module_local_params``: its params leave the param store when
    its call returns, and lazyjit's programs read them from there.
    """
    for fn in (model, guide):
        if not isinstance(fn, torch.nn.Module):
            continue
        if isinstance(fn, PyroModule) and pyro.settings.get("module_local_params"):
            raise LazyJitError(
                "lazyjit's Jit ELBOs read params from Pyro's param store, and "
                "pyro.settings.set(module_local_params=True) keeps a PyroModule's params out "
                "of it; leave module_local_params off (DistributedDataParallel and Lightning "
                "work with the param store, see docs/distributed.md)"
            )
        if any(isinstance(m, DistributedDataParallel) for m in fn.modules()):
            raise LazyJitError(
                "the model or guide holds a DistributedDataParallel module: its forward "
                "arms the gradient all-reduce, which a compiled call does not run, so ranks "
                "would drift apart. Wrap the module that computes the loss instead: "
                "DistributedDataParallel(elbo(model, guide)), or a LightningModule "
                "(see docs/distributed.md)"
            )


class _NoGradSamples(Messenger):
    """Draws each non-reparameterized sample without a gradient, as eager Pyro does.

    Pyro draws such a site with ``.sample()``, under ``torch.no_grad()``, which a traced
    program does not record: run compiled, a Beta with ``has_rsample_(False)`` would
    carry a pathwise gradient into the score-function estimator. Entered outside the
    ELBO's own handlers, it sees only the sites that none of them (replay, enumeration,
    conditioning) has given a value.
    """

    def _pyro_sample(self, msg: dict) -> None:
        if msg["done"] or msg["is_observed"] or msg["value"] is not None:
            return
        if getattr(msg["fn"], "has_rsample", False):
            return
        msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"]).detach()
        msg["done"] = True


def _accumulate(grads: Gradients, args: tuple, kwargs: dict, retain_graph: bool | None) -> None:
    store = pyro_shim.store_params()
    for name, grad in grads.params.items():
        param = store[name]
        param.grad = grad if param.grad is None else param.grad + grad
    # Tensor arguments may come out of the user's own autograd graph (an encoder run
    # outside the model); hand their gradients on to it.
    if any(g is not None for g in grads.leaves):
        _, leaves, _ = signature(args, kwargs)
        pairs = [(t, g) for t, g in zip(leaves, grads.leaves) if g is not None]
        torch.autograd.backward(*zip(*pairs), retain_graph=retain_graph)


def _surrogate_elbo_particle(
    model_trace: Trace, guide_trace: Trace, model_log_prob: torch.Tensor
) -> torch.Tensor:
    """Tensor-only surrogate ELBO of one particle.

    The surrogate half of ``Trace_ELBO._differentiable_loss_particle``, whose ELBO half
    calls ``.item()``, which would bake one value into a compiled program. It reuses the
    sums the ELBO half computed (``model_log_prob``, each reparameterized site's
    ``log_prob_sum``): every op saved is saved at each call of the compiled program.
    """
    surrogate = model_log_prob
    log_r = None
    for site in guide_trace.nodes.values():
        if site["type"] != "sample":
            continue
        log_prob, score_function, entropy = site["score_parts"]
        if entropy is log_prob:
            surrogate = surrogate - site["log_prob_sum"]
        elif not is_identically_zero(entropy):
            surrogate = surrogate - entropy.sum()
        if not is_identically_zero(score_function):
            if log_r is None:
                log_r = pyro_shim.compute_log_r(model_trace, guide_trace)
            downstream = log_r.sum_to(site["cond_indep_stack"])
            surrogate = surrogate + (downstream * score_function).sum()
    return surrogate


class JitTrace_ELBO(LazyJitELBO, Trace_ELBO):
    """:class:`~pyro.infer.Trace_ELBO`, compiled lazily by :func:`lazyjit.trace`.

    Takes every argument :class:`~pyro.infer.Trace_ELBO` takes, plus:

    :param backend: a lazyjit backend name (``lazyjit.BACKENDS``) or a
        :class:`lazyjit.backends.Backend`; the default ``"auto"`` runs a signature's first
        calls eagerly, then its captured graph, and moves a hot entry to inductor compiled
        in the background.
    :param strict: raise :class:`lazyjit.LazyJitError` instead of running eagerly when a
        call cannot be compiled, and instead of guarding a branch on a tensor value.
    :param cache_size: the most compiled entries kept (one per call signature).
    :param verify: check each entry's first ``verify`` calls against eager Pyro (see
        :func:`lazyjit.trace`).

    ``compiled_fn`` is the :class:`lazyjit.CompiledFunction`; ``compiled_fn.stats``
    counts compilations.

    Example (an unchanged SVI loop)::

        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), lazyjit.JitTrace_ELBO())
        for step in range(1000):
            svi.step(data)
    """

    def _surrogate_and_loss(self, model, guide, args, kwargs):
        loss = surrogate_loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            model_log_prob = model_trace.log_prob_sum()
            elbo = model_log_prob - guide_trace.log_prob_sum()
            loss = loss - elbo / self.num_particles
            surrogate_elbo = _surrogate_elbo_particle(model_trace, guide_trace, model_log_prob)
            surrogate_loss = surrogate_loss - surrogate_elbo / self.num_particles
        return surrogate_loss, loss


class JitTraceEnum_ELBO(LazyJitELBO, TraceEnum_ELBO):
    """:class:`~pyro.infer.TraceEnum_ELBO`, compiled lazily by :func:`lazyjit.trace`.

    Takes every argument :class:`~pyro.infer.TraceEnum_ELBO` takes, plus ``backend``,
    ``strict``, ``cache_size`` and ``verify`` (see :class:`JitTrace_ELBO`). Pass
    ``max_plate_nesting`` to save a model run on each compilation.
    """

    def _surrogate_and_loss(self, model, guide, args, kwargs):
        elbo = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            elbo = elbo + pyro_shim.compute_dice_elbo(model_trace, guide_trace)
        # The Dice ELBO's value is the ELBO and its gradient the estimator's.
        loss = elbo * (-1.0 / self.num_particles)
        return loss, loss


class JitTraceGraph_ELBO(LazyJitELBO, TraceGraph_ELBO):
    """:class:`~pyro.infer.TraceGraph_ELBO`, compiled lazily by :func:`lazyjit.trace`.

    Takes every argument :class:`~pyro.infer.TraceGraph_ELBO` takes, plus ``backend``,
    ``strict``, ``cache_size`` and ``verify`` (see :class:`JitTrace_ELBO`).

    Baselines given as ``baseline_value`` or ``nn_baseline`` compile. A decaying-average
    baseline (``use_decaying_avg_baseline``) writes the param store from inside the loss,
    which cannot be compiled: such a model runs eagerly, re-tried on every call, and its
    average takes extra updates from lazyjit's param discovery runs.
    """

    def _surrogate_and_loss(self, model, guide, args, kwargs):
        elbo, surrogate_loss = self._loss_and_surrogate_loss(model, guide, args, kwargs)
        return surrogate_loss, -elbo


class JitTraceMeanField_ELBO(LazyJitELBO, TraceMeanField_ELBO):
    """:class:`~pyro.infer.TraceMeanField_ELBO`, compiled lazily by :func:`lazyjit.trace`.

    Takes every argument :class:`~pyro.infer.TraceMeanField_ELBO` takes, plus
    ``backend``, ``strict``, ``cache_size`` and ``verify`` (see :class:`JitTrace_ELBO`).
    KL terms are analytic where ``torch.distributions.kl_divergence`` knows the pair.
    """

    def _surrogate_and_loss(self, model, guide, args, kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss - _mean_field_elbo_particle(model_trace, guide_trace) / self.num_particles
        # Every site is reparameterized or analytic, so the loss is its own surrogate.
        return loss, loss


def _mean_field_elbo_particle(model_trace: Trace, guide_trace: Trace) -> torch.Tensor:
    """Tensor-only ELBO of one particle.

    As ``TraceMeanField_ELBO._differentiable_loss_particle`` computes it; that one reads
    the ELBO with ``.item()`` unless TorchScript is the tracer, which stops a graph
    capture.
    """
    elbo = 0.0
    for name, model_site in model_trace.nodes.items():
        if model_site["type"] != "sample":
            continue
        if model_site["is_observed"]:
            elbo = elbo + model_site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        if is_validation_enabled():
            check_fully_reparametrized(guide_site)
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            entropy = guide_site["score_parts"].entropy_term
            elbo = elbo + model_site["log_prob_sum"] - entropy.sum()
            continue
        kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
        if torch.is_tensor(kl):
            elbo = elbo - kl.sum()
        else:
            elbo = elbo - kl * torch.Size(guide_site["fn"].batch_shape).numel()
    # Auxiliary guide sites (an autoguide's joint latent) have no model counterpart.
    for name, guide_site in guide_trace.nodes.items():
        if guide_site["type"] == "sample" and name not in model_trace.nodes:
            if is_validation_enabled():
                check_fully_reparametrized(guide_site)
            elbo = elbo - guide_site["score_parts"].entropy_term.sum()
    return elbo
