"""Compiler backends: each turns a pure function of flat tensors into a :class:`Program`.

A backend is a small object with a ``name`` and one method, ``compile``. Adding one
means writing a :class:`Backend` subclass here and registering it in ``BACKENDS``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
import inspect
import linecache
import logging
import math
import operator
import os
import queue
import re
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import torch
from pyro import validation_enabled
from torch.fx import GraphModule, Interpreter
from torch.overrides import TorchFunctionMode, has_torch_function

from . import guards, recorder
from .errors import LazyJitError, LazyJitWarning, StructureError, StructureWarning
from .recorder import DATA_DEPENDENT, record
from .simplify import simplify

logger = logging.getLogger("lazyjit")

# The function a backend compiles. The one lazyjit.trace passes has attributes `guard`,
# whether its value reads may be guarded (lazyjit.guards; false with strict=True), and
# `num_params`, how many of its inputs are params (the rest are the call's tensors), and
# a method `fell_back()`, which counts a part of it that runs eagerly after all.
Flat = Callable[..., tuple[torch.Tensor, ...]]
# Held while lazyjit runs Pyro code outside a compiled program (a signature's first call,
# an eager tier, a capture): Pyro's effect-handler stack is process-wide, and two threads
# inside it at once break each other's handlers.
PYRO_LOCK = threading.RLock()
# What runs a captured graph: its FX code, or inductor's compiled function (a list out).
Runner = Callable[..., Sequence[torch.Tensor]]


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
        # This runs at every SVI step and leapfrog step, right after the program has
        # evicted Python's working set from the CPU caches: every frame and object touched
        # here costs far more than in a microbenchmark. Hence C-level map/attrgetter and
        # recursion for the rare cases instead of generator expressions.
        if not torch.is_grad_enabled():
            with torch.enable_grad():
                return self.value_and_grad(inputs, wrt)
        targets = [inputs[i] for i in wrt]
        if not all(map(_REQUIRES_GRAD, targets)):
            inputs = list(inputs)
            for i in wrt:
                if not inputs[i].requires_grad:
                    inputs[i] = inputs[i].detach().requires_grad_()
            return self.value_and_grad(inputs, wrt)
        outputs = self(*inputs)
        return tuple(map(torch.Tensor.detach, outputs)), gradients(outputs[0], targets)


_REQUIRES_GRAD = operator.attrgetter("requires_grad")


def gradients(output: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of a scalar ``output`` w.r.t. each of ``targets``, by autograd: zeros
    where it does not depend on one (or on none: an output that requires no grad)."""
    if targets and output.requires_grad:
        return _grad(output, targets)
    return [torch.zeros_like(t) for t in targets]


# The autograd engine's entry point, as torch.autograd.grad calls it.
_run_backward = getattr(
    getattr(torch.autograd.Variable, "_execution_engine", None), "run_backward", None
)


