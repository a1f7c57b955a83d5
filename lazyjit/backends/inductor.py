"""The ``"inductor"`` backend: the ``"aten"`` capture, each graph compiled by inductor.

Inductor compiles the captured aten graph, never Pyro code (dynamo would graph-break at
every sample site). ``compile_fx`` is called directly rather than through
``torch.compile``: lazyjit's cache key already fixes what dynamo's guards would check on
every call. :func:`inductor_compile` is also the hot tier of ``"auto"``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule

from .. import config as lazyjit_config
from .. import torch_shim
from ..config import INDUCTOR_CONFIG
from ..graph.capture import Runner, constants, draws, op_count
from .aten import AtenBackend, GraphProgram
from .threads import TRACE_LOCK

# Matrix products: inductor calls torch's kernels for them, between its own.
MATMULS = frozenset(
    {
        torch.ops.aten.mm.default,
        torch.ops.aten.bmm.default,
        torch.ops.aten.addmm.default,
        torch.ops.aten.baddbmm.default,
    }
)


def inductor_settings(graph_module: GraphModule, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """The inductor settings that ``graph_module``'s inference compile adds to
    :data:`lazyjit.config.INDUCTOR_CONFIG`: ``cpp_wrapper`` on CPU where the graph holds
    :data:`lazyjit.config.CPP_WRAPPER_MIN_BREAKS` or more ops that inductor leaves to
    torch's kernels (matrix products; random draws, by ``fallback_random``) and at most
    :data:`lazyjit.config.CPP_WRAPPER_MAX_OPS` ops. Each such op ends one of inductor's
    kernels, and the Python wrapper compiles and links every kernel on its own; the C++
    wrapper compiles them all in one run. The kernels are the same, and so are the
    numbers. Not where the C++ wrapper would call an op through Python (one without a C
    shim, such as a gamma draw): that call needs inductor where the code runs. Called
    where the graph compiles (it reads inductor's tables)."""
    if op_count(graph_module) > lazyjit_config.CPP_WRAPPER_MAX_OPS:
        return {}
    breaks = sum(node.target in MATMULS or draws(node) for node in graph_module.graph.nodes)
    on_cpu = all(t.device.type == "cpu" for t in (*constants(graph_module), *inputs))
    if not on_cpu or breaks < lazyjit_config.CPP_WRAPPER_MIN_BREAKS:
        return {}
    return {} if torch_shim.cpp_wrapper_calls_python(graph_module) else {"cpp_wrapper": True}


def inductor_compile(
    graph_module: GraphModule,
    inputs: Sequence[torch.Tensor],
    grad: bool,
    config: dict[str, Any] | None = None,
) -> Runner:
    """``graph_module`` compiled by inductor for inputs shaped like ``inputs``; with
    ``grad``, aot_autograd compiles a backward too. Raises on failure.

    ``compile_fx`` may rewrite the graph it is given (its pre-grad passes); it gets a copy,
    so that ``graph_module`` stays the captured graph (for the FX fallback and inspection).
    ``config`` adds inductor settings to :data:`lazyjit.config.INDUCTOR_CONFIG` (and,
    without ``grad``, to :func:`inductor_settings`).
    """
    settings = {**INDUCTOR_CONFIG, **({} if grad else inductor_settings(graph_module, inputs))}
    with torch.set_grad_enabled(grad):
        compiled = torch_shim.compile_fx(
            copy.deepcopy(graph_module), inputs, {**settings, **(config or {})}
        )
    return (not grad and _direct_runner(compiled, graph_module, len(inputs))) or compiled


def _direct_runner(compiled: Runner, graph_module: GraphModule, num_inputs: int) -> Runner | None:
    """The inductor code inside ``compiled`` (an inference graph), called without
    aot_autograd's runtime wrappers, where they would do nothing but pass the inputs on
    (they restore input mutations, output aliases and deduplicated inputs): they cost a
    sizeable part of a small compiled step."""
    # aot_autograd passes the module's params and buffers (captured constants) first.
    held = constants(graph_module)
    num_outputs = len(graph_module.graph.output_node().args[0])
    code = torch_shim.plain_inference_code(compiled, len(held) + num_inputs, num_outputs)
    if code is None:
        return None
    # After its first call (which may write inductor's caches), the generated code runs
    # without the bookkeeping for torch.compile's metrics (and, while the profiler runs,
    # the record_function) around it.
    first = True

    def direct(*inputs: torch.Tensor) -> Any:
        nonlocal first
        if first or torch_shim.profiler_enabled():
            first = False
            return code([*held, *inputs])
        return code.current_callable([*held, *inputs])

    return direct


class InductorProgram(GraphProgram):
    """A :class:`GraphProgram` whose graphs inductor compiles, each on its first use.

    A graph that inductor fails to compile runs as FX code instead, with a one-time
    :class:`LazyJitWarning`: the same computation, only slower.
    """

    def finish(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool
    ) -> Runner:
        def compile() -> Runner:
            torch_shim.import_inductor()
            with TRACE_LOCK:  # not beside a background compile (lazyjit.backends.threads)
                return inductor_compile(graph_module, inputs, grad)

        return self.compile_or_fx(graph_module, "inductor", compile, grad)


class InductorBackend(AtenBackend):
    """The ``"aten"`` capture, each graph compiled by inductor (``compile_fx``) on first use.

    Random ops fall back to aten (:data:`lazyjit.config.INDUCTOR_CONFIG`), so a compiled
    program draws the same numbers as eager from the same seed.

    Example::

        loss_fn = lazyjit.trace(loss_fn, backend="inductor")
    """

    name = "inductor"
    compiles_graph = True
    program_class = InductorProgram
