"""``lazyjit.trace``: a lazy, cached compiler for functions that call ``pyro.param``."""

from __future__ import annotations

import contextlib
import logging
import operator
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro import validation_enabled
from pyro.poutine.runtime import _PYRO_PARAM_STORE, _PYRO_STACK
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from . import guards
from .backends import (
    PYRO_LOCK,
    Backend,
    Program,
    copies,
    get_backend,
    gradients,
    keep_random_stream,
)
from .capture import announce_params, find_params, pure_function
from .errors import LazyJitError, LazyJitWarning, StructureError, StructureWarning
from .signature import CallGuard, LRUCache, rebuild, signature

logger = logging.getLogger("lazyjit")

DEFAULT_CACHE_SIZE = 32
# An entry whose value guards fail keeps up to this many programs, each specialized for
# the values its trace saw (the two sides of a branch on a latent's sign, say).
MAX_SPECIALIZATIONS = 4
# An entry whose specializations all failed this many times runs eagerly from then on:
# its compiled programs serve too few of its calls to pay for the checks and the rerun.
MAX_GUARD_FAILURES = 32


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


@dataclass(eq=False)
class _Entry:
    """One compiled signature: the program and what it was compiled against."""

    program: Program
    key: tuple  # the call signature (see lazyjit.signature)
    param_names: tuple[str, ...]
    # (name, weak ref to the unconstrained tensor, constraint, its shape and strides)
    # compiled against.
    param_checks: tuple[tuple[str, weakref.ref, Any, tuple], ...]
    # outputs -> what the function returned (see _unflattener)
    unflatten: Callable[[Sequence[torch.Tensor]], Any]
    grad_leaves: tuple[int, ...]
    wrt: tuple[int, ...]  # program inputs to differentiate: params, then grad_leaves
    flat: Callable[..., tuple[torch.Tensor, ...]]
    checks_left: int
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
        store = _PYRO_PARAM_STORE._params
        constraints = _PYRO_PARAM_STORE._constraints
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


def _unflattener(spec: TreeSpec) -> Callable[[Sequence[torch.Tensor]], Any]:
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


class _Flat:
    """The function a backend compiles: params and tensor leaves in, the function's
    outputs out as a flat tuple of tensors.

    Its first ``num_params`` inputs are params. Unless ``guard`` is false, value reads met
    while a backend traces it are guarded (:mod:`lazyjit.guards`): such a trace returns
    one more output, whether its checks hold, and :attr:`guarded` is set from then on.

    :ivar spec: the outputs' structure, from the first run; every later run must match it.
    """

    def __init__(
        self, pure: Callable, name: str, guard: bool, num_params: int, stats: CompileStats
    ):
        self.pure = pure
        self.name = name
        self.guard = guard
        self.num_params = num_params
        self.stats = stats
        self.spec: TreeSpec | None = None
        self.guarded = False

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
        outputs, spec = tree_flatten(result)
        if not all(isinstance(o, torch.Tensor) for o in outputs):
            kinds = sorted({type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)})
            raise LazyJitError(
                f"{self.name} returned {', '.join(kinds)}; a compiled function must return "
                "tensors, or tuples, lists or dicts of tensors"
            )
        if self.spec is None:
            self.spec = spec
        elif spec != self.spec:
            raise LazyJitError(
                f"{self.name} returned {spec}, where an earlier call with the same signature "
                f"returned {self.spec}; a compiled function's output structure must follow "
                "from its signature"
            )
        return tuple(outputs)


