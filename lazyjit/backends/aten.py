"""The ``"aten"`` backend: the function captured once as an aten graph, run as FX code.

:class:`GraphProgram` is also the base of the ``"aten-jit"`` and ``"inductor"``
programs, which differ only in what runs each captured graph (:meth:`GraphProgram.finish`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx import GraphModule

from ..errors import warn_once
from ..graph.capture import (
    Flat,
    Runner,
    capture,
    capture_value_and_grad,
    fresh_inputs,
    run_value_and_grad,
)
from ..graph.pycode import fx_code
from ..log import Stopwatch
from .base import Backend, Program, needs_autograd


class GraphProgram(Program):
    """A function captured by :func:`capture` as one aten graph, run as generated FX code.

    :ivar flat: the pure function that was captured; the value-and-grad graph is captured
        from it (not from the forward graph: a custom ``torch.autograd.Function``'s backward
        only exists while its Python code runs).
    :ivar graph_module: the forward graph (``.code`` shows the generated Python).
    :ivar grad_graph_modules: ``{wrt: graph}`` of the value-and-grad graphs captured so far.
    :ivar custom_autograd: the custom ``torch.autograd.Function`` classes the forward went
        through. Their backward is not in the graph, so differentiating a call of this
        program (``.backward()`` on its outputs) runs :attr:`flat` eagerly instead.
    """

    runs_eagerly = False

    def __init__(self, flat: Flat, graph_module: GraphModule, custom_autograd: frozenset[str]):
        super().__init__(graph_module.forward)
        self.flat = flat
        self.graph_module = graph_module
        self.grad_graph_modules: dict[tuple[int, ...], GraphModule] = {}
        self.custom_autograd = custom_autograd
        self._forward: Runner | None = None
        self._grad_runners: dict[tuple[int, ...], Runner | None] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Runs the forward graph. Under grad mode its outputs differentiate as eager's do:
        the aten ops run under autograd (or inductor compiled a backward), and what eager
        computed without grad is detached in the graph (see :func:`capture`)."""
        if self.custom_autograd and needs_autograd(inputs):
            warn_once(
                self._warned,
                "custom_autograd",
                "lazyjit: a differentiable call runs eagerly: it uses "
                f"{', '.join(sorted(self.custom_autograd))}, whose backward an aten graph "
                "cannot keep (value_and_grad stays compiled)",
            )
            return self.flat(*inputs)
        forward = self._forward
        if forward is None:
            with self._lock:
                if self._forward is None:
                    # The grad mode is in the cache key: it is the same on every call.
                    self._forward = self.finish(self.graph_module, inputs, needs_autograd(inputs))
                forward = self._forward
        return tuple(forward(*inputs))

    def value_and_grad(
        self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]
    ) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
        """Runs the value-and-grad graph for ``wrt``, captured on the first call: outputs
        and gradients come out of one graph, and no autograd runs at call time."""
        wrt = tuple(wrt)
        if wrt not in self._grad_runners:
            with self._lock:
                if wrt not in self._grad_runners:
                    self._grad_runners[wrt] = self._build_grad_runner(inputs, wrt)
        runner = self._grad_runners[wrt]
        if runner is None:
            # Not over the forward graph: captured in a no-grad entry, it is all detached.
            return Program(self.flat).value_and_grad(inputs, wrt)
        return run_value_and_grad(runner, inputs, len(wrt))

    def _build_grad_runner(
        self, inputs: Sequence[torch.Tensor], wrt: tuple[int, ...]
    ) -> Runner | None:
        clock = Stopwatch()
        try:
            graph_module = capture_value_and_grad(self.flat, fresh_inputs(self.flat, inputs), wrt)
        except Exception as e:  # noqa: BLE001 - the eager path below is always correct
            warn_once(
                self._warned,
                "grad_capture",
                f"lazyjit: value_and_grad runs eagerly: capturing the gradients failed "
                f"({type(e).__name__}: {e})",
            )
            return None
        self.grad_graph_modules[wrt] = graph_module
        clock.done(
            self.add_compile_seconds,
            "lazyjit: captured a value-and-grad graph (%d nodes) in %.3f s",
            len(graph_module.graph.nodes),
        )
        return self.finish(graph_module, inputs, False)

    def finish(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool
    ) -> Runner:
        """What runs a captured graph (``grad``: whether its outputs must be
        differentiable); here its generated code (:func:`lazyjit.graph.pycode.fx_code`),
        called without the ``nn.Module.__call__`` machinery."""
        return fx_code(graph_module)

    def compile_or_fx(
        self, graph_module: GraphModule, compiler: str, compile: Callable[[], Runner], grad: bool
    ) -> Runner:
        """``compile()``, timed and logged; where it fails, the graph's FX code (the same
        computation, only slower) with a one-time :class:`LazyJitWarning`."""
        clock = Stopwatch()
        try:
            runner = compile()
        except Exception as e:  # noqa: BLE001 - the FX code computes the same thing
            warn_once(
                self._warned,
                compiler,
                f"lazyjit: {compiler} failed to compile a graph ({type(e).__name__}: {e}); "
                "it runs as FX code instead",
            )
            return fx_code(graph_module)
        clock.done(
            self.add_compile_seconds,
            "lazyjit: %s compiled a graph (%d nodes%s) in %.3f s",
            compiler,
            len(graph_module.graph.nodes),
            ", with backward" if grad else "",
        )
        return runner


class AtenBackend(Backend):
    """Captures the function once into an aten graph run as FX code.

    The capture (:func:`lazyjit.graph.recorder.record`, what ``make_fx`` does in its ``"real"``
    mode) runs the function on the real tensors and records the aten ops as they execute.
    Two things follow that ``torch.export`` and ``aot_autograd`` (fake tensors, and dynamo
    for export, which graph-breaks at every Pyro site) would lose:

    * an input is identified by the tensor object itself, so the params a PyroModule or
      ``pyro.module`` reads from the module (the very tensors of the param store, passed
      as inputs) become graph inputs without any substitution;
    * the recorded ops are exactly those eager runs, random draws included, so the graph
      draws the same numbers as eager from the same seed.

    The graph is not functionalized: in-place ops run fine as FX code, and inductor
    functionalizes what it compiles itself. ``options`` (TorchScript's) are ignored.
    """

    name = "aten"
    captures_graph = True
    program_class: type[GraphProgram] = GraphProgram

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        clock = Stopwatch()
        graph_module, custom_autograd = capture(fn, inputs, replayable=True)
        program = self.program_class(fn, graph_module, custom_autograd)
        clock.done(
            program.add_compile_seconds,
            "lazyjit: captured an aten graph (%d nodes) in %.3f s",
            len(graph_module.graph.nodes),
        )
        return program