def _grad(output: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """``torch.autograd.grad(output, targets, allow_unused=True, materialize_grads=True)``
    for a scalar ``output``, without the Python argument handling of ``torch.autograd.grad``.

    That wrapper alone costs about a tenth of a compiled SVI step on a small model (cold
    caches after the program: see ``benchmarks/bench_svi.py``), which is more than the
    whole margin to Pyro's jit. Anything unusual (a tensor subclass, a non-scalar output,
    a torch without this engine entry point) takes the public function.
    """
    if _run_backward is None or output.numel() != 1 or has_torch_function((output, *targets)):
        return list(torch.autograd.grad(output, targets, allow_unused=True, materialize_grads=True))
    grads = _run_backward(
        (output,),
        (torch.ones_like(output),),
        False,  # keep_graph
        False,  # create_graph
        tuple(targets),
        True,  # allow_unreachable: an unused target gets None, as with allow_unused
        False,  # accumulate_grad: return the gradients instead of adding them to .grad
    )
    return [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]


class Backend:
    """Runs the pure function as it is: the plumbing and the cache, no compilation."""

    name = "eager"

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        return Program(fn)


class TorchScriptProgram(Program):
    """A ``torch.jit.trace`` artifact; ``script`` holds it for diagnostics (``.graph``, ``.code``).

    :ivar optimize: whether TorchScript's executor optimizes the graph (it profiles the
        first call and optimizes in the second, as for Pyro's jit); if not, every call
        runs the traced graph as it is.
    """

    def __init__(self, script: Any, optimize: bool = True):
        super().__init__(script if optimize else functools.partial(_unoptimized, script))
        self.script = script
        self.optimize = optimize


def _unoptimized(script: Any, *inputs: torch.Tensor) -> Any:
    """``script(*inputs)`` with the graph executor's optimization off (a thread-local
    flag, as ``torch.jit.optimized_execution(False)`` sets it, without its Python
    context manager)."""
    optimize = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(False)
    try:
        return script(*inputs)
    finally:
        torch._C._set_graph_executor_optimize(optimize)


class TorchScriptBackend(Backend):
    """``torch.jit.trace`` (deprecated upstream; kept for parity with Pyro's jit).

    :param optimize: see :class:`TorchScriptProgram`. ``"auto"`` turns it off for its
        tier 0, which runs only until a graph is captured: on the seed HMM the
        optimization took 7 s of a 10.9 s first epoch and left later epochs as fast as
        without it (1.00 against 1.02 s); small graphs run 7 to 24% slower without it.
    :param max_optimized_nodes: a traced graph of more nodes runs unoptimized. The
        executor's optimization grows faster than the graph and gains less: on chains of
        Normal sites (a potential and its gradient), 1.2 s for a graph of 4,111 nodes,
        run 8% faster; 4.5 s for 12,311 nodes, 8% faster; 34 s for 41,011 nodes, not
        faster at all (52 ms a call either way). Pyro's jit pays those 34 s.
    """

    name = "torchscript"

    def __init__(self, optimize: bool = True, max_optimized_nodes: int = 15000):
        self.optimize = optimize
        self.max_optimized_nodes = max_optimized_nodes

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        options = {"check_trace": False, **options}
        outer_trace, _this_trace.derived = getattr(_this_trace, "derived", None), set()
        try:
            with (
                _WARNINGS_LOCK,  # see "auto" below: no compiler thread in catch_warnings
                warnings.catch_warnings(record=True) as caught,
                guards.watching(_depends_on_data),
                # Tracing runs the function once: its random draws must not move the stream.
                keep_random_stream(inputs),
            ):
                warnings.simplefilter("always")
                script = _jit_trace(fn, tuple(inputs), options)
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


def _jit_trace(
    fn: Flat, inputs: tuple[torch.Tensor, ...], options: dict[str, Any], names: bool = True
) -> Any:
    """``torch.jit.trace(fn, inputs, **options)``, without its leak where it can.

    ``torch.jit.trace`` registers every function it traces in one process-wide
    CompilationUnit, which never lets go of it: each evicted cache entry would keep its
    graph and executor state (about 2 MB for a 150-op graph, measured). The same tracer
    puts the graph in a CompilationUnit of the entry's own, freed with it. Options only
    ``torch.jit.trace`` implements (``check_trace=True``, ``check_inputs``, ...) take
    the leaky road.

    ``names=False`` leaves the graph's values unnamed, for a captured graph whose values
    have no names of use: the tracer finds each name by scanning the locals of the frame
    that made the value (over an FX forward, whose locals are its thousands of nodes, that
    was quadratic: 5.3 s to trace a 7,504-node graph with names, 1.6 s without).
    """
    private = {"check_trace", "strict", "_force_outplace"}
    if options.get("check_trace") or not set(options) <= private or not torch.jit._state._enabled:
        return torch.jit.trace(fn, inputs, **options)
    from torch.jit._trace import _create_interpreter_name_lookup_fn

    graph, _ = torch._C._create_graph_by_tracing(
        fn,
        inputs,
        _create_interpreter_name_lookup_fn() if names else _no_name,
        options.get("strict", True),
        options.get("_force_outplace", False),
    )
    return torch._C.CompilationUnit().create_function("lazyjit_trace", graph)


def _no_name(value: torch.Tensor) -> str:
    return ""


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


def _depends_on_data(tensor: torch.Tensor) -> bool:
    """Whether a tensor that TorchScript traces depends on the trace's input data."""
    return torch._C._get_tracing_state() is not None and not _shape_derived(tensor)


def _shape_derived(tensor: torch.Tensor) -> bool:
    """Whether a traced tensor follows from the trace's input shapes and constants alone:
    no input data, no random draw, and no size of a data-dependent shape on the way."""
    try:
        start = torch._C._get_value_trace(tensor)
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
    :ivar compile_seconds: time spent capturing and compiling, lazy work included.
    """

    def __init__(self, flat: Flat, graph_module: GraphModule, custom_autograd: frozenset[str]):
        super().__init__(graph_module.forward)
        self.flat = flat
        self.graph_module = graph_module
        self.grad_graph_modules: dict[tuple[int, ...], GraphModule] = {}
        self.custom_autograd = custom_autograd
        self.compile_seconds = 0.0
        self._forward: Runner | None = None
        self._grad_runners: dict[tuple[int, ...], Runner | None] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Runs the forward graph. Under grad mode its outputs differentiate as eager's do:
        the aten ops run under autograd (or inductor compiled a backward), and what eager
        computed without grad is detached in the graph (see :func:`capture`)."""
        if self.custom_autograd and _needs_autograd(inputs):
            _warn_once(
                self._warned,
                "custom_autograd",
                "a differentiable call runs eagerly: it uses "
                f"{', '.join(sorted(self.custom_autograd))}, whose backward an aten graph "
                "cannot keep (value_and_grad stays compiled)",
            )
            return self.flat(*inputs)
        forward = self._forward
        if forward is None:
            with self._lock:
                if self._forward is None:
                    # The grad mode is in the cache key: it is the same on every call.
                    self._forward = self._finish(self.graph_module, inputs, _needs_autograd(inputs))
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
        return _run_value_and_grad(runner, inputs, len(wrt))

    def _build_grad_runner(
        self, inputs: Sequence[torch.Tensor], wrt: tuple[int, ...]
    ) -> Runner | None:
        start = time.perf_counter()
        try:
            graph_module = capture_value_and_grad(self.flat, _fresh(self.flat, inputs), wrt)
        except Exception as e:  # noqa: BLE001 - the eager path below is always correct
            _warn_once(
                self._warned,
                "grad_capture",
                f"value_and_grad runs eagerly: capturing the gradients failed "
                f"({type(e).__name__}: {e})",
            )
            return None
        self.grad_graph_modules[wrt] = graph_module
        seconds = time.perf_counter() - start
        self.compile_seconds += seconds
        logger.info(
            "lazyjit: captured a value-and-grad graph (%d nodes) in %.3f s",
            len(graph_module.graph.nodes),
            seconds,
        )
        return self._finish(graph_module, inputs, False)

    def _finish(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool
    ) -> Runner:
        """What runs a captured graph (``grad``: whether its outputs must be
        differentiable); here its generated code, called as ``forward`` to skip the
        ``nn.Module.__call__`` machinery."""
        return graph_module.forward

    def _compile_or_fx(
        self, graph_module: GraphModule, compiler: str, compile: Callable[[], Runner], grad: bool
    ) -> Runner:
        """``compile()``, timed and logged; where it fails, the graph's FX code (the same
        computation, only slower) with a one-time :class:`LazyJitWarning`."""
        start = time.perf_counter()
        try:
            runner = compile()
        except Exception as e:  # noqa: BLE001 - the FX code computes the same thing
            _warn_once(
                self._warned,
                compiler,
                f"{compiler} failed to compile a graph ({type(e).__name__}: {e}); it runs as "
                "FX code instead",
            )
            return graph_module.forward
        seconds = time.perf_counter() - start
        self.compile_seconds += seconds
        logger.info(
            "lazyjit: %s compiled a graph (%d nodes%s) in %.3f s",
            compiler,
            len(graph_module.graph.nodes),
            ", with backward" if grad else "",
            seconds,
        )
        return runner


class AtenBackend(Backend):
    """Captures the function once into an aten graph run as FX code.

    The capture (:func:`lazyjit.recorder.record`, what ``make_fx`` does in its ``"real"``
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
    program_class: type[GraphProgram] = GraphProgram

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        start = time.perf_counter()
        graph_module, custom_autograd = capture(fn, inputs, replayable=True)
        program = self.program_class(fn, graph_module, custom_autograd)
        program.compile_seconds = time.perf_counter() - start
        logger.info(
            "lazyjit: captured an aten graph (%d nodes) in %.3f s",
            len(graph_module.graph.nodes),
            program.compile_seconds,
        )
        return program


class InductorProgram(GraphProgram):
    """A :class:`GraphProgram` whose graphs inductor compiles, each on its first use.

    A graph that inductor fails to compile runs as FX code instead, with a one-time
    :class:`LazyJitWarning`: the same computation, only slower.
    """

    def _finish(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool
    ) -> Runner:
        def compile() -> Runner:
            with warnings.catch_warnings():
                # Importing inductor defines torch.utils.mkldnn's TorchScript modules, which
                # warn that TorchScript is deprecated; nothing on this path uses them.
                warnings.filterwarnings(
                    "ignore", r".*torch\.jit\.script_method", DeprecationWarning
                )
                import torch._inductor.compile_fx  # noqa: F401
            with _TRACE_LOCK:  # not beside a background compile (see "auto" below)
                return inductor_compile(graph_module, inputs, grad)

        return self._compile_or_fx(graph_module, "inductor", compile, grad)


class ScriptedGraphProgram(GraphProgram):
    """A :class:`GraphProgram` whose graphs TorchScript's interpreter runs.

    The value-and-grad graph holds the backward as plain aten ops, so value and
    gradients come out of one TorchScript graph with no autograd at call time: about half
    the time of Pyro's jitted potential plus autograd on the seed Gaussian model and on
    logistic regression (``benchmarks/bench_nuts.py``), at the cost of a capture
    per graph. A graph that TorchScript fails to trace runs as FX code instead,
    with a one-time :class:`LazyJitWarning`.
    """

    def _finish(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool
    ) -> Runner:
        return self._compile_or_fx(
            graph_module, "TorchScript", lambda: script_graph(graph_module, inputs, grad), grad
        )


def script_graph(graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool) -> Runner:
    """``graph_module`` traced by TorchScript's tracer on ``inputs`` (``grad``: whether
    its outputs must be differentiable), to run on its interpreter. Raises on failure."""
    with (
        _WARNINGS_LOCK,  # see "auto" below: no compiler thread in catch_warnings
        warnings.catch_warnings(),
        # Tracing runs the graph once: its random draws must not move the stream.
        keep_random_stream(inputs),
        torch.set_grad_enabled(grad),
    ):
        # A captured graph reads no tensor value (its capture would have refused), so
        # the tracer has nothing to warn about but its own deprecation.
        warnings.simplefilter("ignore")
        interpreter = _ForTracer(graph_module)
        script = _jit_trace(interpreter.run, tuple(inputs), {}, names=False)
    if not interpreter.num_unused_draws:
        return script
    num_outputs = len(graph_module.graph.output_node().args[0])
    return lambda *inputs: script(*inputs)[:num_outputs]


# Binary ops whose Python number operand the tracer would keep as a double tensor, which
# each call then converts to its other operand's dtype: a copy per op (about 1 us; 20 us
# of a NUTS leaf's 120 on the seed Gaussian model).
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
    time linear in the size of its function's code (PyCode_Addr2Line). Over a graph's
    generated forward, a function of one line per node, tracing was quadratic (18 s for a
    26,000-node graph, 0.2 s for 2,600); from this small loop it takes 0.8 s and 0.06 s.

    :ivar num_unused_draws: how many unused draws the last run returned.
    """

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self._unused_draws: list[Any] = []
        outputs = super().run(*args, **kwargs)
        self.num_unused_draws = len(self._unused_draws)
        return (*outputs, *self._unused_draws)

    def run_node(self, node: torch.fx.Node) -> Any:
        result = super().run_node(node)
        if not node.users and torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ()):
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
            tracing = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                number = torch.tensor(args[1], dtype=x.dtype, device=x.device)
            finally:
                torch._C._set_tracing_state(tracing)
            return target.overloadpacket.Tensor(x, number, **kwargs)
        return super().call_function(target, args, kwargs)


