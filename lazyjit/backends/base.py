"""What every backend shares: the :class:`Program` interface and the :class:`Backend`
base class, with the eager backend (no compilation) as the simplest of them."""

from __future__ import annotations

import operator
import threading
from collections.abc import Sequence
from typing import Any

import torch

from ..graph.capture import Flat
from ..tensors import gradients


class Program:
    """A compiled function of flat tensor inputs returning a tuple of tensors.

    :meth:`value_and_grad` is the one call the ELBOs and MCMC build on. This default
    runs autograd over the program at call time; a graph-capture backend overrides it
    to return gradients computed inside its graph.

    :ivar runs_eagerly: whether calls run the Pyro code itself (not compiled code).
    :ivar compile_seconds: time spent capturing and compiling it, lazy work included.
    """

    runs_eagerly = True
    compile_seconds = 0.0

    def __init__(self, fn: Flat):
        self.fn = fn

    def add_compile_seconds(self, seconds: float) -> None:
        """Adds to :attr:`compile_seconds` (from any thread)."""
        with _SECONDS_LOCK:
            self.compile_seconds += seconds

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.fn(*inputs)

    def value_and_grad(
        self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]
    ) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
        """Outputs, and the gradient of output 0 (a scalar) w.r.t. ``inputs[i]`` for
        each ``i`` in ``wrt`` (zeros where it does not depend on that input)."""
        # This runs at every SVI step and leapfrog step, right after the program has
        # evicted Python's working set from the CPU caches: every frame and object touched
        # here costs far more than in a microbenchmark. Hence C-level map/attrgetter and
        # recursion for the rare cases instead of generator expressions.
        if not torch.is_grad_enabled():
            with torch.enable_grad():
                return self.value_and_grad(inputs, wrt)
        targets = [inputs[i] for i in wrt]
        if not all(map(_REQUIRES_GRAD, targets)):
            inputs = list(inputs)
            for i in wrt:
                if not inputs[i].requires_grad:
                    inputs[i] = inputs[i].detach().requires_grad_()
            return self.value_and_grad(inputs, wrt)
        outputs = self(*inputs)
        return tuple(map(torch.Tensor.detach, outputs)), gradients(outputs[0], targets)


_REQUIRES_GRAD = operator.attrgetter("requires_grad")
_SECONDS_LOCK = threading.Lock()


class Backend:
    """Turns a pure function of flat tensors into a :class:`Program`.

    A backend is a small object with a ``name``, capability flags, and one method,
    :meth:`compile` (and :meth:`prepare`, where it has something to start early); register
    a new one with :func:`lazyjit.backends.register_backend`.

    :cvar captures_graph: it records the function as an aten graph (its programs hold
        ``graph_module``).
    :cvar compiles_graph: it runs that graph compiled, not op by op (a NUTS leaf is
        worth compiling whole).
    """

    name = "base"
    captures_graph = False
    compiles_graph = False

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        """A program computing ``fn``, built for inputs like ``inputs`` (the call's own,
        which it may run once). ``options`` are the user's ``jit_options``."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Called when a function is wrapped for this backend, before its first call:
        what the backend's compiles will need can start now, beside the user's setup."""


class EagerBackend(Backend):
    """Runs the pure function as it is: the plumbing and the cache, no compilation."""

    name = "eager"

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        return Program(fn)


def needs_autograd(inputs: Sequence[torch.Tensor]) -> bool:
    """Whether a call on ``inputs`` must give outputs that autograd can differentiate."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
