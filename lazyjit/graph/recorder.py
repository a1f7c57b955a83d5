"""The aten graph of a function, recorded as it runs on real tensors.

What ``make_fx`` does in its ``"real"`` mode, without what lazyjit does not use: the
fake-tensor description of every node (most of ``make_fx``'s time on big graphs) and the
``torch._dynamo`` import that ``make_fx`` starts with (costly in a fresh process;
``docs/backends.md`` has the figures). A torch dispatch mode sees every aten op
below autograd, the backward's included, and appends it to an FX graph.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx import Graph, Node

from .. import guards
from ..torch_shim import TorchDispatchMode, tree_flatten, tree_unflatten

aten = torch.ops.aten

# The message make_fx raises with, which lazyjit's capture turns into a StructureError.
DATA_DEPENDENT = "trying to get value out of a tracing tensor"

# Ops whose Python result is a tensor's value; make_fx lowers is_nonzero (bool(t)) to
# _local_scalar_dense, here it is refused by name.
_READS_VALUE = frozenset({aten.is_nonzero.default})
_METADATA = frozenset({aten.size.default, aten.stride.default, aten.storage_offset.default})
# The node.meta key of a recorded tensor's (shape, dtype).
SHAPE_DTYPE = "lazyjit_shape_dtype"


def _static_index(func: Any, args: tuple) -> bool:
    """Whether an ``index`` op takes integer indices only (its shape follows from theirs)."""
    return func is aten.index.Tensor and all(
        i is None or not (i.dtype is torch.bool or i.dtype is torch.uint8) for i in args[1]
    )


def record(
    fn: Callable[..., Sequence[torch.Tensor]],
    inputs: Sequence[torch.Tensor],
    detach_no_grad: bool = False,
) -> tuple[torch.nn.Module, Graph]:
    """The graph of the aten ops that ``fn(*inputs)`` runs, returning its outputs, and the
    module that holds its constants: ``GraphModule(*record(fn, inputs))`` runs it. (A
    GraphModule generates and compiles its code when made: on a big graph that costs
    seconds, so the caller makes one after its own passes.)

    An input is identified by the tensor object itself; any other tensor the function
    reads (a closure's data) becomes a constant of the graph. Where ``fn`` reads the
    value of a tensor that depends on an input, the read is guarded if
    :func:`lazyjit.guards.collecting` is on, else refused: ``RuntimeError`` (with
    :data:`DATA_DEPENDENT` in its message), as the graph could not replay that branch.

    ``detach_no_grad``: the output of each op that ran with grad mode off on tensors that
    require grad (a ``torch.no_grad()`` block, a distribution's ``sample``) is detached in
    the graph, as it was in eager, so that the graph differentiates as eager does under
    autograd.
    """
    recorder = _Recorder(detach_no_grad)
    placeholders = [recorder.graph.placeholder(f"arg{i}") for i in range(len(inputs))]
    # An input passed twice maps to its first placeholder, as its tensor is one object.
    for tensor, node in reversed(list(zip(inputs, placeholders))):
        recorder.track(tensor, node, constant=False)
    with guards.watching(recorder.depends), recorder:
        outputs = tuple(fn(*inputs))
    recorder.graph.output(tuple(recorder.arg(o) for o in outputs))
    return recorder.root, recorder.graph


class _Recorder(TorchDispatchMode):
    """Appends each aten op that runs to :attr:`graph`, tensors mapped to nodes by identity.

    :ivar graph: the graph recorded so far.
    :ivar root: the module holding the graph's constant tensors.
    """

    def __init__(self, detach_no_grad: bool):
        super().__init__()
        self.graph = Graph()
        self.root = torch.nn.Module()
        self.detach_no_grad = detach_no_grad
        self._nodes: dict[int, Node] = {}
        # Tensors whose value does not depend on an input (closure data, and what
        # deterministic ops make of it): reading it is no branch on the inputs.
        self._constants: set[int] = set()
        # Every tensor seen stays alive until the end: an id must name one tensor.
        self._alive: list[torch.Tensor] = []

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ to hide it from torch.compile, and the
        # wrapper imports torch._dynamo at the first op; nothing compiles a capture.
        return False

    def track(self, tensor: torch.Tensor, node: Node, constant: bool) -> None:
        self._alive.append(tensor)
        # What lazyjit.graph.simplify needs to tell an identity op from a cast or a broadcast.
        node.meta[SHAPE_DTYPE] = (tensor.shape, tensor.dtype)
        self._nodes[id(tensor)] = node
        if constant:
            self._constants.add(id(tensor))
        else:
            self._constants.discard(id(tensor))

    def depends(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor``'s value depends on an input (untracked tensors are closure
        data: constants)."""
        return id(tensor) in self._nodes and id(tensor) not in self._constants

    def arg(self, value: Any) -> Any:
        """``value`` as an FX argument: a tensor as its node (a new constant if unseen)."""
        if not isinstance(value, torch.Tensor):
            return value
        node = self._nodes.get(id(value))
        if node is None:
            name = f"_tensor_constant{len(self._alive)}"
            setattr(self.root, name, value)
            node = self.graph.get_attr(name)
            self.track(value, node, constant=True)
        return node

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _METADATA:
            # A composite op reaches a dispatch mode where its caller is below autograd
            # (another mode, a direct torch.ops call): record what it is made of, as
            # make_fx does.
            with self:
                result = func.decompose(*args, **kwargs)
            if result is not NotImplemented:
                return result
        if func is aten.lift_fresh.default:
            # torch.tensor(...) makes a fresh tensor and lifts it with this no-op; in the
            # graph it must be a copy, or an in-place op would change the constant.
            func = aten.lift_fresh_copy.default
        flat, spec = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        # An op of no tensor at all (torch.zeros(3)) makes a constant too, unless it draws.
        constant = all(id(t) not in self._nodes or id(t) in self._constants for t in tensors)
        if (
            (func in _READS_VALUE or torch.Tag.data_dependent_output in func.tags)
            and not constant
            and not guards.reading()
        ):
            # A read that no Python conversion saw (torch's C++ indexing, `x[(i,)]` for a
            # sampled `i`): guarded here, or refused.
            value = func(*args, **kwargs)
            if len(tensors) != 1 or not self._check_value(tensors[0], value):
                raise RuntimeError(
                    f"It appears that you're trying to get value out of a tracing tensor "
                    f"with {func}"
                )
            return value
        out = func(*args, **kwargs)
        graph_args, graph_kwargs = tree_unflatten([self.arg(a) for a in flat], spec)
        node = self.graph.call_function(func, tuple(graph_args), graph_kwargs)
        constant = constant and torch.Tag.nondeterministic_seeded not in func.tags
        detach = (
            self.detach_no_grad
            and not torch.is_grad_enabled()
            and any(t.requires_grad for t in tensors)
        )
        if isinstance(out, torch.Tensor):
            self._output(out, node, constant, detach)
            if (
                not constant
                and torch.Tag.dynamic_output_shape in func.tags
                and not _static_index(func, args)
            ):
                self._check_shape(func, out)
        elif isinstance(out, (tuple, list)):
            for i, item in enumerate(out):
                if isinstance(item, torch.Tensor):
                    item_node = self.graph.call_function(operator.getitem, (node, i))
                    self._output(item, item_node, constant, detach)
        return out

    def _check_value(self, tensor: torch.Tensor, value: Any) -> bool:
        """Records the check that ``tensor`` (one element) holds ``value`` again, as a
        guard; whether guards are collected."""
        if value != value:  # NaN
            holds = self._emit(aten.isnan.default, tensor)
        elif isinstance(value, bool):
            holds = self._emit(aten.ne.Scalar if value else aten.eq.Scalar, tensor, 0)
        else:
            holds = self._emit(aten.eq.Scalar, tensor, value)
        return bool(guards.add_check(self._emit(aten.all.default, holds)))

    def _check_shape(self, func: Any, out: torch.Tensor) -> None:
        """Guards a shape that the data chose (a boolean mask's selection): the graph
        replays the op, but Python code may have read the shape (``x[mask].shape[0] > 2``)
        without any conversion of a tensor. The check counts the elements again."""
        ones = self._emit(aten.ones_like.default, out, dtype=torch.int64)
        check = self._emit(aten.eq.Scalar, self._emit(aten.sum.default, ones), out.numel())
        if guards.add_check(check) is False:
            raise RuntimeError(f"{DATA_DEPENDENT}: {func} makes a shape that depends on data")

    def _emit(self, op: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Runs ``op`` (unrecorded: inside the mode's handler) and records it by hand."""
        out = op(*args, **kwargs)
        node = self.graph.call_function(op, tuple(self.arg(a) for a in args), kwargs)
        self.track(out, node, constant=False)
        return out

    def _output(self, tensor: torch.Tensor, node: Node, constant: bool, detach: bool) -> None:
        if detach:
            node.meta[SHAPE_DTYPE] = (tensor.shape, tensor.dtype)
            node = self.graph.call_function(aten.detach.default, (node,))
        self.track(tensor, node, constant)