class AtenJitBackend(AtenBackend):
    """The ``"aten"`` capture, each graph run by TorchScript's interpreter (traced on
    first use): gradients computed inside the graph, without Python's per-op cost.

    TorchScript is deprecated upstream; this backend is the fast path for where it still
    runs (its sampler gradients are about twice as fast as Pyro's jit). Like
    ``"torchscript"``, its optimizing executor may reorder independent random draws (see
    ``docs/backends.md``).
    """

    name = "aten-jit"
    program_class = ScriptedGraphProgram


def inductor_compile(
    graph_module: GraphModule,
    inputs: Sequence[torch.Tensor],
    grad: bool,
    config: dict[str, Any] | None = None,
) -> Runner:
    """``graph_module`` compiled by inductor (``compile_fx``) for inputs shaped like
    ``inputs``; with ``grad``, aot_autograd compiles a backward too. Raises on failure.

    Inductor reads only the inputs' metadata, so it gets fake tensors like them: the
    real ones may change meanwhile (an optimizer step while a background compile runs).
    Their fake mode has a shape environment (of static shapes) because inductor's
    on-disk graph cache needs one: without it every compile lowers and generates code
    again (0.3 to 0.5 s for a NUTS potential; 0.01 s from the cache).
    ``compile_fx`` may rewrite the graph it is given (its pre-grad passes); it gets a copy,
    so that ``graph_module`` stays the captured graph (for the FX fallback and inspection).
    ``config`` adds inductor settings to :data:`INDUCTOR_CONFIG`.
    """
    from torch._inductor.compile_fx import compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    fake_mode = FakeTensorMode(shape_env=ShapeEnv())
    examples = [fake_mode.from_tensor(t, static_shapes=True) for t in inputs]
    with torch.set_grad_enabled(grad):
        compiled = compile_fx(
            copy.deepcopy(graph_module),
            examples,
            config_patches={**INDUCTOR_CONFIG, **(config or {})},
        )
    return (not grad and _direct_runner(compiled, graph_module, len(inputs))) or compiled


