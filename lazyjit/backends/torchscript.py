"""The ``"torchscript"`` backend: ``torch.jit.trace`` of the Pyro code, as Pyro's jit does.

TorchScript is deprecated upstream; this backend is kept for parity with Pyro's jit and
for :func:`jit_trace`, which the ``"aten-jit"`` tier uses to run captured graphs. While
it traces, value reads are sorted by :mod:`lazyjit.guards` with
:func:`depends_on_data`, which walks the traced graph back towards its inputs.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .. import guards, torch_shim
from ..config import TORCHSCRIPT_MAX_OPTIMIZED_NODES
from ..errors import StructureError
from ..graph.capture import Flat
from ..tensors import keep_random_stream
from .base import Backend, Program
from .threads import WARNINGS_LOCK

logger = logging.getLogger("lazyjit")


class TorchScriptProgram(Program):
    """A ``torch.jit.trace`` artifact; ``script`` holds it for diagnostics (``.graph``, ``.code``).

    :ivar optimize: whether TorchScript's executor optimizes the graph (it profiles the
        first call and optimizes in the second, as for Pyro's jit); if not, every call
        runs the traced graph as it is.
    """

    runs_eagerly = False

    def __init__(self, script: Any, optimize: bool = True):
        super().__init__(script if optimize else functools.partial(_unoptimized, script))
        self.script = script
        self.optimize = optimize


def _unoptimized(script: Any, *inputs: torch.Tensor) -> Any:
    """``script(*inputs)`` with the graph executor's optimization off."""
    with torch_shim.unoptimized_execution():
        return script(*inputs)


class TorchScriptBackend(Backend):
    """``torch.jit.trace`` (deprecated upstream; kept for parity with Pyro's jit).

    Example::

        loss_fn = lazyjit.trace(loss_fn, backend="torchscript")

    :param optimize: see :class:`TorchScriptProgram`. Off, the first calls are cheaper
        and later ones somewhat slower (``docs/backends.md``).
    :param max_optimized_nodes: a traced graph of more nodes runs unoptimized: the
        executor's optimization grows faster than the graph and gains less.
    """

    name = "torchscript"

    def __init__(
        self, optimize: bool = True, max_optimized_nodes: int = TORCHSCRIPT_MAX_OPTIMIZED_NODES
    ):
        self.optimize = optimize
        self.max_optimized_nodes = max_optimized_nodes

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        options = {"check_trace": False, **options}
        outer_trace, _this_trace.derived = getattr(_this_trace, "derived", None), set()
        try:
            with (
                # No compiler thread in catch_warnings meanwhile (lazyjit.backends.threads).
                WARNINGS_LOCK,
                warnings.catch_warnings(record=True) as caught,
                guards.watching(depends_on_data),
                # Tracing runs the function once: its random draws must not move the stream.
                keep_random_stream(inputs),
            ):
                warnings.simplefilter("always")
                script = jit_trace(fn, tuple(inputs), options)
        finally:
            _this_trace.derived = outer_trace
        for w in caught:
            if _NO_CONCERN.search(str(w.message)):
                continue
            if issubclass(w.category, torch.jit.TracerWarning) and _DATA_DEPENDENT.match(
                str(w.message)
            ):
                raise StructureError(str(w.message).split(".")[0], f"{w.filename}:{w.lineno}")
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        optimize = self.optimize and _num_nodes(script.graph) <= self.max_optimized_nodes
        if self.optimize and not optimize:
            logger.info(
                "lazyjit: the traced graph runs unoptimized: it has more than %d nodes",
                self.max_optimized_nodes,
            )
        return TorchScriptProgram(script, optimize)


def _num_nodes(graph: torch._C.Graph) -> int:
    return sum(1 for _ in graph.nodes())


