"""Removes the ops of a recorded aten graph that compute nothing, or nothing new.

A recorded graph keeps every op that eager ran, and autograd's backward is generous with
no-ops: ``x * 1``, ``x + 0``, ``x ** 1`` (the derivative of ``x ** 2``), ``-(-x)``, an
``expand`` or ``view`` to the shape a tensor has, and a ``detach`` wherever Pyro or
autograd detaches. Eager also computes the same thing twice (a distribution's
``log(scale)`` in the model and the guide) and recomputes what depends on constants
alone at every call (``log`` of a prior's scale). Inductor fuses all of it away;
TorchScript's interpreter and FX code pay a dispatch for each, and a small graph run at
every step (a NUTS leaf) holds many of them (``docs/backends.md`` has the figures).
Every rewrite keeps the bits: the ops left are the ops eager ran, on the same values.
"""

from __future__ import annotations

import operator
from numbers import Number
from typing import Any

import torch
from torch.fx import Graph, Node
from torch.fx.node import map_arg

from .. import torch_shim
from .recorder import SHAPE_DTYPE

aten = torch.ops.aten

# op -> the Python number that makes it return its tensor operand unchanged.
_NEUTRAL = {
    aten.mul.Tensor: 1,
    aten.mul.Scalar: 1,
    aten.div.Tensor: 1,
    aten.div.Scalar: 1,
    aten.add.Tensor: 0,
    aten.add.Scalar: 0,
    aten.sub.Tensor: 0,
    aten.sub.Scalar: 0,
    aten.pow.Tensor_Scalar: 1,
}

_ADDITIVE = frozenset({aten.add.Tensor, aten.sub.Tensor})
# Ops that return their operand (a view of it) where the size asked for is its own.
_SAME_SHAPE_VIEWS = frozenset({aten.expand.default, aten.view.default, aten.reshape.default})
# Ops whose result is all zeros where their first operand is.
_KEEP_ZEROS = frozenset(
    {
        aten.expand.default,
        aten.view.default,
        aten.reshape.default,
        aten.neg.default,
        aten.sum.default,
        aten.sum.dim_IntList,
        aten.detach.default,
        aten.clone.default,
    }
)


def simplify(root: torch.nn.Module, graph: Graph, drop_detach: bool) -> int:
    """Rewires each no-op's users to its operand, then folds the pure ops on constants
    alone and merges repeated pure ops (:func:`_fold_constants`, :func:`_merge_repeats`),
    and returns how many ops went. The graph changes in place; ``root`` holds its
    constants (folded ones are added to it).

    An arithmetic no-op goes only where the recorded shape and dtype show it changes
    neither (``int_tensor * 1.0`` is a cast), and where no op of the graph writes in
    place to it or to its operand (either would then see the other's writes).
    ``drop_detach``: the graph runs where nothing requires grad (a value-and-grad graph,
    run under ``torch.no_grad()``, or one whose inputs and constants require no grad),
    so a ``detach`` is an alias of its operand. A graph output never becomes an input or
    a constant: the caller could write to what it gets back. As in inductor's own
    ``remove_no_ops``, ``x + 0`` goes although it turns ``-0.0`` into ``0.0``.
    """
    written = _written(graph)
    outputs = set(graph.output_node().all_input_nodes)
    zeros: set[Node] = set()
    removed = 0
    for node in list(graph.nodes):
        if node not in written and _is_zeros(node, zeros):
            zeros.add(node)
        operand = _operand_if_noop(node, drop_detach, written, zeros)
        if operand is None:
            continue
        if node in outputs and operand.op in ("placeholder", "get_attr"):
            continue
        node.replace_all_uses_with(operand)
        if node in outputs:
            outputs.add(operand)
        graph.erase_node(node)
        removed += 1
    return (
        removed
        + _fold_constants(root, graph, written, outputs)
        + _merge_repeats(graph, written, outputs)
    )