def _direct_runner(compiled: Runner, graph_module: GraphModule, num_inputs: int) -> Runner | None:
    """The inductor code inside ``compiled`` (an inference graph), called without
    aot_autograd's runtime wrappers; ``None`` unless they would do nothing but pass the
    inputs on.

    The wrappers restore input mutations, output aliases and deduplicated inputs. Where
    aot_autograd's metadata shows none of them, they only cost time: 15 us of an SVI
    step on the seed Gaussian model (about 8 %), measured in the step's loop.
    """
    from torch._functorch._aot_autograd.schemas import PlainTensorMeta
    from torch._inductor.output_code import OutputCode

    serialize = getattr(compiled, "serialize", None)  # set where aot_autograd caches
    meta = getattr(serialize() if serialize else None, "runtime_metadata", None)
    code = inspect.unwrap(compiled)
    # aot_autograd passes the module's params and buffers (captured constants) first.
    constants = _constants(graph_module)
    num_outputs = len(graph_module.graph.output_node().args[0])
    if (
        meta is None
        or not isinstance(code, OutputCode)
        or len(meta.input_info) != len(constants) + num_inputs
        or any(
            i.mutates_data or i.mutates_metadata or i.mutates_storage_metadata
            for i in meta.input_info
        )
        or meta.num_outputs != num_outputs
        or meta.num_outputs_aliased
        or meta.num_intermediate_bases
        or meta.tokens
        or meta.is_rng_op_functionalized
        or not all(
            isinstance(m, PlainTensorMeta)
            for m in (*meta.subclass_inp_meta, *meta.subclass_fw_graph_out_meta)
        )
    ):
        return None

    # After its first call (which may write inductor's caches), OutputCode.__call__ only
    # wraps the generated code in bookkeeping for torch.compile's metrics and, while the
    # profiler runs, a record_function: 3 to 4 us of an SVI step on the seed model.
    first = True

    def direct(*inputs: torch.Tensor) -> Any:
        nonlocal first
        if first or torch.autograd.profiler._is_profiler_enabled:
            first = False
            return code([*constants, *inputs])
        return code.current_callable([*constants, *inputs])

    return direct


class InductorBackend(AtenBackend):
    """The ``"aten"`` capture, each graph compiled by inductor (``compile_fx``) on first use.

    Inductor compiles the captured aten graph, never Pyro code (dynamo would graph-break
    at every sample site). ``compile_fx`` is called directly rather than through
    ``torch.compile``: lazyjit's cache key already fixes what dynamo's guards would check
    on every call. Random ops fall back to aten (``INDUCTOR_CONFIG``), so a compiled
    program draws the same numbers as eager from the same seed.
    """

    name = "inductor"
    program_class = InductorProgram


# fallback_random: inductor's own generator would draw different numbers than eager from
# the same seed; the aten random ops keep a compiled program checkable against eager. On
# CPU they are faster too (measured: 46 vs 68 us a call with 300 draws, 7.5 vs 19 ms with
# 300,000). On a GPU inductor's fused generator may win: set it False there if matching
# eager's draws does not matter.
# cpp.enable_loop_tail_vec: torch 2.13's CPU code for a loop's tail, vectorized with masks,
# wrote out of bounds in a kernel of a fuzzed program's value-and-grad graph (15 sites,
# subsampled plates, vectorized particles): heap corruption, or, with inductor's buffer
# reuse off, wrong gradients. Found by the long fuzz run; scalar tails (and no vectors at
# all) compute the same graph right (tests/test_fuzz.py::test_inductor_tail_loops).
# size_asserts: the generated code checks each input's sizes and strides, which lazyjit's
# cache key (tensor arguments) and param check (params) have checked already: 3.4 of the
# 12 us that the seed Gaussian model's value-and-grad graph takes, measured.
INDUCTOR_CONFIG: dict[str, Any] = {
    "fallback_random": True,
    "cpp.enable_loop_tail_vec": False,
    "size_asserts": False,
}

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_LAZYJIT_DIR = os.path.dirname(__file__) + os.sep
_CAPTURE_FILES = (__file__, recorder.__file__)


def capture(
    fn: Flat, inputs: Sequence[torch.Tensor], replayable: bool = False, no_grad: bool = False
) -> tuple[GraphModule, frozenset[str]]:
    """``fn`` recorded as an aten graph on ``inputs`` (:func:`lazyjit.recorder.record`,
    ``make_fx``'s real mode), rid of its no-ops (:func:`lazyjit.simplify.simplify`) and
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
        with _StaticDiceTerms():
            outputs = tuple(fn(*args))
        if replayable:
            custom_autograd.update(_custom_autograd_functions(outputs))
        return outputs

    try:
        with validation_enabled(False), keep_random_stream(inputs), _pyro_sees_a_tracer():
            graph_module = record(traced, inputs, detach_no_grad=replayable)
    except RuntimeError as e:
        if DATA_DEPENDENT in str(e):
            raise StructureError(
                "it reads the value of a tensor (a branch on it, .item(), bool(), int())",
                _site(e),
            ) from e
        raise
    sources = {_fx_source_key(graph_module)}
    simplify(graph_module, drop_detach=no_grad or not _grad_anywhere(graph_module, inputs))
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    sources.add(_fx_source_key(graph_module))
    weakref.finalize(graph_module, _forget_fx_sources, sources)
    return graph_module, frozenset(custom_autograd)


def copies(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """New tensors with the same values and ``requires_grad``, outside any autograd graph."""
    return [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]


def _fresh(flat: Flat, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``inputs`` for a capture made after a call ran on them: the params as they are (a
    PyroModule reads its own), the call's tensors as copies, so that a cache keyed by
    tensor identity inside the function (a torch Transform's) cannot hand the capture the
    call's results, whose autograd graph is gone."""
    num_params = getattr(flat, "num_params", len(inputs))
    return [*inputs[:num_params], *copies(inputs[num_params:])]


def _constants(graph_module: GraphModule) -> list[torch.Tensor]:
    """The tensors a captured graph holds (GraphModule registers them as buffers), in the
    order aot_autograd passes them."""
    return [
        t
        for named in (graph_module.named_parameters, graph_module.named_buffers)
        for _, t in named(remove_duplicate=False)
    ]


def _grad_anywhere(graph_module: GraphModule, inputs: Sequence[torch.Tensor]) -> bool:
    """Whether an input or a constant of the graph requires grad."""
    return any(t.requires_grad for t in (*inputs, *_constants(graph_module)))


