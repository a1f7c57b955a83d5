"""The ``"aten-jit"`` backend: the ``"aten"`` capture, each graph run by TorchScript.

The value-and-grad graph holds the backward as plain aten ops, so value and gradients
come out of one TorchScript graph with no autograd at call time. :func:`script_graph` is
also the warm tier of ``"auto"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule, Interpreter

from .. import torch_shim
from ..graph.capture import Runner, draws
from ..tensors import keep_random_stream
from .aten import AtenBackend, GraphProgram
from .threads import WARNINGS_LOCK
from .torchscript import jit_trace


class ScriptedGraphProgram(GraphProgram):
    """A :class:`GraphProgram` whose graphs TorchScript's interpreter runs.

    A graph that TorchScript fails to trace runs as FX code instead, with a one-time
    :class:`LazyJitWarning`.
    """

    def finish(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool
    ) -> Runner:
        return self.compile_or_fx(
            graph_module, "TorchScript", lambda: script_graph(graph_module, inputs, grad), grad
        )


def script_graph(graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool) -> Runner:
    """``graph_module`` traced by TorchScript's tracer on ``inputs`` (``grad``: whether
    its outputs must be differentiable), to run on its interpreter. Raises on failure."""
    with (
        WARNINGS_LOCK,  # no compiler thread in catch_warnings meanwhile
        warnings.catch_warnings(),
        # Tracing runs the graph once: its random draws must not move the stream.
        keep_random_stream(inputs),
        torch.set_grad_enabled(grad),
    ):
        # A captured graph reads no tensor value (its capture would have refused), so
        # the tracer has nothing to warn about but its own deprecation.
        warnings.simplefilter("ignore")
        interpreter = _ForTracer(graph_module)
        script = jit_trace(interpreter.run, tuple(inputs), {}, names=False)
    if not interpreter.num_unused_draws:
        return script
    num_outputs = len(graph_module.graph.output_node().args[0])
    return lambda *inputs: script(*inputs)[:num_outputs]


# Binary ops whose Python number operand the tracer would keep as a double tensor, which
# each call then converts to its other operand's dtype: a copy per op, a sizeable part
# of a small graph's call.
_NUMBER_OPERAND_OPS = frozenset(
    getattr(torch.ops.aten, name)
    for name in ("add", "sub", "rsub", "mul", "div", "eq", "ne", "lt", "le", "gt", "ge")
)
# The dtypes in which such an op computes with the number as it would with a tensor of
# the dtype (lower-precision ones compute in float32, from the number unrounded).
_NUMBER_AS_TENSOR_DTYPES = frozenset({torch.float32, torch.float64})


class _ForTracer(Interpreter):
    """Runs a captured graph for TorchScript's tracer, node by node, with two changes of
    what the tracer records (neither changes a result bit):

    * after the graph's outputs, the results of its random ops that nothing uses (the
      subsample indices of a plate that no site enters, a draw that an analytic KL makes
      unused): TorchScript would drop them as dead code, and every later draw would take
      other numbers from the stream than eager's;
    * a Python number operand of a binary op on a float32 or float64 tensor as a tensor
      of that dtype (see :data:`_NUMBER_OPERAND_OPS`).

    Why an interpreter: the tracer looks up the Python line of every op it records, in
    time linear in the size of its function's code. Over a graph's generated forward, a
    function of one line per node, tracing would be quadratic in the graph's size.

    :ivar num_unused_draws: how many unused draws the last run returned.
    """

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self._unused_draws: list[Any] = []
        outputs = super().run(*args, **kwargs)
        self.num_unused_draws = len(self._unused_draws)
        return (*outputs, *self._unused_draws)

    def run_node(self, node: torch.fx.Node) -> Any:
        result = super().run_node(node)
        if not node.users and draws(node):
            self._unused_draws.append(result)
        return result

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if (
            getattr(target, "overloadpacket", None) in _NUMBER_OPERAND_OPS
            and target._overloadname in ("Tensor", "Scalar")
            and len(args) == 2  # a Scalar overload's positional alpha is keyword-only here
            and type(args[1]) in (int, float)
            and isinstance(args[0], torch.Tensor)
            and args[0].dtype in _NUMBER_AS_TENSOR_DTYPES
        ):
            x = args[0]
            # Made where the tracer does not see it, the tensor is a constant of the
            # graph; made under it, it would be a constant converted at every call.
            with torch_shim.untraced():
                number = torch.tensor(args[1], dtype=x.dtype, device=x.device)
            return target.overloadpacket.Tensor(x, number, **kwargs)
        return super().call_function(target, args, kwargs)


class AtenJitBackend(AtenBackend):
    """The ``"aten"`` capture, each graph run by TorchScript's interpreter (traced on
    first use): gradients computed inside the graph, without Python's per-op cost.

    TorchScript is deprecated upstream; this backend is the fast path for where it still
    runs. Like
    ``"torchscript"``, its optimizing executor may reorder independent random draws (see
    ``docs/backends.md``).
    """

    name = "aten-jit"
    compiles_graph = True
    program_class = ScriptedGraphProgram
