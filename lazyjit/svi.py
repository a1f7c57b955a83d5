"""``lazyjit.SVI``: a whole SVI step (loss, gradients, Adam update) as one compiled graph.

``pyro.infer.SVI`` with a compiled loss still runs Pyro's optimizer in Python: a
``torch.optim.Adam`` per param, a large part of a small model's step. :class:`SVI` captures
one function per call signature that computes the loss, its gradients (inside the graph)
and the Adam update of every param, runs it as FX code at once and as inductor's code as
the tiers of the ``"auto"`` backend say (see :mod:`lazyjit.backends.tiers`).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pyro.infer
import torch
import torch.distributed
from pyro import poutine
from pyro.infer.util import torch_item, zero_grads
from pyro.optim import PyroOptim
from pyro.optim.clipped_adam import ClippedAdam

from . import pyro_shim, torch_shim
from .backends import AutoBackend, TieredProgram, get_backend
from .elbo import LazyJitELBO
from .entry import Entry
from .errors import LazyJitError, LazyJitWarning
from .graph.capture import capture, value_and_grad_of
from .jit import CompiledFunction

# What each supported optimizer must not be asked for (the graph does not implement it).
_UNSUPPORTED = {
    torch.optim.Adam: {
        "amsgrad": False,
        "maximize": False,
        "decoupled_weight_decay": False,
        "differentiable": False,
    },
    ClippedAdam: {"centered_variance": False},
}


class SVI(pyro.infer.SVI):
    """:class:`pyro.infer.SVI` whose step is one compiled graph: loss, gradients and the
    Adam (or ClippedAdam) update of every param.

    Same arguments and methods as Pyro's (``step``, ``evaluate_loss``); ``loss`` must be
    a lazyjit Jit ELBO and ``optim`` a ``pyro.optim.Adam`` or ``pyro.optim.ClippedAdam``
    (anything else raises :class:`LazyJitError`). Steps give the same numbers as
    ``pyro.infer.SVI`` with the eager ELBO and the same optimizer, from the same seed.

    The first step of each call signature is Pyro's step with the eager ELBO: it creates
    the params lazily, as Pyro does, and the optimizer state (its Adam update is the
    fused graph's, run eagerly, which spares a short run torch's import of dynamo). The
    second captures the fused step (about as long as one capture of the loss) and runs
    it as FX code; inductor compiles it in the background and later steps run the
    compiled code once it is ready.
    The optimizer state stays in ``optim`` (``optim.get_state()`` and ``save`` work); a
    ClippedAdam's decayed learning rate is computed inside the graph, so its
    ``param_groups[0]["lr"]`` stays at the value it had when the step was compiled.

    Steps that a fused graph cannot serve run as ``pyro.infer.SVI`` steps with the
    compiled loss: when a tensor argument requires grad (its gradient flows back as with
    Pyro), and, with a one-time :class:`LazyJitWarning`, when capturing the step fails.

    In a data-parallel run (an initialized ``torch.distributed`` process group of more
    than one rank) a step raises :class:`LazyJitError`: the fused update would use this
    rank's gradients alone. Train there with a torch optimizer over
    ``DistributedDataParallel(elbo(model, guide))``, or with Lightning
    (``docs/distributed.md``).

    Example::

        svi = lazyjit.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), lazyjit.JitTrace_ELBO())
        for step in range(2000):
            svi.step(data)
    """

    def __init__(self, model: Callable, guide: Callable, optim: PyroOptim, loss: Any, **kwargs):
        if not isinstance(loss, LazyJitELBO):
            raise LazyJitError(
                f"lazyjit.SVI needs a lazyjit Jit ELBO as its loss (lazyjit.JitTrace_ELBO, ...), "
                f"got {type(loss).__name__}; use pyro.infer.SVI for other losses"
            )
        if not isinstance(optim, PyroOptim) or optim.pt_optim_constructor not in _UNSUPPORTED:
            name = getattr(optim, "pt_optim_constructor", type(optim)).__name__
            raise LazyJitError(
                f"lazyjit.SVI fuses pyro.optim.Adam and pyro.optim.ClippedAdam, not {name}; "
                "use pyro.infer.SVI with this optimizer"
            )
        if optim.pt_clip_args:
            raise LazyJitError(
                "lazyjit.SVI does not fuse PyroOptim's clip_args; use ClippedAdam's clip_norm"
            )
        if isinstance(optim.pt_optim_args, dict):
            _check_options(optim.pt_optim_constructor, optim.pt_optim_args)
        super().__init__(model, guide, optim, loss, **kwargs)
        # The first step of a signature runs the eager ELBO: it creates params and draws
        # random numbers exactly as pyro.infer.SVI with that ELBO would.
        self._eager_loss_and_grads = super(LazyJitELBO, loss).loss_and_grads
        # Entries (the loss as a pure function of params and tensors) for each signature;
        # nothing is compiled there, the fused graphs are built below.
        self._entries = CompiledFunction(
            loss.compiled_fn.fn, backend="eager", cache_size=loss.compiled_fn.cache_size
        )
        # The fused steps follow the tiers of the loss's backend where it has tiers.
        backend = loss.compiled_fn.backend
        self._auto = backend if isinstance(backend, AutoBackend) else get_backend("auto")
        self._steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned = False

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One SVI step: returns the loss estimate and updates every param in place."""
        hit = self._entries.lookup(self.model, self.guide, *args, **kwargs)
        if hit is None:
            _check_single_process()
            loss = self._first_step(*args, **kwargs)
            # Compiling runs the loss: it must not consume the random stream that the
            # next step draws from, as eager Pyro would.
            with torch.random.fork_rng():
                self._entries.value_and_grad(self.model, self.guide, *args, **kwargs)
            return loss
        entry, params, leaves = hit
        fused = self._steps.get(entry)
        if fused is None:
            fused = self._steps[entry] = self._build(entry, params, leaves)
        if not fused:
            return super().step(*args, **kwargs)
        with torch.no_grad():
            return fused.step(params, leaves)

    def _first_step(self, *args: Any, **kwargs: Any) -> float:
        """``pyro.infer.SVI.step`` with the eager ELBO, whose Adam update is the fused
        graph's ``_adam_update`` run eagerly (bit for bit torch's): ``Adam.step`` imports
        ``torch._dynamo``, about a second of a short run, for nothing here."""
        with poutine.trace(param_only=True) as param_capture:
            loss = self._eager_loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
        with torch_shim.optimizers_without_dynamo():
            pyro_shim.create_optimizers(self.optim, params)
        with torch.no_grad():
            if self.optim.pt_optim_constructor is ClippedAdam:
                for p in params:  # Pyro's own step, which needs no dynamo
                    self.optim.optim_objs[p].step()
            else:
                self._adam_step([p for p in params if p.grad is not None])
        zero_grads(params)
        return torch_item(loss)

    def _adam_step(self, params: list[torch.Tensor]) -> None:
        hyper = [self._hyper(p) for p in params]  # raises on unsupported options, first
        for p, h in zip(params, hyper):
            if p.is_complex() or p.grad.is_sparse:  # torch's step, as the fused one cannot
                self.optim.optim_objs[p].step()
                continue
            state = _adam_state(self.optim.optim_objs[p], p)
            moments = [state["step"], state["exp_avg"], state["exp_avg_sq"]]
            new = _adam_update(p, p.grad, *moments, h)
            torch_shim.foreach_copy_([p, *moments], list(new))

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the background compiles of the fused steps; whether they are done."""
        return all(s.program.wait(timeout) for s in self._steps.values() if s)

    def _build(self, entry: Entry, params: list[torch.Tensor], leaves: list) -> _FusedStep | bool:
        if entry.grad_leaves:
            return False  # documented: Pyro's step, whose backward reaches the arguments
        hyper = [self._hyper(p) for p in params]  # raises on unsupported options
        try:
            with torch.random.fork_rng():
                return _FusedStep(entry, params, leaves, hyper, self.optim, self._auto)
        except Exception as e:  # noqa: BLE001 - Pyro's step computes the same thing
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"lazyjit.SVI: the fused step could not be captured ({type(e).__name__}: "
                    f"{e}); steps run as pyro.infer.SVI steps with the compiled loss",
                    LazyJitWarning,
                    stacklevel=3,
                )
            return False

    def _hyper(self, param: torch.Tensor) -> dict[str, Any]:
        """The optimizer's settings for ``param``, read from its torch optimizer (made by
        the first step, with defaults and per-param arguments resolved)."""
        optimizer = self.optim.optim_objs[param]
        group = optimizer.param_groups[0]
        _check_options(self.optim.pt_optim_constructor, group)
        step = optimizer.state[param].get("step", 0)
        return {
            "lr": float(group["lr"]),
            "betas": tuple(float(b) for b in group["betas"]),
            "eps": float(group["eps"]),
            "weight_decay": float(group["weight_decay"]),
            "clip_norm": float(group.get("clip_norm", math.inf)),
            "lrd": float(group.get("lrd", 1.0)),
            "step": float(step),
        }


def _check_single_process() -> None:
    """Raises :class:`LazyJitError` in a data-parallel run.

    The fused graph updates params from this rank's gradients, with no point between the
    two for an all-reduce. Splitting it around one would rebuild what DDP does (broadcast
    the initial params, all-reduce the gradients, update) to save the optimizer's Python
    loop, which costs less than the all-reduce (``docs/distributed.md``).
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise LazyJitError(
            "lazyjit.SVI fuses the update with this rank's gradients alone; in a "
            f"data-parallel run (torch.distributed, {dist.get_world_size()} ranks) the "
            "ranks would drift apart. Step a torch optimizer over "
            "DistributedDataParallel(elbo(model, guide)), whose loss is the compiled ELBO, "
            "or use Lightning (docs/distributed.md); for independent runs on each rank, "
            "use pyro.infer.SVI with the lazyjit ELBO"
        )


