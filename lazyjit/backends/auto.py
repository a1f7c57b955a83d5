"""The ``"auto"`` backend: eager Pyro first, then faster tiers as calls repeat
(:mod:`lazyjit.backends.tiers` has the rule and the mechanism)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.fx import GraphModule

from ..errors import LazyJitWarning, StructureError, caller_stacklevel
from ..graph.capture import Flat
from ..graph.pycode import fx_code
from .base import Backend, EagerBackend, Program
from .threads import PYRO_LOCK
from .tiers import Lane, LaneRunner, TierPolicy
from .worker import WORKER


class TieredProgram(Program):
    """The ``"auto"`` backend's program: two :class:`lazyjit.backends.tiers.Lane`\\ s,
    plain calls and ``value_and_grad``, each moved up its tiers on its own.

    :ivar base: the tier-0 program.
    :ivar lanes: ``{"call": Lane, "value_and_grad": Lane}``.
    :ivar compile_seconds: seconds spent capturing and compiling after tier 0, background
        compiles included.
    """

    runs_eagerly = False

    def __init__(self, flat: Flat, base: Program, policy: TierPolicy, tier: str):
        super().__init__(flat)
        self.flat = flat
        self.base = base
        plain, grad = _runners(base)
        self.lanes = {
            "call": Lane(self, "call", tier, policy, plain),
            "value_and_grad": Lane(self, "value_and_grad", tier, policy, grad),
        }
        self._plain, self._grad = self.lanes["call"], self.lanes["value_and_grad"]

    @classmethod
    def of_graph(cls, flat: Flat, graph_module: GraphModule, policy: TierPolicy) -> TieredProgram:
        """Plain calls of ``flat``, whose graph is given: FX code at once, then the tiers
        above as ``policy`` says. (``value_and_grad`` runs autograd over the FX code.)"""
        code = fx_code(graph_module)
        program = cls(flat, Program(code), policy, "aten")
        program.lanes["call"].start_from(graph_module, code)
        program.lanes["value_and_grad"].settle()
        return program

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


def _runners(base: Program) -> tuple[LaneRunner, LaneRunner]:
    """Tier 0's plain and value-and-grad runners; Pyro code runs under :data:`PYRO_LOCK`."""
    if not base.runs_eagerly:
        return (lambda inputs, wrt: base(*inputs)), base.value_and_grad

    def plain(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
        with PYRO_LOCK:
            return base(*inputs)

    def grad(inputs: Sequence[torch.Tensor], wrt: Sequence[int]) -> Any:
        with PYRO_LOCK:
            return base.value_and_grad(inputs, wrt)

    return plain, grad


class AutoBackend(Backend):
    """Tiered compilation, the default: eager Pyro first (nothing to compile for a call
    that does not repeat), then the captured graph on TorchScript once warm, inductor's
    code once hot; ``policy`` says when, counted in calls, so a seeded program is
    reproducible bit for bit. ``docs/backends.md`` has the measurements behind it.

    Example::

        from lazyjit.backends import AutoBackend, TierPolicy

        fast_start = AutoBackend(TierPolicy(hot_calls=200, switch_calls=None))
        elbo = lazyjit.JitTrace_ELBO(backend=fast_start)

    :param policy: when lanes move up (a :class:`lazyjit.backends.TierPolicy`).
    :param first: tier 0: :class:`EagerBackend` (eager Pyro) by default;
        ``TorchScriptBackend(optimize=False)`` is faster on tier 0 where TorchScript
        is available, but drops random draws whose results go unused.
    :param name: the name it is registered under (:func:`lazyjit.backends.register_backend`).
    """

    name = "auto"
    captures_graph = True
    compiles_graph = True

    def __init__(
        self, policy: TierPolicy | None = None, first: Backend | None = None, name: str = "auto"
    ):
        self.policy = TierPolicy() if policy is None else policy
        self.first = EagerBackend() if first is None else first
        self.name = name

    def replace(self, **changes: Any) -> AutoBackend:
        """A copy with another ``policy``, ``first`` or ``name``, or other values for
        fields of its :class:`TierPolicy` (``hot_calls=200``, ``switch_seconds=math.inf``)."""
        fields = {f.name for f in dataclasses.fields(TierPolicy)}
        policy = self.policy.replace(**{k: changes.pop(k) for k in fields & set(changes)})
        return AutoBackend(**{"policy": policy, "first": self.first, "name": self.name, **changes})

    def prepare(self) -> None:
        """Starts the compile worker (``lazyjit.backends.worker``): its own start, about
        4 s of imports, then overlaps the user's setup and the calls before a lane is hot."""
        if self.policy.hot_calls < math.inf:
            WORKER.start()

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
                stacklevel=caller_stacklevel(),
            )
            base, tier = Program(fn), "eager"
        return TieredProgram(fn, base, self.policy, tier)