@contextlib.contextmanager
def keep_random_stream(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Restores the CPU generator, and those of the GPUs ``tensors`` live on, on exit:
    what runs inside draws nothing from the caller's random stream."""
    restore = guards.rng_snapshot(tensors)
    try:
        yield
    finally:
        restore()


# torch.fx keeps the source of every GraphModule it generates in a process-wide cache
# (for tracebacks) that never shrinks: about 45 KB per evicted cache entry, measured.
# A captured graph's sources go with it.
def _fx_source_key(graph_module: GraphModule) -> str:
    """The key of the graph's generated code in torch.fx's source cache (the file name
    it was compiled under)."""
    return type(graph_module).forward.__code__.co_filename


def _forget_fx_sources(keys: set[str]) -> None:
    from torch.fx.graph_module import _loader

    for key in keys:
        _loader.eval_cache.pop(key, None)
        linecache.cache.pop(key, None)


class _StaticDiceTerms(TorchFunctionMode):
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
_get_tracing_state = torch._C._get_tracing_state
_capturing = threading.local()
_shim_lock = threading.Lock()
_shim_users = 0


def _tracing_state_seen_by_pyro() -> Any:
    state = _get_tracing_state()
    if state is None and getattr(_capturing, "active", False):
        if sys._getframe(1).f_globals.get("__name__", "").startswith("pyro."):
            return _TRACING_FOR_PYRO
    return state


@contextlib.contextmanager
def _pyro_sees_a_tracer() -> Iterator[None]:
    global _shim_users
    with _shim_lock:
        if _shim_users == 0:
            torch._C._get_tracing_state = _tracing_state_seen_by_pyro
        _shim_users += 1
    was_active = getattr(_capturing, "active", False)
    _capturing.active = True
    try:
        yield
    finally:
        _capturing.active = was_active
        with _shim_lock:
            _shim_users -= 1
            if _shim_users == 0:
                torch._C._get_tracing_state = _get_tracing_state


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
        return capture(_value_and_grad_of(flat, wrt), inputs, no_grad=True)[0]


def _run_value_and_grad(
    runner: Runner, inputs: Sequence[torch.Tensor], num_wrt: int
) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
    """Runs a graph from :func:`capture_value_and_grad`: (outputs, gradients)."""
    # torch.no_grad() without its context-manager objects: 1 us of an SVI step.
    grad_enabled = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)
    try:
        results = runner(*inputs)
    finally:
        torch._C._set_grad_enabled(grad_enabled)
    num_outputs = len(results) - num_wrt
    # An output may be an input passed through, which can require grad.
    results = [r.detach() if r.requires_grad else r for r in results]
    return tuple(results[:num_outputs]), results[num_outputs:]


def _value_and_grad_of(flat: Flat, wrt: tuple[int, ...]) -> Flat:
    """``flat``'s outputs followed by the gradient of output 0 w.r.t. ``inputs[i]``, ``i`` in
    ``wrt`` (zeros where it does not depend on it): captured, autograd becomes graph ops."""

    def value_and_grad(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = flat(*inputs)
        targets = [inputs[i] for i in wrt]
        if targets and outputs[0].requires_grad:
            grads = torch.autograd.grad(outputs[0], targets, allow_unused=True)
        else:
            grads = (None,) * len(targets)
        zeros = (torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads))
        return (*outputs, *zeros)

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


