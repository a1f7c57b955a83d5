"""A compiled entry: one call signature's program, and what it was compiled against.

:class:`FlatFunction` is what a backend compiles (params and tensors in, a flat tuple of
tensors out); :class:`Entry` holds its programs (specializations, where value guards
fail) and runs a guarded or verified call (:meth:`Entry.run_checked`).
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import config, guards, pyro_shim
from .backends import Program
from .errors import LazyJitError, StructureWarning, warn_once
from .log import logger
from .signature import rebuild
from .tensors import rng_snapshot
from .torch_shim import TreeSpec, tree_flatten, tree_unflatten


@dataclass
class CompileStats:
    """Counters of one :class:`CompiledFunction`.

    ``misses`` counts calls that found no usable entry; ``recompiles`` the subset where
    an entry existed but the params it was built for had changed (a cleared or reloaded
    param store); ``fallbacks`` the entries (with ``"auto"``: the lanes of an entry) that
    run eagerly because compiling them failed or could not be trusted; ``guarded`` the
    entries whose programs check the tensor values they branched on (``lazyjit.guards``),
    and ``guard_failures`` the calls that ran eagerly because no specialization's checks
    held.
    """

    compilations: int = 0
    hits: int = 0
    misses: int = 0
    recompiles: int = 0
    evictions: int = 0
    fallbacks: int = 0
    guarded: int = 0
    guard_failures: int = 0
    compile_seconds: float = 0.0

    def add_compile_seconds(self, seconds: float) -> None:
        """Adds to :attr:`compile_seconds`."""
        self.compile_seconds += seconds


class Gradients:
    """Gradients of a scalar output, as returned by :meth:`CompiledFunction.value_and_grad`.

    :ivar params: ``{param name: gradient w.r.t. its unconstrained value}``.
    :ivar leaves: one item per tensor of the call's arguments, in the order they appear:
        its gradient if it requires grad, else ``None``.
    ``args`` and ``kwargs`` mirror the call's arguments: a gradient in place of every
    tensor that requires grad, ``None`` in place of everything else (built on access).
    """

    __slots__ = ("params", "leaves", "_key")

    def __init__(self, params: dict[str, torch.Tensor], leaves: list, key: tuple):
        self.params = params
        self.leaves = leaves
        self._key = key

    @property
    def args(self) -> tuple:
        return rebuild(self._key, self.leaves)[0]

    @property
    def kwargs(self) -> dict:
        return rebuild(self._key, self.leaves)[1]


class FlatFunction:
    """The function a backend compiles: params and tensor leaves in, the function's
    outputs out as a flat tuple of tensors.

    Its first ``num_params`` inputs are params. Unless ``guard`` is false, value reads met
    while a backend traces it are guarded (:mod:`lazyjit.guards`): such a trace returns
    one more output, whether its checks hold, and :attr:`guarded` is set from then on.

    :ivar spec: the outputs' structure, from the first run; every later run must match it.
    """

    def __init__(
        self,
        pure: Callable,
        name: str,
        guard: bool,
        num_params: int,
        stats: CompileStats,
        warned: set,
    ):
        self.pure = pure
        self.name = name
        self.guard = guard
        self.num_params = num_params
        self.stats = stats
        self.spec: TreeSpec | None = None
        self.guarded = False
        self.warned = warned  # the owning CompiledFunction's: each cause warns once

    def fell_back(self) -> None:
        """Counts a part of the function that a backend runs eagerly after all."""
        self.stats.fallbacks += 1

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with guards.collecting(self.guard) as checks:
            outputs = self._outputs(inputs)
        if not checks:
            return outputs
        if not self.guarded:
            self.guarded = True
            self.stats.guarded += 1
            logger.info("lazyjit: %s is compiled with %d value guards", self.name, len(checks))
        return (*outputs, guards.all_hold(checks))

    def _outputs(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return self.flatten(self.pure(*inputs))

    def flatten(self, result: Any) -> tuple[torch.Tensor, ...]:
        """The function's ``result`` as a flat tuple of tensors, checked."""
        outputs, spec = tensor_outputs(result, self.name)
        if self.spec is None:
            self.spec = spec
        elif spec != self.spec:
            raise LazyJitError(
                f"{self.name} returned {spec}, where an earlier call with the same signature "
                f"returned {self.spec}; a compiled function's output structure must follow "
                "from its signature"
            )
        return tuple(outputs)


def tensor_outputs(result: Any, name: str) -> tuple[list[torch.Tensor], TreeSpec]:
    """The tensors of ``result`` (a function ``name``'s) and its structure; raises
    :class:`LazyJitError` where it holds anything else."""
    outputs, spec = tree_flatten(result)
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        kinds = sorted({type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)})
        raise LazyJitError(
            f"{name} returned {', '.join(kinds)}; a compiled function must return "
            "tensors, or tuples, lists or dicts of tensors"
        )
    return outputs, spec


