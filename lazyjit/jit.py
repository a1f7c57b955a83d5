"""``lazyjit.trace``: a lazy, cached compiler for functions that call ``pyro.param``."""

from __future__ import annotations

import logging
import operator
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pyro import validation_enabled
from pyro.poutine.runtime import _PYRO_PARAM_STORE, _PYRO_STACK
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten

from .backends import Backend, Program, get_backend
from .capture import announce_params, current_params, find_params, pure_function
from .errors import LazyJitError, LazyJitWarning, StructureError, StructureWarning
from .signature import CallGuard, LRUCache, rebuild, signature

logger = logging.getLogger("lazyjit")

DEFAULT_CACHE_SIZE = 32


@dataclass
class CompileStats:
    """Counters of one :class:`CompiledFunction`.

    ``misses`` counts calls that found no usable entry; ``recompiles`` the subset where
    an entry existed but the params it was built for had changed (a cleared or reloaded
    param store); ``fallbacks`` the entries that run eagerly because compiling them
    could not be trusted.
    """

    compilations: int = 0
    hits: int = 0
    misses: int = 0
    recompiles: int = 0
    evictions: int = 0
    fallbacks: int = 0
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
    # A tensor or a flat tuple of tensors (the common cases) must not pay for pytree's
    # Python code at every call.
    if spec.is_leaf():
        return operator.itemgetter(0)
    if spec.type is tuple and all(child.is_leaf() for child in spec.children()):
        return tuple
    return lambda outputs: tree_unflatten(list(outputs), spec)


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
        entry, params, leaves = self._entry(args, kwargs)
        run = entry.program if not entry.checks_left else self._checked(entry, "__call__")
        return entry.unflatten(run(*params, *leaves))

    def value_and_grad(self, *args: Any, **kwargs: Any) -> tuple[Any, Gradients]:
        """Calls the function and differentiates its output (or its first output, if it
        returns a tuple) w.r.t. every param and every tensor argument that requires grad.

        The backend decides how: TorchScript runs autograd over the compiled program;
        a graph-capture backend returns gradients computed inside its graph. Nothing is
        accumulated into ``.grad``; the caller decides what to do with the gradients.
        """
        entry, params, leaves = self._entry(args, kwargs)
        program = entry.program
        run = (
            program.value_and_grad
            if not entry.checks_left
            else self._checked(entry, "value_and_grad")
        )
        outputs, grads = run([*params, *leaves], entry.wrt)
        num_params = len(params)
        if len(entry.grad_leaves) == len(leaves):  # every leaf (a potential's inputs), or none
            leaf_grads: list[torch.Tensor | None] = grads[num_params:]
        else:
            leaf_grads = [None] * len(leaves)
            for i, g in zip(entry.grad_leaves, grads[num_params:]):
                leaf_grads[i] = g
        gradients = Gradients(dict(zip(entry.param_names, grads)), leaf_grads, entry.key)
        return entry.unflatten(outputs), gradients

    def _checked(self, entry: _Entry, name: str) -> Callable:
        """``entry.program``'s method ``name``, made to also run the eager program from
        the same RNG state and compare (while the entry has ``verify`` checks left)."""
        method = getattr(entry.program, name)

        def checked(*args: Any) -> Any:
            before = torch.get_rng_state()
            result = method(*args)
            after = torch.get_rng_state()
            torch.set_rng_state(before)
            expected = getattr(Program(entry.flat), name)(*args)
            torch.set_rng_state(after)
            entry.checks_left -= 1
            try:
                torch.testing.assert_close(
                    tree_flatten(result)[0],
                    tree_flatten(expected)[0],
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
            return result

        return checked

    def clear(self) -> None:
        """Drops every compiled entry."""
        self._cache.clear()

    def _entry(self, args: tuple, kwargs: dict) -> tuple[_Entry, list[torch.Tensor], list]:
        """(the entry of this call's signature, its params, its tensor leaves): the
        last call's entry where its guard passes, else looked up or compiled."""
        guard = self._last_call
        if guard is not None:
            leaves = guard.leaves(args) if not kwargs else None
            hit = self._hit(guard.key) if leaves is not None else None
            if hit is not None:
                return (*hit, leaves)
        key, leaves, idents = signature(args, kwargs)
        entry, params = self._hit(key) or self._lookup(key, leaves, idents)
        if guard is None or guard.key != key:
            self._last_call = CallGuard.of(args, kwargs, key)
        return entry, params, leaves

    def _lookup(self, key, leaves, idents) -> tuple[_Entry, list[torch.Tensor]]:
        """After a miss of :meth:`_hit`: the entry, compiled if need be."""
        with self._lock:
            # Another thread may have compiled this signature while we waited.
            return self._hit(key) or self._compile(key, leaves, idents)

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

    def _compile(self, key, leaves, idents) -> tuple[_Entry, list[torch.Tensor]]:
        self.stats.misses += 1
        if key in self._cache:
            self.stats.recompiles += 1
            logger.info("lazyjit: params of %s changed since compiling; recompiling", self._name)
        start = time.perf_counter()
        # Compiling runs the function more than once: give those runs copies of the
        # tensor arguments, so a function that mutates its inputs mutates them once per call.
        probes = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
        args, kwargs = rebuild(key, probes)
        param_names = find_params(self.fn, args, kwargs)
        params = current_params(param_names)
        pure = pure_function(self.fn, key, param_names)
        spec_box: list[TreeSpec] = []

        def flat(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs, spec = tree_flatten(pure(*inputs))
            if not all(isinstance(o, torch.Tensor) for o in outputs):
                kinds = sorted(
                    {type(o).__name__ for o in outputs if not isinstance(o, torch.Tensor)}
                )
                raise LazyJitError(
                    f"{self._name} returned {', '.join(kinds)}; a compiled function must return "
                    "tensors, or tuples, lists or dicts of tensors"
                )
            spec_box[:] = [spec]
            return tuple(outputs)

        inputs = [*params, *probes]
        program = self._compile_program(flat, inputs)
        if not spec_box:  # the eager fallback has not run the function yet
            flat(*inputs)
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
        grad_leaves = tuple(i for i, t in enumerate(leaves) if t.requires_grad)
        entry = _Entry(
            program=program,
            key=key,
            param_names=param_names,
            param_checks=tuple(
                (name, weakref.ref(p), _PYRO_PARAM_STORE._constraints[name], (p.shape, p.stride()))
                for name, p in zip(param_names, params)
            ),
            unflatten=_unflattener(spec_box[0]),
            grad_leaves=grad_leaves,
            wrt=(*range(len(params)), *(len(params) + i for i in grad_leaves)),
            flat=flat,
            # Checking an eager program (the backend or a fallback) against eager is moot.
            checks_left=0 if type(program) is Program else self.verify,
        )
        self.stats.evictions += len(self._cache.put(key, entry, idents))
        return entry, params

    def _compile_program(self, flat: Callable, inputs: list[torch.Tensor]) -> Program:
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
    :param ignore_warnings: hide TorchScript's ``TracerWarning``\\ s. A warning that the
        function branched on a tensor value still makes that entry run eagerly.
    :param jit_options: keyword arguments for :func:`torch.jit.trace`
        (``check_trace`` defaults to ``False``).
    :param backend: ``"auto"`` (TorchScript first, inductor in the background once an
        entry is hot), ``"torchscript"``, ``"eager"`` (plumbing and cache only), ``"aten"``
        (an aten graph run as FX code), ``"aten-jit"`` (that graph run by
        TorchScript) or ``"inductor"`` (that graph compiled by inductor), or a
        :class:`lazyjit.backends.Backend` instance (say, an ``AutoBackend`` with other
        thresholds); see ``docs/backends.md``.
    :param strict: raise :class:`LazyJitError` instead of falling back to eager when
        compiling fails or the function's structure depends on tensor values.
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
