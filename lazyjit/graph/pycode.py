"""The Python a captured graph runs as on the ``"aten"`` tier: FX's generated code, each
aten operator called through the public torch function that reaches it, or else its C++
entry point.

``torch.ops.aten.add.Tensor(x, y)`` is a Python method (``OpOverload.__call__``) that
calls that entry: a Python frame per node, about a fifth of the time of a small graph's
node; the entry parses its arguments by its schema, slower than ``torch.add``'s generated
parser. The rewritten code calls the same operators with the same arguments in the same
order, so it computes the same bits; it matters where TorchScript is missing, and for
graphs too big to trace.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch.fx import GraphModule

from .. import torch_shim
from .capture import Runner

aten = torch.ops.aten

# Operators and the public torch function that calls each with the same arguments (the
# same positions and keywords, the same overload: tests/test_pycode.py checks both): its
# argument parser is generated for it, about a microsecond a call faster than the
# operator's own entry, which reads its schema at every call. Overloads reached by no
# public function with the same arguments (``mul.Scalar``, ``slice.Tensor``) keep the entry.
PUBLIC_ENTRIES: dict[torch_shim.OpOverload, Callable] = {
    aten.abs.default: torch.abs,
    aten.add.Tensor: torch.add,
    aten.addcmul.default: torch.addcmul,
    aten.addmm.default: torch.addmm,
    aten.bmm.default: torch.bmm,
    aten.clone.default: torch.clone,
    aten.detach.default: torch.detach,
    aten.digamma.default: torch.digamma,
    aten.div.Tensor: torch.div,
    aten.eq.Tensor: torch.eq,
    aten.exp.default: torch.exp,
    aten.expand.default: torch.Tensor.expand,
    aten.expm1.default: torch.expm1,
    aten.lerp.Scalar: torch.lerp,
    aten.lgamma.default: torch.lgamma,
    aten.log.default: torch.log,
    aten.log1p.default: torch.log1p,
    aten.mm.default: torch.mm,
    aten.mul.Tensor: torch.mul,
    aten.neg.default: torch.neg,
    aten.permute.default: torch.permute,
    aten.pow.Scalar: torch.pow,
    aten.pow.Tensor_Scalar: torch.pow,
    aten.pow.Tensor_Tensor: torch.pow,
    aten.reciprocal.default: torch.reciprocal,
    aten.rsqrt.default: torch.rsqrt,
    aten.rsub.Scalar: torch.rsub,
    aten.rsub.Tensor: torch.rsub,
    aten.sigmoid.default: torch.sigmoid,
    aten.sqrt.default: torch.sqrt,
    aten.sub.Tensor: torch.sub,
    aten.sum.default: torch.sum,
    aten.sum.dim_IntList: torch.sum,
    aten.t.default: torch.t,
    aten.tanh.default: torch.tanh,
    aten.transpose.int: torch.transpose,
    aten.unsqueeze.default: torch.unsqueeze,
    aten.view.default: torch.Tensor.view,
}


def entry(operator: torch_shim.OpOverload) -> Callable:
    """What FX code calls for ``operator``: its public function where it has one."""
    return PUBLIC_ENTRIES.get(operator) or torch_shim.operator_entry(operator)


def fx_code(graph_module: GraphModule) -> Runner:
    """``graph_module.forward``, with its aten operators called directly."""
    code = graph_module.graph.python_code(root_module="self")
    source, scope = code.src, dict(code.globals)
    operators = {
        node.target
        for node in graph_module.graph.nodes
        if node.op == "call_function" and isinstance(node.target, torch_shim.OpOverload)
    }
    for i, operator in enumerate(operators):
        scope[f"_operator_{i}"] = entry(operator)
        call = f"torch.ops.{operator.namespace}.{operator.__name__}("
        source = source.replace(call, f"_operator_{i}(")
    exec(compile(source, f"<lazyjit fx code {id(graph_module)}>", "exec"), scope)
    return types.MethodType(scope["forward"], graph_module)