def _needs_autograd(inputs: Sequence[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs)


def _warn_once(
    warned: set[str], what: str, message: str, category: type[Warning] = LazyJitWarning
) -> None:
    """A warning (a :class:`LazyJitWarning` unless told) at the caller's line, the first
    time ``what`` happens."""
    if what not in warned:
        warned.add(what)
        warnings.warn(f"lazyjit: {message}", category, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside lazyjit."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LAZYJIT_DIR):
        frame, level = frame.f_back, level + 1
    return level


def _site(error: BaseException) -> str:
    """``file:line`` of the innermost frame outside torch and this module's capture
    machinery: the statement that read a value."""
    frames = [
        f
        for f in traceback.extract_tb(error.__traceback__)
        if not f.filename.startswith(_TORCH_DIR) and f.filename not in _CAPTURE_FILES
    ]
    if not frames:
        return "unknown site"
    return f"{frames[-1].filename}:{frames[-1].lineno}"


# The "auto" backend: tiered compilation.
#
# Inductor compiles on a thread of its own, beside the user's loop. What makes that safe
# (checked in torch 2.13; tests/test_auto.py checks the first point):
# * Inductor and aot_autograd save the global RNG state when a compile starts and restore
#   it when it ends (dynamo's preserve_rng_state). Beside a user's loop, that rewinds the
#   user's random stream by every draw made meanwhile (measured: an SVI loop redraws
#   earlier samples). The compile itself draws nothing (fallback_random keeps random ops
#   as aten calls), so on lazyjit's compiler thread the save and restore are skipped;
#   elsewhere they run as before.
# * aot_autograd traces the graph inside warnings.catch_warnings, whose state is
#   process-wide: interleaved with lazyjit's own warning-recording TorchScript trace (the
#   structure guard), either could lose the other's warnings for good. Both take
#   _WARNINGS_LOCK, held for the length of those two blocks only.
# * aot_autograd traces the graph with make_fx, and torch.fx's tracer keeps a module-global
#   patcher: two traces at once fail ("CURRENT_PATCHER is None", measured). Compiles take
#   _TRACE_LOCK. lazyjit's own captures do not use that tracer and run beside them.
# * aot_autograd's tracing turns on anomaly mode, which is process-wide too: autograd on
#   other threads runs slower for that moment (a fraction of the compile). A training
#   compile (forward and backward, for a differentiable plain call) also traces a joint
#   graph under it: those compile on the calling thread instead.
# Lock order: _TRACE_LOCK, then _WARNINGS_LOCK.
_TRACE_LOCK = threading.RLock()
_WARNINGS_LOCK = threading.RLock()
_on_compiler_thread = threading.local()
# Inductor compiles C++ in a pool of worker processes, one per CPU: beside a user's loop,
# one compile process leaves the loop a CPU of its own on a small machine.
_BACKGROUND_CONFIG = {"compile_threads": 1}
_prepared = False

LaneRunner = Callable[[Sequence[torch.Tensor], Sequence[int]], Any]


class _WarningsWithLock:
    """The ``warnings`` module as aot_autograd sees it: ``catch_warnings`` also takes
    ``_WARNINGS_LOCK``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(warnings, name)

    @staticmethod
    @contextlib.contextmanager
    def catch_warnings(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with _WARNINGS_LOCK, warnings.catch_warnings(*args, **kwargs) as caught:
            yield caught


def _prepare_inductor_for_threads() -> None:
    """Installs (once) the two adjustments described above; raises if this torch does
    not look as expected, and the compile then fails (the lane stays on its tier)."""
    global _prepared
    with _WARNINGS_LOCK:  # importing them runs catch_warnings blocks too
        if _prepared:
            return
        import torch._dynamo.utils as dynamo_utils
        import torch._functorch._aot_autograd.graph_capture_wrappers as graph_capture
        import torch._functorch.aot_autograd as aot_autograd
        import torch._inductor.compile_fx  # noqa: F401

        original = dynamo_utils.preserve_rng_state
        if (
            aot_autograd.preserve_rng_state is not original
            or graph_capture.warnings is not warnings
        ):
            raise RuntimeError("this torch's compiler is not laid out as lazyjit expects")

        @contextlib.contextmanager
        def preserve_rng_state() -> Iterator[None]:
            if getattr(_on_compiler_thread, "active", False):
                yield
            else:
                with original():
                    yield

        dynamo_utils.preserve_rng_state = aot_autograd.preserve_rng_state = preserve_rng_state
        graph_capture.warnings = _WarningsWithLock()
        _prepared = True


class _CompilerThread:
    """One daemon thread running background compiles in turn. A daemon, so that it never
    keeps a program alive; at exit, the compile in flight gets a minute to finish."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._last: Future | None = None
        self._lock = threading.Lock()
        self.started = 0

    def submit(self, job: Callable[[], None]) -> Future:
        future: Future = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="lazyjit-compiler", daemon=True
                )
                self._thread.start()
            self._last = future
            self.started += 1
        self._jobs.put((future, job))
        return future

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the jobs submitted so far are done (they run in order)."""
        last = self._last
        return last is None or not concurrent.futures.wait([last], timeout).not_done

    def _work(self) -> None:
        _on_compiler_thread.active = True
        while True:
            future, job = self._jobs.get()
            future.set_running_or_notify_cancel()
            try:
                with _TRACE_LOCK:
                    future.set_result(job())
            except BaseException as e:  # noqa: BLE001 - the job reports its own failures
                future.set_exception(e)


_COMPILER = _CompilerThread()


@atexit.register
def _finish_compiles() -> None:
    # A daemon thread still inside inductor when the interpreter finalizes can take the
    # process down with it ("terminate called without an active exception", exit code
    # 134, seen in test runs): let the compile in flight end first, within reason.
    _COMPILER.wait(timeout=60)


def wait_for_compiles(timeout: float | None = None) -> bool:
    """Waits for every background compile started so far (of any program); whether
    they are done. For benchmarks and tests: normal code never needs to wait."""
    return _COMPILER.wait(timeout)


def compiles_started() -> int:
    """How many background compiles have been started in this process. A hot lane
    waits for the compile in flight before it starts its own, so a loop has reached its
    steady state once a pass over it starts none."""
    return _COMPILER.started


@dataclasses.dataclass(frozen=True)
class TierPolicy:
    """When a :class:`TieredProgram`'s lane moves up, counted in its calls, never in
    seconds: the same sequence of calls switches at the same calls in every run, so a
    seeded program gives the same numbers every time (``docs/reliability.md``).

    :ivar warm_calls: after this many calls on tier 0, the lane's aten graph is captured
        and runs on TorchScript (or as FX code) from the next call on.
    :ivar hot_calls: after this many calls, inductor compiles that graph in the
        background (a differentiable plain call: on the calling thread, at once).
    :ivar switch_calls: the lane runs the inductor code from this many calls after it
        was hot, waiting there for the compile if it is not done yet. ``None`` switches
        as soon as the compile is done instead: faster to arrive, but at a call that
        depends on the machine's load, so two runs may differ in the last bits.
    """

    warm_calls: float = 2
    hot_calls: float = 2000
    switch_calls: float | None = 2000


class Lane:
    """One way of calling a :class:`TieredProgram`: plain calls, or ``value_and_grad``.

    :ivar kind: ``"call"`` or ``"value_and_grad"``.
    :ivar policy: the :class:`TierPolicy` it follows.
    :ivar tier: what runs it now: tier 0 (``"eager"``, or the name of
        :attr:`AutoBackend.first`), ``"aten-jit"`` or ``"aten"`` (its captured graph on
        TorchScript, or as FX code) or ``"inductor"``.
    :ivar calls: calls counted until it runs inductor's code (or stays where it is).
    :ivar graph_module: the graph captured, once warm (or given in advance: a plain-call
        lane given one compiles it without a backward).
    :ivar grad: whether that graph's outputs must be differentiable (a plain call under
        autograd): its inductor compile is a training compile, on the calling thread.
    :ivar future: the background compile of that graph, whose result the lane takes at
        call :attr:`switch_at`.
    :ivar waited_seconds: how long the lane waited at that call for the compile.
    """

    def __init__(self, kind: str, tier: str, policy: TierPolicy):
        self.kind = kind
        self.tier = tier
        self.policy = policy
        self.calls = 0
        self.warm = False
        self.hot = False
        self.wrt: Sequence[int] = ()
        self.graph_module: GraphModule | None = None
        self.grad = False
        self.future: Future | None = None
        self.switch_at = math.inf
        self.waited_seconds = 0.0
        self.run: LaneRunner  # what a call runs: `runner`, counted until the lane is done
        self.runner: LaneRunner  # the current tier, uncounted
        self.base: LaneRunner  # tier 0, uncounted: for a wrt no graph was captured for


# Moving to TorchScript stalls the caller: the trace and the executor's optimizing first
# calls, on top of the capture; bigger graphs run as FX code instead (docs/backends.md).
_SCRIPT_MAX_NODES = 30000


class TieredProgram(Program):
    """The ``"auto"`` backend's program: tier 0, then its captured graph on TorchScript
    once warm, then inductor once hot.

    Tier 0 is the program of :attr:`AutoBackend.first` (eager Pyro unless set).
    Plain calls and ``value_and_grad`` are two :class:`Lane`\\ s, each tiered up on its
    own by its :class:`TierPolicy`. Once warm, its aten graph is captured on the calling
    thread (the capture runs the Pyro code, and Pyro's effect-handler stack is
    process-wide) and the lane runs that graph traced by TorchScript (``"aten-jit"``), or
    as FX code (``"aten"``) where the graph is too big to trace on the caller's thread
    or TorchScript is missing. Once hot, inductor compiles the graph on lazyjit's
    compiler thread, and the lane takes the compiled code at its switch call. A
    differentiable plain call runs its warm graph traced with its backward, and needs
    inductor's training compile, which cannot run beside the caller: that lane compiles on
    the calling thread when hot. A failed capture or compile leaves the lane on its tier,
    with a one-time :class:`LazyJitWarning`.

    :ivar base: the tier-0 program.
    :ivar lanes: ``{"call": Lane, "value_and_grad": Lane}``.
    :ivar compile_seconds: seconds spent capturing and compiling after tier 0, background
        compiles included.
    """

    def __init__(self, flat: Flat, base: Program, lanes: dict[str, Lane]):
        super().__init__(flat)
        self.flat = flat
        self.base = base
        self.lanes = lanes
        self.compile_seconds = 0.0
        if type(base) is Program:  # eager: Pyro code

            def plain(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
                with PYRO_LOCK:
                    return base(*inputs)

            def grad(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
                with PYRO_LOCK:
                    return base.value_and_grad(inputs, wrt)
        else:
            plain, grad = (lambda inputs, wrt: base(*inputs)), base.value_and_grad
        self._plain = lanes["call"]
        self._plain.runner = self._plain.base = plain
        self._grad = lanes["value_and_grad"]
        self._grad.runner = self._grad.base = grad
        for lane in lanes.values():
            lane.run = self._counting(lane)
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._plain.run(inputs, ())

    def value_and_grad(
        self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]
    ) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
        return self._grad.run(inputs, wrt)

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the background compiles started so far; whether they are done."""
        futures = [lane.future for lane in self.lanes.values() if lane.future is not None]
        return not concurrent.futures.wait(futures, timeout).not_done

    def _counting(self, lane: Lane) -> LaneRunner:
        """The lane's runner, counted until the lane has taken inductor's code."""
        policy = lane.policy

        def counted(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
            result = lane.runner(inputs, wrt)
            lane.calls += 1
            if lane.future is not None:
                if lane.calls >= lane.switch_at or (
                    policy.switch_calls is None and lane.future.done()
                ):
                    self._take_compiled(lane)
            elif lane.calls >= policy.hot_calls:
                self._tier_up(lane, inputs, wrt)
            elif not lane.warm and lane.calls >= policy.warm_calls:
                self._warm_up(lane, inputs, wrt)
            return result

        return counted

    def _capture(self, lane: Lane, inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> bool:
        """Captures the lane's graph on this thread; whether it did (if not, the lane stays
        on its tier)."""
        start = time.perf_counter()
        grad = False
        try:
            fresh = _fresh(self.flat, inputs)
            with PYRO_LOCK:
                if lane is self._grad:
                    graph_module = capture_value_and_grad(self.flat, fresh, tuple(wrt))
                else:
                    graph_module, custom_autograd = capture(self.flat, fresh, replayable=True)
                    grad = _needs_autograd(inputs)
                    if grad and custom_autograd:
                        logger.info(
                            "lazyjit: plain calls stay on %s: they use %s, whose backward an "
                            "aten graph cannot keep",
                            lane.tier,
                            ", ".join(sorted(custom_autograd)),
                        )
                        return False
        except StructureError as e:
            if not getattr(self.flat, "guard", True):  # strict: no guards, no fallback
                raise LazyJitError(
                    f"{lane.kind} cannot be compiled: {e}. Its structure depends on tensor "
                    "values, so a compiled version could be silently wrong."
                ) from e
            self._fell_back()
            _warn_once(
                self._warned,
                lane.kind,
                f"{lane.kind} stays on {lane.tier}: its structure depends on a tensor value "
                f"that no guard can check, at {e.site}",
                StructureWarning,
            )
            return False
        except Exception as e:  # noqa: BLE001 - the lane's tier computes the same thing
            self._fell_back()
            _warn_once(
                self._warned,
                lane.kind,
                f"{lane.kind} stays on {lane.tier}: capturing its graph failed "
                f"({type(e).__name__}: {e})",
            )
            return False
        lane.wrt, lane.graph_module, lane.grad = wrt, graph_module, grad
        seconds = time.perf_counter() - start
        self._add_compile_seconds(seconds)
        logger.info(
            "lazyjit: %s is %s after %d calls on %s; captured its graph (%d nodes) in %.3f s",
            lane.kind,
            "hot" if lane.hot else "warm",
            lane.calls,
            lane.tier,
            len(graph_module.graph.nodes),
            seconds,
        )
        return True

    def _fell_back(self) -> None:
        fell_back = getattr(self.flat, "fell_back", None)
        if fell_back is not None:
            fell_back()

    def _warm_up(self, lane: Lane, inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> None:
        with self._lock:
            if lane.warm:  # another thread got there first
                return
            lane.warm = True
        if self._capture(lane, inputs, wrt):
            self._run_captured(lane, inputs)

    def _tier_up(self, lane: Lane, inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> None:
        with self._lock:
            if lane.hot:  # another thread got there first
                return
            lane.hot = True
        try:
            if lane.graph_module is None:
                if lane.warm or not self._capture(lane, inputs, wrt):  # no second stall
                    return
            grad = lane.grad
            if not grad and not lane.warm:  # a warm lane runs its graph already
                self._run_captured(lane, inputs)
            logger.info(
                "lazyjit: %s is hot after %d calls; inductor compiles its graph %s",
                lane.kind,
                lane.calls,
                "now, on this thread (a training compile)" if grad else "in the background",
            )
            job = functools.partial(self._compile, lane.graph_module, inputs, grad)
            if grad:
                with _TRACE_LOCK:
                    self._finish_compile(lane, _done_future(job))
                return
            lane.future = _COMPILER.submit(job)
            if lane.policy.switch_calls is not None:
                lane.switch_at = lane.calls + lane.policy.switch_calls
        finally:
            if lane.future is None:
                lane.run = lane.runner  # counting is over

    def _run_captured(self, lane: Lane, inputs: Sequence[torch.Tensor]) -> None:
        """Switches the lane to its captured graph traced by TorchScript (as
        ``"aten-jit"`` does): tracing costs one run of the graph, and the graph, which
        needs no autograd at call time, runs about twice as fast as Pyro's jit. A graph
        too big to trace on the caller's thread runs as FX code (as ``"aten"`` does), and
        so does one that TorchScript fails to trace."""
        graph_module = lane.graph_module
        if len(graph_module.graph.nodes) > _SCRIPT_MAX_NODES:
            self._switch(lane, graph_module.forward, "aten")
            return
        start = time.perf_counter()
        try:
            runner = script_graph(graph_module, inputs, lane.grad)
        except Exception as e:  # noqa: BLE001 - the graph's FX code computes the same thing
            logger.info(
                "lazyjit: %s runs its graph as FX code: TorchScript failed to trace it (%s: %s)",
                lane.kind,
                type(e).__name__,
                e,
            )
            self._switch(lane, graph_module.forward, "aten")
            return
        self._add_compile_seconds(time.perf_counter() - start)
        self._switch(lane, runner, "aten-jit")

    def _add_compile_seconds(self, seconds: float) -> None:
        with self._lock:  # the compiler thread adds too
            self.compile_seconds += seconds

    def _compile(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool
    ) -> Runner:
        start = time.perf_counter()
        _prepare_inductor_for_threads()
        compiled = inductor_compile(graph_module, inputs, grad, _BACKGROUND_CONFIG)
        seconds = time.perf_counter() - start
        self._add_compile_seconds(seconds)
        logger.info("lazyjit: inductor compiled a graph in %.3f s", seconds)
        return compiled

    def _take_compiled(self, lane: Lane) -> None:
        """At the lane's switch call: waits for its compile, and switches to it."""
        start = time.perf_counter()
        concurrent.futures.wait([lane.future])
        lane.waited_seconds = time.perf_counter() - start
        if lane.waited_seconds > 0.001:
            logger.info(
                "lazyjit: %s waited %.3f s at call %d for its inductor compile",
                lane.kind,
                lane.waited_seconds,
                lane.calls,
            )
        self._finish_compile(lane, lane.future)
        lane.run = lane.runner  # counting is over

    def _finish_compile(self, lane: Lane, future: Future) -> None:
        try:
            runner = future.result()
        except Exception as e:  # noqa: BLE001 - the lane's tier computes the same thing
            _warn_once(
                self._warned,
                "inductor",
                f"{lane.kind} stays on {lane.tier}: inductor failed to compile its graph "
                f"({type(e).__name__}: {e})",
            )
            return
        self._switch(lane, runner, "inductor")

    def _switch(self, lane: Lane, runner: Runner, tier: str) -> None:
        """Makes ``lane`` run its captured graph with ``runner``, as ``tier``."""
        if lane is self._plain:

            def run(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
                return tuple(runner(*inputs))
        else:
            base, num_wrt = lane.base, len(lane.wrt)

            def run(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
                if wrt is lane.wrt or tuple(wrt) == tuple(lane.wrt):
                    return _run_value_and_grad(runner, inputs, num_wrt)
                return base(inputs, wrt)  # not the wrt the graph was captured for

        lane.runner = run
        logger.info("lazyjit: %s switched from %s to %s", lane.kind, lane.tier, tier)
        lane.tier = tier


def _done_future(job: Callable[[], Any]) -> Future:
    """A future holding what ``job()`` returned or raised."""
    future: Future = Future()
    try:
        future.set_result(job())
    except Exception as e:  # noqa: BLE001 - the future carries it
        future.set_exception(e)
    return future


class AutoBackend(Backend):
    """Tiered compilation: eager Pyro first (nothing to compile for a call that does not
    repeat), then the captured graph on TorchScript once warm, inductor once hot.

    The program is a :class:`TieredProgram`. Each of its lanes (plain calls,
    ``value_and_grad``) counts its calls and moves up by ``policy``, a
    :class:`TierPolicy`: tier switches happen at the same calls in every run, so a seeded
    program is reproducible bit for bit. ``docs/backends.md`` has the measurements behind
    the defaults.

    :param policy: when lanes move up.
    :param first: tier 0 (an attribute too): ``Backend()`` (eager Pyro) by default;
        ``TorchScriptBackend(optimize=False)`` is faster on tier 0 where TorchScript
        is available, but drops random draws whose results go unused.
    """

    name = "auto"

    def __init__(self, policy: TierPolicy | None = None, first: Backend | None = None):
        self.policy = TierPolicy() if policy is None else policy
        self.first = Backend() if first is None else first

    def compile(self, fn: Flat, inputs: Sequence[torch.Tensor], options: dict[str, Any]) -> Program:
        try:
            base, tier = self.first.compile(fn, inputs, options), self.first.name
        except StructureError:
            raise
        except Exception as e:  # noqa: BLE001 - eager is tier 0 where `first` fails
            warnings.warn(
                f"lazyjit: {self.first.name} failed ({type(e).__name__}: {e}); the auto "
                "backend runs this function eagerly until it is warm",
                LazyJitWarning,
                stacklevel=_caller_stacklevel(),
            )
            base, tier = Program(fn), "eager"
        lanes = {
            "call": Lane("call", tier, self.policy),
            "value_and_grad": Lane("value_and_grad", tier, self.policy),
        }
        return TieredProgram(fn, base, lanes)


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(),
        TorchScriptBackend(),
        AtenBackend(),
        AtenJitBackend(),
        InductorBackend(),
        AutoBackend(),
    )
}


def get_backend(name: str | Backend) -> Backend:
    """The registered backend called ``name`` (a :class:`Backend` is returned as is)."""
    if isinstance(name, Backend):
        return name
    try:
        return BACKENDS[name]
    except KeyError:
        raise LazyJitError(
            f"unknown lazyjit backend {name!r}; choose one of {sorted(BACKENDS)}"
        ) from None