class CompiledFunction:
    """A Pyro function compiled lazily, once per call signature.

    Output type of :func:`trace`. Calling it looks up the signature of the arguments
    (see :mod:`lazyjit.signature`); the first call of a signature finds the params,
    compiles, and caches; later calls run the compiled program on the current params.

    :ivar fn: the wrapped callable.
    :ivar compiled: ``{cache key: Program}``, most recently used last. A TorchScript
        program keeps the ``torch.jit.trace`` artifact in ``.script``; an ``"auto"``
        program (a :class:`lazyjit.backends.TieredProgram`) keeps its tiers in ``.lanes``.
    :ivar compile_time: seconds spent by the most recent compilation, param discovery
        included (``None`` before the first); the total is ``stats.compile_seconds``.
    :ivar stats: a :class:`CompileStats`.
    """

    def __init__(
        self,
        fn: Callable,
        ignore_warnings: bool = False,
        jit_options: dict | None = None,
        backend: str | Backend = "auto",
        *,
        strict: bool = False,
        cache_size: int = DEFAULT_CACHE_SIZE,
        verify: int = 0,
    ):
        if not callable(fn):
            raise TypeError(f"lazyjit.trace expects a callable, got {type(fn).__name__}")
        self.fn = fn
        self.ignore_warnings = ignore_warnings
        self.jit_options = dict(jit_options or {})
        # Pyro's flag to time compilation; lazyjit always times it.
        self.jit_options.pop("time_compilation", None)
        self.backend: Backend = get_backend(backend)
        self.strict = strict
        self.verify = verify
        self.compile_time: float | None = None
        self.stats = CompileStats()
        self._cache = LRUCache(cache_size)
        self._last_call: CallGuard | None = None
        self._lock = threading.RLock()
        self._warned_sites: set[str] = set()

    def __getstate__(self) -> dict:
        # Compiled programs are per process (MCMC worker processes rebuild them lazily).
        state = self.__dict__.copy()
        state["_cache"] = self._cache.max_size
        state["_last_call"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        state["_cache"] = LRUCache(state["_cache"])
        state["_lock"] = threading.RLock()
        self.__dict__.update(state)

    @property
    def compiled(self) -> dict:
        return {key: entry.program for key, entry in self._cache.items()}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        entry, params, leaves, first = self._entry(args, kwargs, grad=False)
        if entry is None:
            return first
        if entry.checks_left or entry.flat.guarded:
            inputs = [*params, *leaves]
            outputs, _ = self._run_checked(entry, lambda program: (program(*inputs), None), inputs)
        else:
            outputs = entry.program(*params, *leaves)
        return entry.unflatten(outputs)

    def value_and_grad(self, *args: Any, **kwargs: Any) -> tuple[Any, Gradients]:
        """Calls the function and differentiates its output (or its first output, if it
        returns a tuple) w.r.t. every param and every tensor argument that requires grad.

        The backend decides how: TorchScript runs autograd over the compiled program;
        a graph-capture backend returns gradients computed inside its graph. Nothing is
        accumulated into ``.grad``; the caller decides what to do with the gradients.
        """
        entry, params, leaves, first = self._entry(args, kwargs, grad=True)
        if entry is None:
            return first
        inputs = [*params, *leaves]
        if entry.checks_left or entry.flat.guarded:
            outputs, grads = self._run_checked(
                entry, lambda program: program.value_and_grad(inputs, entry.wrt), inputs
            )
        else:
            outputs, grads = entry.program.value_and_grad(inputs, entry.wrt)
        return entry.unflatten(outputs), entry.gradients(grads, len(leaves))

    def _run_checked(
        self, entry: _Entry, run: Callable[[Program], tuple[Sequence[torch.Tensor], Any]], inputs
    ) -> tuple[Sequence[torch.Tensor], Any]:
        """``run(entry.program)`` for an entry whose program is guarded or verified.

        Where a guard fails, the call runs again from the random state it started with:
        on the entry's other specializations (the latest to hold is tried first), else
        on a new one compiled for this call (up to :data:`MAX_SPECIALIZATIONS`), else
        eagerly. While the entry has ``verify`` checks left, the eager program also runs
        from that state and must agree.
        """
        restore = guards.rng_snapshot(inputs)
        num = entry.num_outputs
        for i, program in enumerate(entry.programs):
            if i:
                restore()
            outputs, rest = run(program)
            if len(outputs) == num or outputs[num]:
                if i:
                    entry.programs.insert(0, entry.programs.pop(i))
                    entry.program = program
                break
        else:
            restore()
            program = self._specialize(entry, inputs)
            outputs, rest = run(program)
        if entry.checks_left:
            entry.checks_left -= 1
            after = guards.rng_snapshot(inputs)
            restore()
            expected = run(Program(entry.flat))
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
                    f"{self._name}: the {self.backend.name} program disagrees with eager "
                    "Pyro on the same inputs and seed. Its structure may depend on global "
                    f"state or on tensor values; run it with backend='eager'.\n{e}"
                ) from None
        return outputs, rest

    def _specialize(self, entry: _Entry, inputs: list[torch.Tensor]) -> Program:
        """What runs a call whose values no specialization of the entry was traced for:
        a new specialization, traced on copies of this call's tensors (moving no random
        stream), or the eager program once the entry has its fill."""
        if len(entry.programs) < MAX_SPECIALIZATIONS:
            num_params = len(entry.param_names)
            program = self._compile_on_copies(entry.flat, inputs[:num_params], inputs[num_params:])
            self.stats.compilations += 1
            logger.info("lazyjit: %s is specialized for other values", self._name)
            entry.programs.insert(0, program)  # an eager fallback too: it holds for any value
            entry.program = program
            return program
        self.stats.guard_failures += 1
        entry.guard_failures += 1
        if entry.guard_failures == MAX_GUARD_FAILURES:
            entry.program = Program(entry.flat)
            entry.programs = [entry.program]
            self.stats.fallbacks += 1
            self._warn_once(
                "guards",
                f"{self._name} runs eagerly from now on: the tensor values its compiled "
                f"programs branched on changed in {MAX_GUARD_FAILURES} calls",
                StructureWarning,
            )
        return Program(entry.flat)

    def clear(self) -> None:
        """Drops every compiled entry."""
        self._cache.clear()

    def _entry(
        self, args: tuple, kwargs: dict, grad: bool
    ) -> tuple[_Entry | None, list, list, Any]:
        """(the entry of this call's signature, its params, its tensor leaves, None): the
        last call's entry where its guard passes, else the one looked up; where there
        was none, ``(None, [], [], result)``: the call ran eagerly and compiled the entry
        (``grad``: its result is ``value_and_grad``'s)."""
        guard = self._last_call
        if guard is not None:
            leaves = guard.leaves(args) if not kwargs else None
            hit = self._hit(guard.key) if leaves is not None else None
            if hit is not None:
                return (*hit, leaves, None)
        key, leaves, idents = signature(args, kwargs)
        if guard is None or guard.key != key:
            self._last_call = CallGuard.of(args, kwargs, key)
        hit = self._hit(key)
        if hit is None:
            with self._lock, PYRO_LOCK:
                # Another thread may have compiled this signature while we waited.
                hit = self._hit(key)
                if hit is None:
                    return None, [], [], self._compile(key, leaves, idents, args, kwargs, grad)
        return (*hit, leaves, None)

    def _hit(self, key) -> tuple[_Entry, list[torch.Tensor]] | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.param_checks:
            params = entry.current_params()
            if params is None:
                return None
            if _PYRO_STACK:
                announce_params(entry.param_names)
        else:
            params = []  # e.g. a potential energy: no params to check or announce
        self.stats.hits += 1
        return entry, params

    def _compile(self, key, leaves, idents, args: tuple, kwargs: dict, grad: bool) -> Any:
        """Runs the first call of a signature eagerly, finding the params it uses, and
        compiles its entry; returns that call's result (``grad``: ``value_and_grad``'s).

        The first call is the one eager run, with the random draws eager Pyro would make
        (a guide's lazy set-up included): compiling then runs the function on copies of
        the tensor arguments (a function that mutates its inputs mutates them once per
        call, and a cache keyed by tensor identity inside it cannot carry the first
        call's values into the trace), and moves no random stream.
        """
        self.stats.misses += 1
        if key in self._cache:
            self.stats.recompiles += 1
            logger.info("lazyjit: params of %s changed since compiling; recompiling", self._name)
        start = time.perf_counter()
        grad_leaves = tuple(i for i, t in enumerate(leaves) if t.requires_grad)
        with torch.enable_grad() if grad else contextlib.nullcontext():
            param_names, result = find_params(self.fn, args, kwargs)
        params = [_PYRO_PARAM_STORE._params[name] for name in param_names]
        flat = _Flat(
            pure_function(self.fn, key, param_names),
            self._name,
            not self.strict,
            len(param_names),
            self.stats,
        )
        outputs = flat.flatten(result)
        if grad:
            grads = gradients(outputs[0], [*params, *(leaves[i] for i in grad_leaves)])
            outputs = [o.detach() for o in outputs]
        program = self._compile_on_copies(flat, params, leaves)
        seconds = time.perf_counter() - start
        self.compile_time = seconds
        self.stats.compilations += 1
        self.stats.compile_seconds += seconds
        logger.info(
            "lazyjit: compiled %s with %s in %.3f s (%d params, %d tensor inputs)",
            self._name,
            self.backend.name,
            seconds,
            len(params),
            len(leaves),
        )
        entry = _Entry(
            program=program,
            key=key,
            param_names=param_names,
            param_checks=tuple(
                (name, weakref.ref(p), _PYRO_PARAM_STORE._constraints[name], (p.shape, p.stride()))
                for name, p in zip(param_names, params)
            ),
            unflatten=_unflattener(flat.spec),
            grad_leaves=grad_leaves,
            wrt=(*range(len(params)), *(len(params) + i for i in grad_leaves)),
            flat=flat,
            # Checking an eager program (the backend or a fallback) against eager is moot.
            checks_left=0 if type(program) is Program else self.verify,
            num_outputs=flat.spec.num_leaves,
        )
        self.stats.evictions += len(self._cache.put(key, entry, idents))
        if not grad:
            return result
        return entry.unflatten(outputs), entry.gradients(grads, len(leaves))

    def _compile_on_copies(
        self, flat: _Flat, params: Sequence[torch.Tensor], leaves: Sequence[torch.Tensor]
    ) -> Program:
        """The backend's program for ``flat``, compiled on copies of the call's tensors
        (``leaves``) without moving any random stream."""
        with keep_random_stream(leaves):
            return self._compile_program(flat, [*params, *copies(leaves)])

    def _compile_program(self, flat: _Flat, inputs: list[torch.Tensor]) -> Program:
        # Validation checks call .item(), which would bake one outcome into the program.
        try:
            with validation_enabled(False), warnings.catch_warnings():
                if self.ignore_warnings:
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                return self.backend.compile(flat, inputs, self.jit_options)
        except StructureError as e:
            if self.strict:
                raise LazyJitError(
                    f"{self._name} cannot be compiled: {e}. Its structure depends on tensor "
                    "values, so a compiled version could be silently wrong."
                ) from e
            self._warn_once(
                e.site,
                f"{self._name} runs eagerly: its structure depends on a tensor value at "
                f"{e.site} ({e.args[0]}). Pass that value as a non-tensor argument (it "
                "then selects a compiled entry), or wrap the line in "
                "pyro.util.ignore_jit_warnings() if it is static.",
                StructureWarning,
            )
        except LazyJitError:
            raise
        except Exception as e:  # noqa: BLE001 - any backend failure must not break the user's call
            if self.strict:
                raise
            self._warn_once(
                type(e).__name__,
                f"{self._name} runs eagerly: the {self.backend.name} backend failed to "
                f"compile it ({type(e).__name__}: {e})",
                LazyJitWarning,
            )
        self.stats.fallbacks += 1
        return Program(flat)

    def _warn_once(self, site: str, message: str, category: type[Warning]) -> None:
        if site not in self._warned_sites:
            self._warned_sites.add(site)
            warnings.warn(message, category, stacklevel=5)

    @property
    def _name(self) -> str:
        return getattr(self.fn, "__qualname__", None) or type(self.fn).__name__


