"""The Python a captured graph runs as on the ``"aten"`` tier: FX's generated code, each
aten operator called through its C++ entry point.

``torch.ops.aten.add.Tensor(x, y)`` is a Python method (``OpOverload.__call__``) that
calls that entry: a Python frame per node, about a fifth of the time of a small graph's
node. The rewritten code calls the same operators in the same order, so it computes the
same bits; it matters where TorchScript is missing, and for graphs too big to trace.
"""

from __future__ import annotations

import types

from torch.fx import GraphModule

from .. import torch_shim
from .capture import Runner


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
        scope[f"_operator_{i}"] = torch_shim.operator_entry(operator)
        call = f"torch.ops.{operator.namespace}.{operator.__name__}("
        source = source.replace(call, f"_operator_{i}(")
    exec(compile(source, f"<lazyjit fx code {id(graph_module)}>", "exec"), scope)
    return types.MethodType(scope["forward"], graph_module)