def jit_trace(
    fn: Flat, inputs: tuple[torch.Tensor, ...], options: dict[str, Any], names: bool = True
) -> Any:
    """``torch.jit.trace(fn, inputs, **options)``, without its leak where it can.

    ``torch.jit.trace`` registers every function it traces in one process-wide
    CompilationUnit, which never lets go of it: each evicted cache entry would keep its
    graph and executor state. The same tracer puts the graph in a CompilationUnit of
    the entry's own, freed with it. Options only ``torch.jit.trace`` implements
    (``check_trace=True``, ``check_inputs``, ...) take the leaky road.

    ``names=False`` leaves the graph's values unnamed, for a captured graph whose values
    have no names of use (naming them is quadratic over a generated FX forward).
    """
    private = {"check_trace", "strict", "_force_outplace"}
    if options.get("check_trace") or not set(options) <= private or not torch_shim.jit_enabled():
        return torch.jit.trace(fn, inputs, **options)
    return torch_shim.trace_to_function(
        fn, inputs, names, options.get("strict", True), options.get("_force_outplace", False)
    )


# TracerWarnings that mean the trace baked in a decision taken on a tensor's value (one
# that lazyjit.guards did not cover).
_DATA_DEPENDENT = re.compile(r"Converting a tensor to a")
# Warnings of no concern to the user: the deprecation, and iterating over a tensor, whose
# number of items is a shape, which the cache key fixes.
_NO_CONCERN = re.compile(r"torch\.jit\.trace.* is deprecated|Iterating over a tensor")

# While tracing, tensor sizes are tensors too, so a branch on a shape (`if x.shape[0] != 1`,
# in Pyro and in torch.distributions alike) makes the tracer warn as if it read data. Every
# call is keyed on its input shapes, so a value computed from shapes and constants alone
# is static per compiled entry (see lazyjit.guards).
# Per thread, the (value, shape only) pairs of the current trace's graph known to follow
# from shapes and constants: a later walk stops there, so a trace with many
# conversions (an HMM's every time step) walks each part of its graph once, not once
# per conversion.
_this_trace = threading.local()
_SIZE_OPS = frozenset({"aten::size", "aten::numel", "aten::dim"})


def depends_on_data(tensor: torch.Tensor) -> bool:
    """Whether a tensor that TorchScript traces depends on the trace's input data."""
    return torch_shim.get_tracing_state() is not None and not _shape_derived(tensor)


def _shape_derived(tensor: torch.Tensor) -> bool:
    """Whether a traced tensor follows from the trace's input shapes and constants alone:
    no input data, no random draw, and no size of a data-dependent shape on the way."""
    try:
        start = torch_shim.value_trace(tensor)
    except RuntimeError:
        return False
    derived = getattr(_this_trace, "derived", None)
    if derived is None:
        derived = set()
    # (value, whether only its shape matters); walks the graph towards the inputs.
    stack = [(start, False)]
    seen: set[tuple[int, bool]] = set()
    while stack:
        value, shape_only = stack.pop()
        pair = (value.unique(), shape_only)
        if pair in seen or pair in derived:
            continue
        seen.add(pair)
        node = value.node()
        kind = node.kind()
        if kind == "prim::Constant" or (shape_only and kind == "prim::Param"):
            continue
        if kind == "prim::Param":
            return False
        if shape_only:
            if _dynamic_shape(node):
                return False
            # Tensors (lists of them too) pass on their shapes; numbers are sizes.
            stack.extend((i, "Tensor" in str(i.type())) for i in node.inputs())
        elif kind in _SIZE_OPS:
            stack.extend((i, n == 0) for n, i in enumerate(node.inputs()))
        elif torch.Tag.nondeterministic_seeded in _op_tags(kind):
            return False
        else:
            stack.extend((i, False) for i in node.inputs())
    derived |= seen  # the walk reached no input data from any of them
    return True


def _dynamic_shape(node: torch._C.Node) -> bool:
    if torch.Tag.dynamic_output_shape not in _op_tags(node.kind()):
        return False
    if node.kind() != "aten::index":
        return True
    # Integer indices give a shape that follows from shapes; a boolean mask does not.
    indices = node.inputsAt(1).node()
    return indices.kind() != "prim::ListConstruct" or any(
        i.type().kind() == "TensorType" and i.type().scalarType() not in _INDEX_DTYPES
        for i in indices.inputs()
    )


_INDEX_DTYPES = frozenset({"Long", "Int", "Short", "Char"})


@functools.cache
def _op_tags(kind: str) -> frozenset:
    namespace, _, name = kind.partition("::")
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
        return frozenset(tag for o in packet.overloads() for tag in getattr(packet, o).tags)
    except (AttributeError, RuntimeError):
        return frozenset()  # prim:: plumbing (NumToTensor, ListConstruct, ...): no tags
