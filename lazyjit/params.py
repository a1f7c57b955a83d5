"""Parameter plumbing: find the params a function touches and make them explicit inputs.

A compiled program must be a pure function of tensors. Pyro functions read params from
the global param store, so on the first call a param-only trace collects their names,
and the program receives their *unconstrained* values as its first inputs. Inside the
program :class:`ParamInputs` answers every ``pyro.param`` statement from those inputs.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_messenger import TraceMessenger
from torch.distributions import constraints, transform_to

from . import pyro_shim
from .signature import rebuild


def find_params(fn: Callable, args: tuple, kwargs: dict) -> tuple[tuple[str, ...], Any]:
    """Runs ``fn`` eagerly, as a call of it would run; returns the names of the params it
    touched, in first-use order (which fixes the program's input order), and its result.

    Handlers around the call see its ``pyro.param`` statements, as they see those a
    compiled call announces (:func:`announce_params`), and nothing else.
    """
    with poutine.block(hide_fn=lambda msg: msg["type"] != "param"):
        with poutine.trace(param_only=True) as tr:
            result = fn(*args, **kwargs)
    return tuple(tr.trace.nodes), result


class ParamInputs(Messenger):
    """Answers ``pyro.param(name)`` for the plumbed names from explicit unconstrained inputs."""

    def __init__(self, unconstrained: dict[str, torch.Tensor]):
        super().__init__()
        self.unconstrained = unconstrained

    def _pyro_param(self, msg: dict) -> None:
        value = self.unconstrained.get(msg["name"])
        if value is None:
            return
        constrained = transform_to(pyro_shim.store_constraints()[msg["name"]])(value)
        # Pyro's autoguides and PyroModule call .unconstrained() on what pyro.param returns.
        constrained.unconstrained = weakref.ref(value)
        msg["value"] = constrained
        msg["done"] = True


def announce_params(names: Sequence[str]) -> None:
    """Issues a ``pyro.param`` statement per name, as Pyro's jit does, so that handlers
    around the call see the params: an ``SVI`` step finds what to optimise this way."""
    if len(pyro_shim.HANDLER_STACK) == 1 and type(pyro_shim.HANDLER_STACK[0]) is TraceMessenger:
        # An SVI step's param capture and nothing else, at every step: record the sites
        # as the statements would, without the cost of their message passing.
        trace = pyro_shim.HANDLER_STACK[0].trace
        for name in names:
            trace.add_node(name, **_param_message(name))
        return
    for name in names:
        pyro.param(name)


def _param_message(name: str) -> dict[str, Any]:
    """The message of ``pyro.param(name)`` once Pyro's stack has run it, for a
    :class:`~pyro.poutine.trace_messenger.TraceMessenger` alone (which changes nothing
    in it): the value is the store's constrained param."""
    return {
        "type": "param",
        "name": name,
        "fn": pyro_shim.PARAM_STORE.get_param,
        "is_observed": False,
        "args": (name,),
        "kwargs": {"constraint": constraints.real, "event_dim": None},
        "value": _constrained(name),
        "scale": 1.0,
        "mask": None,
        "cond_indep_stack": (),
        "done": True,
        "stop": False,
        "continuation": None,
        "infer": {},
    }


# id(constraint) -> (constraint, its transform): transform_to looks the transform up and
# builds it anew at each call, a sizeable part of a small compiled step. Holding the
# constraint keeps its id from being reused.
_TRANSFORMS: dict[int, tuple[constraints.Constraint, Any]] = {}


def clear_transforms() -> None:
    """Forgets the transforms kept for constraints (see :func:`lazyjit.clear_caches`)."""
    _TRANSFORMS.clear()


def _constrained(name: str) -> torch.Tensor:
    """``pyro_shim.PARAM_STORE[name]``: the constrained value, which knows its unconstrained
    tensor, with the transform kept from earlier calls."""
    unconstrained = pyro_shim.store_params()[name]
    constraint = pyro_shim.store_constraints()[name]
    cached = _TRANSFORMS.get(id(constraint))
    if cached is None or cached[0] is not constraint:
        if len(_TRANSFORMS) >= 256:
            _TRANSFORMS.clear()
        transform = transform_to(constraint)
        # A param changes in place: a transform that caches x -> y would go stale.
        cached = (constraint, transform if transform._cache_size == 0 else None)
        _TRANSFORMS[id(constraint)] = cached
    if cached[1] is None:
        return pyro_shim.PARAM_STORE[name]
    value = cached[1](unconstrained)
    value.unconstrained = weakref.ref(unconstrained)
    return value


def pure_function(fn: Callable, key: tuple, param_names: Sequence[str]) -> Callable[..., Any]:
    """``fn`` as a function of ``(*unconstrained_params, *tensor_leaves)``.

    It is isolated from effect handlers around the call (``poutine.block``): what it
    computes depends only on its inputs, never on the context of the first call.
    The returned closure holds ``fn`` weakly so a cache entry does not keep it alive.
    """
    fn_ref = _weak_callable(fn)
    num_params = len(param_names)

    def pure(*inputs: torch.Tensor) -> Any:
        args, kwargs = rebuild(key, list(inputs[num_params:]))
        with poutine.block(), ParamInputs(dict(zip(param_names, inputs[:num_params]))):
            return fn_ref()(*args, **kwargs)

    return pure


def _weak_callable(fn: Callable) -> Callable[[], Callable]:
    try:
        ref = weakref.WeakMethod(fn) if hasattr(fn, "__self__") else weakref.ref(fn)
    except TypeError:
        return lambda: fn

    def deref() -> Callable:
        target = ref()
        if target is None:
            raise ReferenceError("the function behind this compiled program was garbage collected")
        return target

    return deref
