"""``lazyjit.trace``: a lazy, cached compiler for functions that call ``pyro.param``."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import pyro_shim
from .backends import PYRO_LOCK, Backend, Program, get_backend
from .compiler import compile_on_copies, first_call, function_name
from .config import DEFAULT_CACHE_SIZE
from .entry import CompileStats, Entry, Gradients
from .log import logger
from .params import announce_params, clear_transforms
from .signature import CallGuard, LRUCache, signature

__all__ = ["CompileStats", "CompiledFunction", "Gradients", "Hit", "clear_caches", "trace"]

# Every CompiledFunction alive, for clear_caches().
_LIVE: weakref.WeakSet = weakref.WeakSet()


class Hit(NamedTuple):
    """A call's compiled entry, found by :meth:`CompiledFunction.lookup`: the
    :class:`lazyjit.entry.Entry`, the current params it runs on, and the call's tensors."""

    entry: Entry
    params: list[torch.Tensor]
    leaves: list[torch.Tensor]


class CompiledFunction:
    """A Pyro function compiled lazily, once per call signature.

    Output type of :func:`trace`. Calling it looks up the signature of the arguments
    (see :mod:`lazyjit.signature`); the first call of a signature runs eagerly, finds
    the params and compiles; later calls run the compiled program on the current params.

    :ivar fn: the wrapped callable.
    :ivar backend: the :class:`lazyjit.backends.Backend` that compiles it.
    :ivar cache_size: the most entries kept.
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
        self.backend.prepare()
        self.strict = strict
        self.verify = verify
        self.cache_size = cache_size
        self.compile_time: float | None = None
        self.stats = CompileStats()
        self._cache = LRUCache(cache_size)
        self._last_call: CallGuard | None = None
        self._lock = threading.RLock()
        self.warned: set = set()  # what it warned about, once each
        _LIVE.add(self)

    def __getstate__(self) -> dict:
        # Compiled programs are per process (MCMC worker processes rebuild them lazily).
        state = {**self.__dict__, "_cache": None, "_last_call": None}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        state["_cache"] = LRUCache(state["cache_size"])
        state["_lock"] = threading.RLock()
        self.__dict__.update(state)
        _LIVE.add(self)

    @property
    def compiled(self) -> dict:
        """``{cache key: Program}``, most recently used last. A TorchScript program keeps
        the ``torch.jit.trace`` artifact in ``.script``; an ``"auto"`` program (a
        :class:`lazyjit.backends.TieredProgram`) keeps its tiers in ``.lanes``."""
        return {key: entry.program for key, entry in self._cache.items()}

    @property
    def entries(self) -> list[Entry]:
        """The compiled :class:`lazyjit.entry.Entry` objects, most recently used last."""
        return [entry for _, entry in self._cache.items()]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        entry, params, leaves, first = self._entry(args, kwargs, grad=False)
        if entry is None:
            return first
        if entry.checks_left or entry.flat.guarded:
            inputs = [*params, *leaves]
            outputs, _ = entry.run_checked(
                lambda program: (program(*inputs), None), inputs, self._specialize
            )
        else:
            outputs = entry.program(*params, *leaves)
        return entry.unflatten(outputs)

    def value_and_grad(self, *args: Any, **kwargs: Any) -> tuple[Any, Gradients]:
        """Calls the function and differentiates its output (or its first output, if it
        returns a tuple) w.r.t. every param and every tensor argument that requires grad.

        The backend decides how: TorchScript runs autograd over the compiled program;
        a graph-capture backend returns gradients computed inside its graph. Nothing is
        accumulated into ``.grad``; the caller decides what to do with the gradients.

        Example::

            loss_fn = lazyjit.trace(lambda x: (pyro.param("w", torch.ones(3)) * x).sum())
            loss, grads = loss_fn.value_and_grad(torch.randn(3))
            grads.params["w"]
        """
        entry, params, leaves, first = self._entry(args, kwargs, grad=True)
        if entry is None:
            return first
        inputs = [*params, *leaves]
        if entry.checks_left or entry.flat.guarded:
            outputs, grads = entry.run_checked(
                lambda program: program.value_and_grad(inputs, entry.wrt),
                inputs,
                self._specialize,
            )
        else:
            outputs, grads = entry.program.value_and_grad(inputs, entry.wrt)
        return entry.unflatten(outputs), entry.gradients(grads, len(leaves))

    def lookup(self, *args: Any, **kwargs: Any) -> Hit | None:
        """The compiled entry this call would run, with its params and tensors, or
        ``None`` if the call would compile (nothing runs or compiles here)."""
        key, leaves, _ = signature(args, kwargs)
        hit = self._hit(key)
        return None if hit is None else Hit(*hit, leaves)

    def clear(self) -> None:
        """Drops every compiled entry."""
        self._cache.clear()
        self._last_call = None

    def _entry(self, args: tuple, kwargs: dict, grad: bool) -> tuple[Entry | None, list, list, Any]:
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

    def _hit(self, key) -> tuple[Entry, list[torch.Tensor]] | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.param_checks:
            params = entry.current_params()
            if params is None:
                return None
            if pyro_shim.HANDLER_STACK:
                announce_params(entry.param_names)
        else:
            params = []  # e.g. a potential energy: no params to check or announce
        self.stats.hits += 1
        return entry, params

    def _compile(self, key, leaves, idents, args: tuple, kwargs: dict, grad: bool) -> Any:
        """Runs the first call of a signature eagerly and compiles its entry
        (:func:`lazyjit.compiler.first_call`); returns that call's result (``grad``:
        ``value_and_grad``'s)."""
        self.stats.misses += 1
        if key in self._cache:
            self.stats.recompiles += 1
            logger.info("lazyjit: params of %s changed since compiling; recompiling", self._name)
        entry, result = first_call(self, key, leaves, args, kwargs, grad)
        self.stats.evictions += len(self._cache.put(key, entry, idents))
        return result

    def _specialize(self, entry: Entry, inputs: list[torch.Tensor]) -> Program:
        """A program for ``entry`` specialized for this call's values (see
        :meth:`lazyjit.entry.Entry.run_checked`)."""
        num_params = len(entry.param_names)
        return compile_on_copies(self, entry.flat, inputs[:num_params], inputs[num_params:])

    @property
    def _name(self) -> str:
        return function_name(self.fn)


def clear_caches() -> None:
    """Drops every compiled entry of every :class:`CompiledFunction` (those inside
    lazyjit's ELBOs and MCMC kernels included) and lazyjit's process-wide caches. The next
    call of each signature runs eagerly and compiles again, as a first call does.

    Example: ``lazyjit.clear_caches()`` between benchmark rounds, or to free memory
    after a fit."""
    for compiled in list(_LIVE):
        compiled.clear()
    clear_transforms()


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

    Example::

        @lazyjit.trace
        def log_prob(data):
            loc = pyro.param("loc", torch.zeros(()))
            return dist.Normal(loc, 1.0).log_prob(data).sum()

        log_prob(data)  # eager Pyro, and the entry for this signature is compiled
        log_prob(data)  # the compiled program

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
