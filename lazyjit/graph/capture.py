"""Graph capture: a pure function of tensors recorded as one aten graph, ready to run.

:func:`capture` records the forward graph, :func:`capture_value_and_grad` one graph of
the outputs and the gradients (``torch.autograd.grad`` recorded as graph ops). While a
thread captures, two shims make Pyro take its trace-safe paths, as under TorchScript's
tracer: see :data:`pyro_sees_a_tracer` and :class:`StaticDiceTerms`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from pyro import validation_enabled
from torch.fx import Graph, GraphModule, Node
from torch.overrides import TorchFunctionMode

from .. import torch_shim
from ..errors import StructureError, error_site
from ..patching import SharedPatch
from ..tensors import copies, gradients, keep_random_stream
from . import recorder
from .recorder import DATA_DEPENDENT, record
from .simplify import simplify

# The function captured: tensors in, a tuple of tensors out. lazyjit.trace's carries
# `num_params` (its first inputs are params, the rest the call's tensors), `guard` and
# `fell_back()` (see lazyjit.entry.Flat).
Flat = Callable[..., tuple[torch.Tensor, ...]]
# What runs a captured graph: its FX code, or a compiler's function (a list out).
Runner = Callable[..., Sequence[torch.Tensor]]

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_CAPTURE_FILES = (__file__, recorder.__file__)


def capture(
    fn: Flat, inputs: Sequence[torch.Tensor], replayable: bool = False, no_grad: bool = False
) -> tuple[GraphModule, frozenset[str]]:
    """``fn`` recorded as an aten graph on ``inputs`` (:func:`lazyjit.graph.recorder.record`,
    ``make_fx``'s real mode), rid of its no-ops (:func:`lazyjit.graph.simplify.simplify`) and
    dead-code-eliminated, and the custom autograd Functions its outputs went through
    (only looked for if ``replayable``). ``no_grad``: the graph will only run under
    ``torch.no_grad()``.

    Raises :class:`StructureError` if ``fn`` reads a tensor's value. Random draws made
    while capturing do not advance the global generators: capturing is invisible to the
    user's random stream. Dead-code elimination keeps random ops whose result is unused,
    so the graph consumes the random stream exactly as eager does.

    ``replayable``: the graph will run under autograd, and must differentiate as eager
    does. A graph records ops, not the grad mode they ran in, so the output of every op
    that ran with grad mode off on inputs that require grad (a ``torch.no_grad()`` block,
    a distribution's ``sample``, ``torch.autograd.grad``'s own ops) is detached in the
    graph, as it was in eager. (``make_fx(pre_dispatch=True)`` records grad-mode switches,
    but there ``torch.autograd.grad`` bakes the forward values autograd saved into the
    graph as constants: gradients inside the function would be silently stale.)
    """
    custom_autograd: set[str] = set()

    def traced(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with StaticDiceTerms():
            outputs = tuple(fn(*args))
        if replayable:
            custom_autograd.update(_custom_autograd_functions(outputs))
        return outputs

    try:
        with validation_enabled(False), keep_random_stream(inputs), pyro_sees_a_tracer():
            root, graph = record(traced, inputs, detach_no_grad=replayable)
    except RuntimeError as e:
        if DATA_DEPENDENT in str(e):
            raise StructureError(
                "it reads the value of a tensor (a branch on it, .item(), bool(), int())",
                _site(e),
            ) from e
        raise
    simplify(root, graph, drop_detach=no_grad or not _grad_anywhere(root, graph, inputs))
    graph.eliminate_dead_code()
    # Made last, it takes only the constants that the graph still reads.
    graph_module = GraphModule(root, graph)
    weakref.finalize(graph_module, torch_shim.forget_fx_sources, {_fx_source_key(graph_module)})
    return graph_module, frozenset(custom_autograd)


def fresh_inputs(flat: Flat, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``inputs`` for a capture made after a call ran on them: the params as they are (a
    PyroModule reads its own), the call's tensors as copies, so that a cache keyed by
    tensor identity inside the function (a torch Transform's) cannot hand the capture the
    call's results, whose autograd graph is gone."""
    num_params = getattr(flat, "num_params", len(inputs))
    return [*inputs[:num_params], *copies(inputs[num_params:])]


def draws(node: Node) -> bool:
    """Whether ``node`` calls a random op (one that draws from the generator)."""
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def op_count(graph_module: GraphModule) -> int:
    """The ops (``call_function`` nodes) of a captured graph."""
    return sum(node.op == "call_function" for node in graph_module.graph.nodes)


def constants(graph_module: GraphModule) -> list[torch.Tensor]:
    """The tensors a captured graph holds (GraphModule registers them as buffers), in the
    order aot_autograd passes them."""
    return [
        t
        for named in (graph_module.named_parameters, graph_module.named_buffers)
        for _, t in named(remove_duplicate=False)
    ]


def _grad_anywhere(root: torch.nn.Module, graph: Graph, inputs: Sequence[torch.Tensor]) -> bool:
    """Whether an input or a constant of the graph (an attribute of ``root``) requires grad."""
    held = [getattr(root, node.target) for node in graph.find_nodes(op="get_attr")]
    return any(t.requires_grad for t in (*inputs, *held))


# torch.fx keeps the source of every GraphModule it generates in a process-wide cache
# (for tracebacks) that never shrinks: a captured graph's sources go with it.
def _fx_source_key(graph_module: GraphModule) -> str:
    """The key of the graph's generated code in torch.fx's source cache (the file name
    it was compiled under)."""
    return type(graph_module).forward.__code__.co_filename


class StaticDiceTerms(TorchFunctionMode):
    """While capturing, Pyro's ``Dice.compute_expectation`` (``TraceEnum_ELBO``) takes its
    trace-safe branch, which keeps the terms of positive probability with ``masked_select``
    before a dot product: an output shape that depends on data, which inductor cannot
    compile. The dot product is the same over every term with the others zeroed, and
    zeroing before the product keeps their gradients zero (``-inf`` costs included)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.masked_select and (
            sys._getframe(1).f_globals.get("__name__") == "pyro.infer.util"
        ):
            tensor, mask = args
            return torch.where(mask, tensor, torch.zeros((), dtype=tensor.dtype)).reshape(-1)
        return func(*args, **kwargs)


# Pyro takes trace-safe paths (no .item(), no branch on a value) where
# torch._C._get_tracing_state() says that torch.jit is tracing, e.g. TraceEnum_ELBO's
# `if tracing or not mask.all()`. lazyjit's recorder is a tracer this flag does not report, so
# while a thread captures, the calls made from Pyro's modules in that thread see a truthy
# state. Pyro only tests it as a boolean; torch's own callers use the state object, and
# keep seeing the real one. The shim is installed only while some thread captures.
_TRACING_FOR_PYRO = object()
_capturing = threading.local()


def _tracing_state_seen_by_pyro() -> Any:
    state = torch_shim.get_tracing_state()
    if state is None and getattr(_capturing, "active", False):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("pyro."):
            return _TRACING_FOR_PYRO
    return state


_tracing_state_shim = SharedPatch(
    lambda: torch_shim.tracing_state_patch(_tracing_state_seen_by_pyro)
)


@contextlib.contextmanager
def pyro_sees_a_tracer() -> Iterator[None]:
    """While this thread captures, Pyro's modules see TorchScript's tracing flag set."""
    was_active = getattr(_capturing, "active", False)
    _capturing.active = True
    try:
        with _tracing_state_shim():
            yield
    finally:
        _capturing.active = was_active


def capture_value_and_grad(
    flat: Flat, inputs: Sequence[torch.Tensor], wrt: tuple[int, ...]
) -> GraphModule:
    """One graph computing ``flat``'s outputs followed by the gradient of output 0 w.r.t.
    ``inputs[i]`` for each ``i`` in ``wrt``: ``torch.autograd.grad`` captured as graph ops."""
    # Inputs keep their identity where they can: a PyroModule reads its regular
    # nn.Parameters from itself, and only the very tensor passed in maps to an input.
    inputs = [
        t.detach().requires_grad_() if i in wrt and not t.requires_grad else t
        for i, t in enumerate(inputs)
    ]
    with torch.enable_grad():
        return capture(value_and_grad_of(flat, wrt), inputs, no_grad=True)[0]


def run_value_and_grad(
    runner: Runner, inputs: Sequence[torch.Tensor], num_wrt: int
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """Runs a graph from :func:`capture_value_and_grad`: (outputs, gradients)."""
    # torch.no_grad() without its context-manager objects (this is the hot path).
    grad_enabled = torch.is_grad_enabled()
    torch_shim.set_grad_enabled(False)
    try:
        results = runner(*inputs)
    finally:
        torch_shim.set_grad_enabled(grad_enabled)
    num_outputs = len(results) - num_wrt
    # An output may be an input passed through, which can require grad.
    results = [r.detach() if r.requires_grad else r for r in results]
    return tuple(results[:num_outputs]), results[num_outputs:]


def value_and_grad_of(flat: Flat, wrt: tuple[int, ...]) -> Flat:
    """``flat``'s outputs followed by the gradient of output 0 w.r.t. ``inputs[i]``, ``i`` in
    ``wrt`` (zeros where it does not depend on it): captured, autograd becomes graph ops."""

    def value_and_grad(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = flat(*inputs)
        return (*outputs, *gradients(outputs[0], [inputs[i] for i in wrt]))

    return value_and_grad


def _custom_autograd_functions(outputs: Sequence[torch.Tensor]) -> set[str]:
    """Names of the Python ``torch.autograd.Function``\\ s in the outputs' autograd history."""
    found: set[str] = set()
    seen: set = set()
    stack = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor)]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            found.add(type(node).__name__.removesuffix("Backward"))
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _site(error: BaseException) -> str:
    """``file:line`` of the innermost frame outside torch and this module's capture
    machinery: the statement that read a value."""
    return error_site(error, lambda f: f.startswith(_TORCH_DIR) or f in _CAPTURE_FILES)
