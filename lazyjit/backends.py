"""Compiler backends: each turns a pure function of flat tensors into a :class:`Program`.

A backend is a small object with a ``name`` and one method, ``compile``. Adding one
means writing a :class:`Backend` subclass here and registering it in ``BACKENDS``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import LazyJitError, StructureError

Flat = Callable[..., tuple[torch.Tensor, ...]]


class Program:
    """A compiled function of flat tensor inputs returning a tuple of tensors.

    :meth:`value_and_grad` is the one call the ELBOs and MCMC build on. This default
    runs autograd over the program at call time; a graph-capture backend overrides it
    to return gradients computed inside its graph.
    """

    def __init__(self, fn: Flat):
        self.fn = fn

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.fn(*inputs)

    def value_and_grad(
        self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]
    ) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
        """Outputs, and the gradient of output 0 (a scalar) w.r.t. ``inputs[i]`` for
        each ``i`` in ``wrt`` (zeros where it does not depend on that input)."""
        inputs = list(inputs)
        for i in wrt:
            if not inputs[i].requires_grad:
                inputs[i] = inputs[i].detach().requires_grad_()
        with torch.enable_grad():
            outputs = self(*inputs)
            targets = [inputs[i] for i in wrt]
            if targets and outputs[0].requires_grad:
                grads = torch.autograd.grad(outputs[0], targets, allow_unused=True)
            else:
                grads = (None,) * len(targets)
        grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
        return tuple(o.detach() if o.requires_grad else o for o in outputs), grads


class Backend:
    """Runs the pure function as it is: the plumbing and the cache, no compilation."""

    name = "eager"

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        return Program(fn)


class TorchScriptProgram(Program):
    """A ``torch.jit.trace`` artifact; ``script`` holds it for diagnostics (``.graph``, ``.code``)."""

    def __init__(self, script: Any):
        super().__init__(script)
        self.script = script


class TorchScriptBackend(Backend):
    """``torch.jit.trace`` (deprecated upstream; kept for parity with Pyro's jit)."""

    name = "torchscript"

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        options = {"check_trace": False, **options}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            script = torch.jit.trace(fn, tuple(inputs), **options)
        for w in caught:
            if _DEPRECATED.search(str(w.message)):
                continue
            if issubclass(w.category, torch.jit.TracerWarning) and _DATA_DEPENDENT.match(
                str(w.message)
            ):
                raise StructureError(str(w.message).split(".")[0], f"{w.filename}:{w.lineno}")
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return TorchScriptProgram(script)


# TracerWarnings that mean the trace baked in a decision taken on a tensor's value.
# Pyro wraps its own safe conversions in ignore_jit_warnings(), so they never get here.
_DATA_DEPENDENT = re.compile(r"Converting a tensor to a|Iterating over a tensor")
_DEPRECATED = re.compile(r"torch\.jit\.trace.* is deprecated")


BACKENDS: dict[str, Backend] = {b.name: b for b in (Backend(), TorchScriptBackend())}


def get_backend(name: str) -> Backend:
    """The registered backend called ``name``."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise LazyJitError(
            f"unknown lazyjit backend {name!r}; choose one of {sorted(BACKENDS)}"
        ) from None