@dataclass(eq=False)
class Entry:
    """One compiled signature: the program and what it was compiled against."""

    program: Program
    key: tuple  # the call signature (see lazyjit.signature)
    param_names: tuple[str, ...]
    # (name, weak ref to the unconstrained tensor, constraint, its shape and strides)
    # compiled against.
    param_checks: tuple[tuple[str, weakref.ref, Any, tuple], ...]
    # outputs -> what the function returned (see unflattener)
    unflatten: Callable[[Sequence[torch.Tensor]], Any]
    grad_leaves: tuple[int, ...]
    wrt: tuple[int, ...]  # program inputs to differentiate: params, then grad_leaves
    flat: FlatFunction
    checks_left: int
    backend_name: str
    # How many of the program's outputs are the function's; a guarded trace adds one,
    # whether its checks hold (see lazyjit.guards).
    num_outputs: int
    guard_failures: int = 0
    # Every program of the entry: `program` first, then other specializations for other
    # values of what the function branched on (see lazyjit.guards).
    programs: list[Program] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.programs = [self.program]

    def gradients(self, grads: Sequence[torch.Tensor], num_leaves: int) -> Gradients:
        """``grads`` (w.r.t. :attr:`wrt`: params, then the leaves that require grad) as
        :class:`Gradients` of a call with ``num_leaves`` tensor leaves."""
        num_params = len(self.param_names)
        if len(self.grad_leaves) == num_leaves:  # every leaf (a potential's inputs), or none
            leaf_grads: list[torch.Tensor | None] = grads[num_params:]
        else:
            leaf_grads = [None] * num_leaves
            for i, g in zip(self.grad_leaves, grads[num_params:]):
                leaf_grads[i] = g
        return Gradients(dict(zip(self.param_names, grads)), leaf_grads, self.key)

    def current_params(self) -> list[torch.Tensor] | None:
        """The store's params if they are still the very tensors, constraints and
        layouts compiled against, else ``None``. (The hot path: one loop.)"""
        store = pyro_shim.store_params()
        constraints = pyro_shim.store_constraints()
        params = []
        for name, ref, constraint, layout in self.param_checks:
            param = store.get(name)
            if (
                param is None
                or param is not ref()
                or constraints.get(name) is not constraint
                # `param.data = ...` keeps the tensor and may change its shape, which a
                # program compiled for fixed sizes would not check (see INDUCTOR_CONFIG).
                or (param.shape, param.stride()) != layout
            ):
                return None
            params.append(param)
        return params

    def run_checked(
        self,
        run: Callable[[Program], tuple[Sequence[torch.Tensor], Any]],
        inputs: list[torch.Tensor],
        specialize: Callable[[Entry, list[torch.Tensor]], Program],
    ) -> tuple[Sequence[torch.Tensor], Any]:
        """``run(self.program)`` for an entry whose program is guarded or verified.

        Where a guard fails, the call runs again from the random state it started with:
        on the entry's other specializations (the latest to hold is tried first), else
        on a new one, ``specialize(self, inputs)``, compiled for this call (up to
        :data:`lazyjit.config.MAX_SPECIALIZATIONS`), else eagerly. While the entry has
        ``verify`` checks left, the eager program also runs from that state and must agree.
        """
        restore = rng_snapshot(inputs)
        num = self.num_outputs
        for i, program in enumerate(self.programs):
            if i:
                restore()
            outputs, rest = run(program)
            if len(outputs) == num or outputs[num]:
                if i:
                    self.programs.insert(0, self.programs.pop(i))
                    self.program = program
                break
        else:
            restore()
            program = self._specialize(inputs, specialize)
            outputs, rest = run(program)
        if self.checks_left:
            self.checks_left -= 1
            after = rng_snapshot(inputs)
            restore()
            expected = run(Program(self.flat))
            after()
            try:
                torch.testing.assert_close(
                    tree_flatten((list(outputs[:num]), rest))[0],
                    tree_flatten((list(expected[0]), expected[1]))[0],
                    rtol=1e-4,
                    atol=1e-5,
                    equal_nan=True,
                )
            except AssertionError as e:
                raise LazyJitError(
                    f"{self.flat.name}: the {self.backend_name} program disagrees with eager "
                    "Pyro on the same inputs and seed. Its structure may depend on global "
                    f"state or on tensor values; run it with backend='eager'.\n{e}"
                ) from None
        return outputs, rest

    def _specialize(
        self, inputs: list[torch.Tensor], specialize: Callable[[Entry, list[torch.Tensor]], Program]
    ) -> Program:
        """What runs a call whose values no specialization of the entry was traced for:
        a new specialization, traced on copies of this call's tensors (moving no random
        stream), or the eager program once the entry has its fill."""
        stats = self.flat.stats
        if len(self.programs) < config.MAX_SPECIALIZATIONS:
            program = specialize(self, inputs)
            stats.compilations += 1
            logger.info("lazyjit: %s is specialized for other values", self.flat.name)
            self.programs.insert(0, program)  # an eager fallback too: it holds for any value
            self.program = program
            return program
        stats.guard_failures += 1
        self.guard_failures += 1
        if self.guard_failures == config.MAX_GUARD_FAILURES:
            self.program = Program(self.flat)
            self.programs = [self.program]
            stats.fallbacks += 1
            warn_once(
                self.flat.warned,
                "guards",
                f"{self.flat.name} runs eagerly from now on: the tensor values its compiled "
                f"programs branched on changed in {config.MAX_GUARD_FAILURES} calls",
                StructureWarning,
            )
        return Program(self.flat)


def unflattener(spec: TreeSpec) -> Callable[[Sequence[torch.Tensor]], Any]:
    """What the function returned, from a program's outputs (the function's first, then
    a guarded program's check)."""
    # A tensor or a flat tuple of tensors (the common cases) must not pay for pytree's
    # Python code at every call.
    if spec.is_leaf():
        return operator.itemgetter(0)
    num_outputs = spec.num_leaves
    if spec.type is tuple and all(child.is_leaf() for child in spec.children()):
        return operator.itemgetter(slice(0, num_outputs))
    return lambda outputs: tree_unflatten(list(outputs[:num_outputs]), spec)