def _pure(node: Node, written: set[Node], outputs: set[Node]) -> bool:
    """Whether ``node`` is a call that the same arguments make the same bits of, that
    nothing writes to, and that no caller gets back (a caller could write to it)."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch_shim.OpOverload):
        return False
    if node in written or node in outputs or not node.all_input_nodes:
        return False  # a factory (``empty``) has no inputs: its values are its own
    schema = torch_shim.op_schema(target)
    return torch.Tag.nondeterministic_seeded not in target.tags and not any(
        a.alias_info is not None and a.alias_info.is_write for a in schema.arguments
    )


def _fold_constants(
    root: torch.nn.Module, graph: Graph, written: set[Node], outputs: set[Node]
) -> int:
    """Replaces each pure op on constants alone by its result, computed once here by the
    same op (so with the same bits), as a constant of the graph."""
    values: dict[Node, torch.Tensor] = {}
    folded = 0
    for node in list(graph.nodes):
        if node.op == "get_attr":
            value = getattr(root, node.target)
            if isinstance(value, torch.Tensor) and not value.requires_grad and node not in written:
                values[node] = value
            continue
        if not _pure(node, written, outputs) or not all(n in values for n in node.all_input_nodes):
            continue
        args, kwargs = map_arg((node.args, node.kwargs), values.__getitem__)
        with torch.no_grad():
            value = node.target(*args, **kwargs)
        if not isinstance(value, torch.Tensor):
            continue
        name = f"_lazyjit_folded{folded}"
        root.register_buffer(name, value)
        with graph.inserting_before(node):
            constant = graph.get_attr(name)
        constant.meta.update(node.meta)
        node.replace_all_uses_with(constant)
        graph.erase_node(node)
        values[constant] = value
        folded += 1
    return folded


def _merge_repeats(graph: Graph, written: set[Node], outputs: set[Node]) -> int:
    """Gives each pure op that repeats an earlier one (the same op on the same nodes and
    numbers) that one's result."""
    seen: dict[tuple, Node] = {}
    merged = 0
    for node in list(graph.nodes):
        if not _pure(node, written, outputs):
            continue
        key = (node.target, _key(node.args), _key(node.kwargs))
        earlier = seen.setdefault(key, node)
        if earlier is not node:
            node.replace_all_uses_with(earlier)
            graph.erase_node(node)
            merged += 1
    return merged


def _key(value: Any) -> Any:
    """``value`` (a node's arguments) as a dictionary key: nodes by identity, numbers by
    type and repr (``x * 1`` and ``x * 1.0`` differ for an integer ``x``, and ``-0.0``
    is not ``0.0``)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_key(v) for v in value))
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    if isinstance(value, Node):
        return ("node", value)
    if isinstance(value, Number):
        return (type(value).__name__, repr(value))
    return value


def _is_zeros(node: Node, zeros: set[Node]) -> bool:
    """Whether ``node`` is all zeros whatever the inputs (autograd seeds its sums so)."""
    target, args = node.target, node.args
    if target in (aten.zeros_like.default, aten.zeros.default, aten.new_zeros.default):
        return True
    if target in (aten.full_like.default, aten.full.default):
        return args[1] == 0
    if target is aten.new_full.default:
        return args[2] == 0
    return target in _KEEP_ZEROS and args[0] in zeros


def _operand_if_noop(
    node: Node, drop_detach: bool, written: set[Node], zeros: set[Node]
) -> Node | None:
    if node.op != "call_function" or node.kwargs.get("alpha", 1) != 1:
        return None
    if node.target is aten.detach.default:
        return node.args[0] if drop_detach else None
    if node in written:
        return None
    if node.target in _SAME_SHAPE_VIEWS:
        operand = node.args[0]  # the shape check below decides
    elif node.target is aten.neg.default:
        inner = node.args[0]
        if isinstance(inner, Node) and inner.target is aten.neg.default and inner not in written:
            operand = inner.args[0]
        else:
            return None
    elif node.target in _NEUTRAL and len(node.args) == 2:
        operand, other = node.args
        if node.target in _ADDITIVE and other in zeros:
            pass
        elif node.target is aten.add.Tensor and operand in zeros:
            operand = other
        elif not (
            isinstance(other, Number)
            and not isinstance(other, bool)
            and other == _NEUTRAL[node.target]
        ):
            return None
    else:
        return None
    if (
        not isinstance(operand, Node)
        or operand in written
        or SHAPE_DTYPE not in operand.meta
        or operand.meta[SHAPE_DTYPE] != node.meta.get(SHAPE_DTYPE)
    ):
        return None
    return operand


def _written(graph: Graph) -> set[Node]:
    """The nodes that some op writes to in place, with every node sharing their memory
    (views of them, what they are views of)."""
    parent: dict[Node, Node] = {}

    def root(node: Node) -> Node:
        while parent.get(node, node) is not node:
            node = parent[node]
        return node

    written_roots = set()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            sources = [node.args[0]]
            writes = []
        elif isinstance(node.target, torch_shim.OpOverload):
            schema = torch_shim.op_schema(node.target)
            arguments = [a for a in schema.arguments if not a.kwarg_only]
            pairs = list(zip(arguments, node.args)) + [
                (a, node.kwargs[a.name]) for a in schema.arguments if a.name in node.kwargs
            ]
            aliased = [v for a, v in pairs if a.alias_info is not None]
            writes = [v for a, v in pairs if a.alias_info is not None and a.alias_info.is_write]
            returns_alias = any(r.alias_info is not None for r in schema.returns)
            sources = aliased if returns_alias else []
        else:  # not an aten op: assume it may alias and write to anything it is given
            sources = writes = list(node.all_input_nodes)
        for source in _nodes(sources):
            parent[root(node)] = root(source)
        for target in _nodes(writes):
            written_roots.add(target)
    written_roots = {root(n) for n in written_roots}
    return {n for n in graph.nodes if root(n) in written_roots}


def _nodes(values: list) -> list[Node]:
    flat = []
    for v in values:
        if isinstance(v, Node):
            flat.append(v)
        elif isinstance(v, (list, tuple)):
            flat.extend(x for x in v if isinstance(x, Node))
    return flat