def _check_options(constructor: type, options: dict) -> None:
    for name, supported in _UNSUPPORTED[constructor].items():
        if options.get(name, supported) != supported:
            raise LazyJitError(
                f"lazyjit.SVI does not fuse {constructor.__name__} with {name}={options[name]!r}; "
                "use pyro.infer.SVI"
            )


class _FusedStep:
    """The fused step of one compiled entry: a :class:`TieredProgram` of
    ``(params, tensor args, steps, m, v) -> (loss, params, steps, m, v)``, and the
    optimizer state tensors that its results are written back to."""

    def __init__(
        self,
        entry: Entry,
        params: list[torch.Tensor],
        leaves: list,
        hyper: list[dict[str, float]],
        optim: PyroOptim,
        auto: AutoBackend,
    ):
        states = [_adam_state(optim.optim_objs[p], p) for p in params]
        self.state = [
            *(s["step"] for s in states),
            *(s["exp_avg"] for s in states),
            *(s["exp_avg_sq"] for s in states),
        ]
        clipped = optim.pt_optim_constructor is ClippedAdam
        update = _clipped_adam_update if clipped else _adam_update
        flat = _fused(entry, update, hyper)
        with torch.enable_grad():  # the gradients are taken inside the graph
            graph_module, _ = capture(flat, [*params, *leaves, *self.state])
        # The step is hot from its first call: it only exists for a signature that
        # repeats. Inductor compiles it then, and the step switches as auto's policy says.
        self.program = TieredProgram.of_graph(flat, graph_module, auto.policy.replace(hot_calls=1))

    def step(self, params: list[torch.Tensor], leaves: list) -> float:
        outputs = self.program(*params, *leaves, *self.state)
        torch_shim.foreach_copy_([*params, *self.state], list(outputs[1:]))
        return outputs[0].item()