def trace(
    fn: Callable | None = None,
    *,
    ignore_warnings: bool = False,
    jit_options: dict | None = None,
    backend: str | Backend = "auto",
    strict: bool = False,
    cache_size: int = DEFAULT_CACHE_SIZE,
    verify: int = 0,
) -> CompiledFunction | Callable[[Callable], CompiledFunction]:
    """Lazy replacement for :func:`pyro.ops.jit.trace`.

    Usable as ``@trace``, ``@trace(...)`` or ``trace(fn)``. Compiles ``fn`` on first
    use, once per call signature: the shape, strides, dtype, device and ``requires_grad`` of
    every tensor argument (anywhere in ``args``/``kwargs``, nested in lists, tuples
    and dicts), the value of every other argument, and the grad mode.

    :param fn: the function to compile; it may call ``pyro.param`` and ``pyro.sample``.
    :param ignore_warnings: hide TorchScript's ``TracerWarning``\\ s. A branch on a tensor
        value is still guarded (``docs/reliability.md``).
    :param jit_options: keyword arguments for :func:`torch.jit.trace`
        (``check_trace`` defaults to ``False``).
    :param backend: ``"auto"`` (eager first, then the captured graph on TorchScript,
        inductor in the background once an entry is hot), ``"torchscript"``, ``"eager"``
        (plumbing and cache only), ``"aten"`` (an aten graph run as FX code),
        ``"aten-jit"`` (that graph run by TorchScript) or ``"inductor"`` (that graph
        compiled by inductor), or a
        :class:`lazyjit.backends.Backend` instance (say, an ``AutoBackend`` with another
        ``TierPolicy``); see ``docs/backends.md``.
    :param strict: raise :class:`LazyJitError` instead of falling back to eager when
        compiling fails, and instead of guarding a branch on a tensor value.
    :param cache_size: the most compiled entries kept; the least recently used goes.
    :param verify: check each entry's first ``verify`` calls against eager Pyro on the
        same inputs and RNG state (values and gradients) and raise
        :class:`LazyJitError` on a mismatch. Each checked call also pays an eager run.
    """
    options = dict(
        ignore_warnings=ignore_warnings,
        jit_options=jit_options,
        backend=backend,
        strict=strict,
        cache_size=cache_size,
        verify=verify,
    )
    if fn is None:
        return lambda fn: CompiledFunction(fn, **options)
    return CompiledFunction(fn, **options)
