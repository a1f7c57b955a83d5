"""Tiered compilation: the rule (:class:`TierPolicy`, data) and the mechanism
(:class:`Lane`: run this now, prepare that, switch at the call the rule names).

A lane is one way of calling a program (plain calls, or ``value_and_grad``). It starts
on tier 0, the program it was given. Once warm it captures its aten graph on the calling
thread (the capture runs the Pyro code, and Pyro's effect-handler stack is process-wide)
and runs that graph traced by TorchScript (``"aten-jit"``), or as FX code (``"aten"``)
where the graph is too big to trace on the caller's thread or TorchScript is missing.
Once hot, inductor compiles the graph on the compiler thread, and the lane takes the
compiled code at its switch call. A differentiable plain call needs inductor's training
compile, which cannot run beside the caller (``lazyjit.backends.threads``): that lane
compiles on the calling thread when hot. A failed capture or compile leaves the lane on
its tier, with a one-time :class:`LazyJitWarning`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

import torch
from torch.fx import GraphModule

from .. import config
from ..errors import LazyJitError, LazyJitWarning, StructureError, StructureWarning, warn_once
from ..graph.capture import (
    Flat,
    Runner,
    capture,
    capture_value_and_grad,
    fresh_inputs,
    op_count,
    run_value_and_grad,
)
from ..graph.pycode import fx_code
from ..graph.recorder import SHAPE_DTYPE
from ..log import Stopwatch, logger
from .aten_jit import script_graph
from .base import needs_autograd
from .inductor import MATMULS, inductor_compile
from .threads import COMPILER, PYRO_LOCK, TRACE_LOCK, done_future, prepare_inductor_for_threads
from .worker import WORKER, WorkerLost

# What a lane runs for a call: (inputs, wrt) -> the call's result.
LaneRunner = Callable[[Sequence[torch.Tensor], Sequence[int]], Any]


@dataclasses.dataclass(frozen=True)
class TierPolicy:
    """When a lane moves up, counted in its calls, never in seconds: the same sequence of
    calls switches at the same calls in every run, so a seeded program gives the same
    numbers every time (``docs/reliability.md``).

    Example: ``lazyjit.trace(fn, backend=AutoBackend(TierPolicy(hot_calls=1000)))``.

    :ivar warm_calls: after this many calls on tier 0, the lane's aten graph is captured and
        runs on TorchScript (or as FX code) from the next call on.
    :ivar hot_calls: after this many calls, inductor compiles that graph in the compile
        worker, a process of its own (``lazyjit.backends.worker``).
    :ivar switch_calls: the lane runs the inductor code from this many calls after it
        was hot, waiting there for the compile if it is not done yet. ``None`` switches
        as soon as the compile is done instead: faster to arrive, but at a call that
        depends on the machine's load, so two runs may differ in the last bits.
    :ivar fx_switch_calls: ``switch_calls`` (at most) for a lane whose graph runs as FX
        code (``"aten"``: no TorchScript, or a graph too big to trace), whose calls take
        about twice as long: the switch comes after about as much time. Which tier a
        lane runs is decided by the graph and the torch build, not by the clock, so the
        switch call is still the same in every run.
    :ivar local_hot_calls: where the compile must run in this process instead (a training
        compile, or no worker: one CPU, or :data:`lazyjit.config.COMPILE_WORKER` off), the
        lane is hot after this many calls (and ``hot_calls``): such a compile slows this
        process's loop down while it runs (a training compile stops it).
    :ivar hot_seconds: a lane whose calls are slow is hot sooner than ``hot_calls``: once
        its calls took about this long, by :func:`call_seconds`'s estimate.
    :ivar switch_seconds: the lane switches after about this long from hot (by
        :func:`call_seconds`'s estimate) where that comes before ``switch_calls`` (or
        ``fx_switch_calls``): the seed model's calls after a few thousand, a big graph's
        slow ones after a few. Inductor's code for a graph compiled before, in this run or
        an earlier one, is loaded when the lane is hot (``lazyjit.backends.worker``), so a
        later switch would only run slower calls for longer; an earlier one would make a
        short run on an empty inductor cache wait for a first compile (seconds) that it
        never pays back. The estimate comes from the graph alone, so the switch call is
        still the same in every run. ``math.inf`` for both: the counts only.
    :ivar seconds_max_ops: the seconds apply to a graph of at most this many ops. With an
        empty cache inductor takes 30 to 45 ms an op (a 600-op graph 18 to 29 s on two
        CPUs): a deep Markov model's 31,000 ops would make the switch wait for many
        minutes.
    """

    warm_calls: float = 2
    hot_calls: float = 100
    switch_calls: float | None = 10000
    local_hot_calls: float = 2000
    fx_switch_calls: float = 5000
    hot_seconds: float = 0.25
    switch_seconds: float = 1.0
    seconds_max_ops: float = 2000

    def replace(self, **changes: float | None) -> TierPolicy:
        """A copy with ``changes`` (``math.inf``: never)."""
        return dataclasses.replace(self, **changes)

    def seconds_a_call(self, graph_module: GraphModule) -> float:
        """:func:`call_seconds` of a graph that the seconds apply to; else 0 (counts only)."""
        if op_count(graph_module) > self.seconds_max_ops:
            return 0.0
        return call_seconds(graph_module)

    def hot_after(self, seconds_a_call: float) -> float:
        """Calls to hot for a lane whose calls take ``seconds_a_call`` (an estimate)."""
        return min(self.hot_calls, _calls_in(self.hot_seconds, seconds_a_call))

    def switch_after(self, tier: str, seconds_a_call: float = 0.0) -> float | None:
        """Calls from hot to the switch for a lane that runs ``tier`` meanwhile, at
        ``seconds_a_call`` a call (an estimate)."""
        if self.switch_calls is None:
            return None
        count = (
            self.switch_calls if tier != "aten" else min(self.switch_calls, self.fx_switch_calls)
        )
        return min(count, _calls_in(self.switch_seconds, seconds_a_call))


def _calls_in(seconds: float, seconds_a_call: float) -> float:
    """Calls that take about ``seconds``; ``math.inf`` where there is no estimate (or
    no limit: ``seconds=math.inf`` leaves the counts alone)."""
    if seconds_a_call <= 0 or math.isinf(seconds):
        return math.inf
    return math.ceil(seconds / seconds_a_call)


# The estimate of a call's time behind TierPolicy's seconds: a dispatch per op (what bounds
# a small graph on TorchScript), the bytes its ops write (what bounds a big one), and the
# arithmetic of its matrix products. Rough: within about 1.5x of the calls measured on
# TorchScript, mostly below them (a late switch costs less than an early one, which
# waits); docs/backends.md has the calibration.
OP_SECONDS = 1.5e-6
BYTE_SECONDS = 0.4e-9
FLOP_SECONDS = 0.01e-9


def call_seconds(graph_module: GraphModule) -> float:
    """A call of ``graph_module`` on a warm tier, estimated from its ops and the shapes
    recorded at capture: no clock, so the calls counted from it are the same in every run."""
    seconds = 0.0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        seconds += OP_SECONDS
        shape_dtype = node.meta.get(SHAPE_DTYPE)
        if shape_dtype is not None:
            shape, dtype = shape_dtype
            seconds += math.prod(shape) * dtype.itemsize * BYTE_SECONDS
        if node.target in MATMULS:
            seconds += _matmul_flops(node.args[-2:]) * FLOP_SECONDS
    return seconds


def _matmul_flops(operands: Sequence[Any]) -> int:
    """Floating-point operations of a matrix product of ``operands`` (recorded nodes)."""
    shapes = [getattr(a, "meta", {}).get(SHAPE_DTYPE, (None,))[0] for a in operands]
    if any(shape is None for shape in shapes):
        return 0
    a, b = shapes
    return 2 * math.prod(a) * b[-1]


class Owner(Protocol):
    """What a lane needs of the program it belongs to."""

    flat: Flat

    def add_compile_seconds(self, seconds: float) -> None: ...


class Lane:
    """One way of calling a tiered program, moved up its tiers by a :class:`TierPolicy`.

    :ivar kind: ``"call"`` or ``"value_and_grad"``.
    :ivar tier: what runs it now: tier 0's name, ``"aten-jit"`` or ``"aten"`` (its
        captured graph on TorchScript, or as FX code) or ``"inductor"``.
    :ivar calls: calls counted until it runs inductor's code (or stays where it is).
    :ivar graph_module: the graph captured, once warm (or given in advance).
    :ivar grad: whether that graph's outputs must be differentiable (a plain call under
        autograd): its inductor compile is a training compile, on the calling thread.
    :ivar future: the background compile, whose result the lane takes at call
        :attr:`switch_at`; :ivar waited_seconds: how long it waited there.
    :ivar run: what a call runs: the current tier, counted until the lane is done.
    """

    def __init__(self, owner: Owner, kind: str, tier: str, policy: TierPolicy, base: LaneRunner):
        self.owner = owner
        self.kind = kind
        self.tier = tier
        self.policy = policy
        self.base = base  # tier 0, uncounted: for a wrt that no graph was captured for
        self.runner = base  # the current tier, uncounted
        self.run: LaneRunner = self._counted
        self.calls = 0
        self.warm = self.hot = False
        self.wrt: Sequence[int] = ()
        self.graph_module: GraphModule | None = None
        self.grad = False
        self.future: Future | None = None
        self.hot_call = 0  # the call at which the lane was hot
        self.seconds_a_call = 0.0  # of its graph, once it has one (policy.seconds_a_call)
        self.hot_at = self._hot_at()
        self.waited_seconds = 0.0
        self.warned: set[str] = set()
        self._lock = threading.Lock()

    def _counted(self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
        result = self.runner(inputs, wrt)
        self.calls += 1
        policy = self.policy
        if self.future is not None:
            if self.calls >= self.switch_at or (policy.switch_calls is None and self.future.done()):
                self._take_compiled()
        elif self.calls >= self.hot_at and self._claim("hot"):
            self._tier_up(inputs, wrt)
        elif not self.warm and self.calls >= policy.warm_calls and self._claim("warm"):
            if self.graph_module is not None or self._capture(inputs, wrt):
                self._run_captured(inputs)
        return result

    @property
    def switch_at(self) -> float:
        """The call at which the lane takes inductor's code: counted from the call it was
        hot, for the tier it runs (a fused step is hot before its warm tier is chosen)."""
        after = self.policy.switch_after(self.tier, self.seconds_a_call)
        return math.inf if self.future is None or after is None else self.hot_call + after

    def _hot_at(self) -> float:
        """The call after which the lane is hot: ``policy.hot_calls`` where the compile
        can go to the worker (sooner for slow calls), ``policy.local_hot_calls`` (at least)
        where it cannot."""
        if not self.grad and WORKER.usable():
            return self.policy.hot_after(self.seconds_a_call)
        return max(self.policy.hot_calls, self.policy.local_hot_calls)

    def _claim(self, flag: str) -> bool:
        """Sets ``flag`` (``"warm"`` or ``"hot"``); whether this thread got there first."""
        with self._lock:
            if getattr(self, flag):
                return False
            setattr(self, flag, True)
            return True

    def start_from(self, graph_module: GraphModule, code: Runner) -> None:
        """Runs ``graph_module`` (a plain call's, given in advance) as FX code
        (``code``) until the policy moves the lane on."""
        self.graph_module = graph_module
        self.seconds_a_call = self.policy.seconds_a_call(graph_module)
        self.hot_at = self._hot_at()
        self.switch(code, "aten")

    def settle(self) -> None:
        """Stops counting: the lane stays on its tier."""
        self.run = self.runner

    def _capture(self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> bool:
        """Captures the lane's graph on this thread; whether it did."""
        clock = Stopwatch()
        try:
            graph_module, grad = capture_lane(self.owner.flat, self.kind, inputs, wrt)
        except Unkeepable as e:
            logger.info("lazyjit: plain calls stay on %s: %s", self.tier, e)
            return False
        except StructureError as e:
            if not getattr(self.owner.flat, "guard", True):  # strict: no guards, no fallback
                raise LazyJitError(
                    f"{self.kind} cannot be compiled: {e}. Its structure depends on tensor "
                    "values, so a compiled version could be silently wrong."
                ) from e
            self._stay(
                f"its structure depends on a tensor value that no guard can check, at {e.site}",
                StructureWarning,
            )
            return False
        except Exception as e:  # noqa: BLE001 - the lane's tier computes the same thing
            self._stay(f"capturing its graph failed ({type(e).__name__}: {e})")
            return False
        self.wrt, self.graph_module, self.grad = wrt, graph_module, grad
        self.seconds_a_call = self.policy.seconds_a_call(graph_module)
        self.hot_at = self._hot_at()
        clock.done(
            self.owner.add_compile_seconds,
            "lazyjit: %s is %s after %d calls on %s; captured its graph (%d nodes) in %.3f s",
            self.kind,
            "hot" if self.hot else "warm",
            self.calls,
            self.tier,
            len(graph_module.graph.nodes),
        )
        return True

    def _stay(self, reason: str, category: type[Warning] = LazyJitWarning) -> None:
        fell_back = getattr(self.owner.flat, "fell_back", None)
        if fell_back is not None:
            fell_back()
        message = f"lazyjit: {self.kind} stays on {self.tier}: {reason}"
        warn_once(self.warned, "capture", message, category)

    def _tier_up(self, inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> None:
        try:
            if self.graph_module is None:
                if self.warm or not self._capture(inputs, wrt):  # no second stall
                    return
            if not self.warm and not self.grad:
                self._run_captured(inputs)
            grad = self.grad
            logger.info(
                "lazyjit: %s is hot after %d calls; inductor compiles its graph %s",
                self.kind,
                self.calls,
                "now, on this thread (a training compile)" if grad else "in the background",
            )
            job = functools.partial(
                hot_runner, self.graph_module, inputs, grad, self.owner.add_compile_seconds
            )
            if grad:
                with TRACE_LOCK:
                    self._finish_compile(done_future(job))
                return
            self.future = COMPILER.submit(job)
            self.hot_call = self.calls
        finally:
            if self.future is None:
                self.settle()

    def _run_captured(self, inputs: Sequence[torch.Tensor]) -> None:
        runner, tier = warm_runner(self.graph_module, inputs, self.grad, self.owner)
        self.switch(runner, tier)

    def _take_compiled(self) -> None:
        """At the switch call: waits for the compile, and switches to it."""
        self.waited_seconds = _wait_for(self.future, self.kind, self.calls)
        self._finish_compile(self.future)
        self.settle()

    def _finish_compile(self, future: Future) -> None:
        try:
            runner = future.result()
        except Exception as e:  # noqa: BLE001 - the lane's tier computes the same thing
            warn_once(
                self.warned,
                "inductor",
                f"lazyjit: {self.kind} stays on {self.tier}: inductor failed to compile its "
                f"graph ({type(e).__name__}: {e})",
            )
            return
        self.switch(runner, "inductor")

    def switch(self, runner: Runner, tier: str) -> None:
        """Makes the lane run its captured graph with ``runner``, as ``tier``."""
        if self.kind == "call":

            def run(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
                return tuple(runner(*inputs))
        else:
            base, lane_wrt, num_wrt = self.base, self.wrt, len(self.wrt)

            def run(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
                if wrt is lane_wrt or tuple(wrt) == tuple(lane_wrt):
                    return run_value_and_grad(runner, inputs, num_wrt)
                return base(inputs, wrt)  # not the wrt the graph was captured for

        self.runner = run
        logger.info("lazyjit: %s switched from %s to %s", self.kind, self.tier, tier)
        self.tier = tier


def _wait_for(future: Future, kind: str, call: int) -> float:
    """Waits for a lane's compile at its switch call; the seconds waited (logged)."""
    clock = Stopwatch()
    concurrent.futures.wait([future])
    waited = clock.elapsed()
    if waited > 0.001:
        logger.info(
            "lazyjit: %s waited %.3f s at call %d for its inductor compile", kind, waited, call
        )
    return waited


class Unkeepable(Exception):
    """A plain call's graph cannot keep its backward (a custom autograd Function)."""


def capture_lane(
    flat: Flat, kind: str, inputs: Sequence[torch.Tensor], wrt: Sequence[int]
) -> tuple[GraphModule, bool]:
    """A lane's graph, captured on copies of the call's tensors, and whether its outputs
    must be differentiable. Raises :class:`Unkeepable` for a plain call whose backward an
    aten graph cannot keep."""
    fresh = fresh_inputs(flat, inputs)
    with PYRO_LOCK:
        if kind == "value_and_grad":
            return capture_value_and_grad(flat, fresh, tuple(wrt)), False
        graph_module, custom_autograd = capture(flat, fresh, replayable=True)
    grad = needs_autograd(inputs)
    if grad and custom_autograd:
        names = ", ".join(sorted(custom_autograd))
        raise Unkeepable(f"they use {names}, whose backward an aten graph cannot keep")
    return graph_module, grad


def warm_runner(
    graph_module: GraphModule, inputs: Sequence[torch.Tensor], grad: bool, owner: Owner
) -> tuple[Runner, str]:
    """What runs a warm lane's graph, and its tier: the graph traced by TorchScript (as
    ``"aten-jit"`` does), or, where it is too big to trace on the caller's thread or the
    trace fails, its FX code (as ``"aten"`` does)."""
    if len(graph_module.graph.nodes) > config.AUTO_SCRIPT_MAX_NODES:
        return fx_code(graph_module), "aten"
    clock = Stopwatch()
    try:
        runner = script_graph(graph_module, inputs, grad)
    except Exception as e:  # noqa: BLE001 - the graph's FX code computes the same thing
        logger.info(
            "lazyjit: a graph runs as FX code: TorchScript failed to trace it (%s: %s)",
            type(e).__name__,
            e,
        )
        return fx_code(graph_module), "aten"
    clock.done(owner.add_compile_seconds, "lazyjit: traced a captured graph in %.3f s")
    return runner, "aten-jit"


def hot_runner(
    graph_module: GraphModule,
    inputs: Sequence[torch.Tensor],
    grad: bool,
    add_seconds: Callable[[float], None],
) -> Runner:
    """A hot lane's graph compiled by inductor: in the compile worker, or else on the
    compiler thread (on the calling thread where ``grad``)."""
    clock = Stopwatch()
    if not grad and WORKER.usable():
        try:
            compiled = WORKER.compile(graph_module, inputs, config.BACKGROUND_INDUCTOR_CONFIG)
        except WorkerLost as e:
            if WORKER.closed:
                raise  # the process exits: no compile is of use now
            logger.info("lazyjit: a graph compiles in this process: %s", e)
        else:
            if compiled is not None:
                clock.done(
                    add_seconds, "lazyjit: a graph's inductor code came from the worker in %.3f s"
                )
                return compiled
            logger.info("lazyjit: a graph compiles in this process: its code needs inductor")
    prepare_inductor_for_threads()
    compiled = inductor_compile(graph_module, inputs, grad, config.BACKGROUND_INDUCTOR_CONFIG)
    clock.done(add_seconds, "lazyjit: inductor compiled a graph in %.3f s")
    return compiled