def _adam_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> dict:
    """The optimizer's state for ``param`` as tensors, created as torch's Adam creates it
    if Pyro's step left none (a param without gradient)."""
    state = optimizer.state[param]
    if not state:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    elif not torch.is_tensor(state["step"]):  # ClippedAdam counts in a Python int
        state["step"] = torch.tensor(float(state["step"]))
    return state


def _fused(
    entry: Entry, update: Callable[..., tuple[torch.Tensor, ...]], hyper: list[dict[str, float]]
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The pure function a fused step runs: the loss and its gradients (one
    value-and-grad computation, as the graph backends capture it), then ``update`` of
    each param. Outputs: the loss, then new params, steps, first and second moments."""
    value_and_grad = value_and_grad_of(entry.flat, entry.wrt)
    num = len(entry.param_names)

    def fused(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = inputs[-3 * num :]
        results = value_and_grad(*inputs[: -3 * num])
        if len(results) != 2 + len(entry.wrt):
            # A guard's check would have no call to fall back to: the step updates params.
            raise LazyJitError("the loss branches on tensor values (its graph is guarded)")
        _, loss, *grads = results  # the ELBO's (surrogate, loss), then its gradients
        new = [
            update(p, g, step, m, v, h)
            for p, g, step, m, v, h in zip(
                inputs[:num], grads, state[:num], state[num : 2 * num], state[2 * num :], hyper
            )
        ]
        return (loss, *(n[i] for i in range(4) for n in new))

    return fused


def _adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    step: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    hyper: dict[str, float],
) -> tuple[torch.Tensor, ...]:
    """``torch.optim.Adam``'s single-tensor step as a function, op for op; its scalars
    are computed in double precision, as torch computes them in Python."""
    beta1, beta2 = hyper["betas"]
    step = step + 1
    if hyper["weight_decay"] != 0:
        grad = grad.add(param, alpha=hyper["weight_decay"])
    m = torch.lerp(m, grad, 1 - beta1)
    v = (v * beta2).addcmul(grad, grad, value=1 - beta2)
    count = step.double()
    step_size = hyper["lr"] / (1 - beta1**count)
    bias_correction2_sqrt = (1 - beta2**count) ** 0.5
    denom = v.sqrt() / bias_correction2_sqrt + hyper["eps"]
    return param + -step_size * m / denom, step, m, v


def _clipped_adam_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    step: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    hyper: dict[str, float],
) -> tuple[torch.Tensor, ...]:
    """``pyro.optim.clipped_adam.ClippedAdam.step`` for one param, as a function. Its
    learning rate is multiplied by ``lrd`` at every step, counted from the step at
    which ``hyper["lr"]`` was read (``hyper["step"]``)."""
    beta1, beta2 = hyper["betas"]
    grad = grad.clamp(-hyper["clip_norm"], hyper["clip_norm"])
    step = step + 1
    if hyper["weight_decay"] != 0:
        grad = grad.add(param, alpha=hyper["weight_decay"])
    m = (m * beta1).add(grad, alpha=1 - beta1)
    v = (v * beta2).addcmul(grad, grad, value=1 - beta2)
    denom = v.sqrt() + hyper["eps"]
    count = step.double()
    lr = hyper["lr"] * hyper["lrd"] ** (count - hyper["step"])
    step_size = lr * (1 - beta2**count).sqrt() / (1 - beta1**count)
    return param + -step_size * m / denom, step, m, v
