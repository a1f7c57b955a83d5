"""How a call signature's entry is made: the first call runs eagerly (finding the params
it uses), then the backend compiles on copies of the call's tensors, moving no random
stream. A backend that fails falls back to eager Pyro, with one warning per cause."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from pyro import validation_enabled

from . import pyro_shim
from .backends import Backend, Program
from .entry import CompileStats, Entry, FlatFunction, unflattener
from .errors import LazyJitError, LazyJitWarning, StructureError, StructureWarning, warn_once
from .log import Stopwatch
from .params import find_params, pure_function
from .tensors import copies, gradients, keep_random_stream


class Options(Protocol):
    """What compiling needs of a :class:`lazyjit.CompiledFunction`."""

    fn: Any
    backend: Backend
    jit_options: dict
    strict: bool
    ignore_warnings: bool
    verify: int
    stats: CompileStats
    compile_time: float | None
    warned: set


def first_call(
    options: Options, key: tuple, leaves: list, args: tuple, kwargs: dict, grad: bool
) -> tuple[Entry, Any]:
    """Runs the first call of a signature eagerly, finding the params it uses, and
    compiles its entry: (the entry, that call's result; ``grad``: ``value_and_grad``'s).

    The first call is the one eager run, with the random draws eager Pyro would make
    (a guide's lazy set-up included): compiling then runs the function on copies of the
    tensor arguments (a function that mutates its inputs mutates them once per call, and
    a cache keyed by tensor identity inside it cannot carry the first call's values into
    the trace), and moves no random stream.
    """
    fn_name = function_name(options.fn)
    clock = Stopwatch()
    grad_leaves = tuple(i for i, t in enumerate(leaves) if t.requires_grad)
    with torch.enable_grad() if grad else contextlib.nullcontext():
        param_names, result = find_params(options.fn, args, kwargs)
    store = pyro_shim.store_params()
    params = [store[name] for name in param_names]
    flat = FlatFunction(
        pure_function(options.fn, key, param_names),
        fn_name,
        not options.strict,
        len(param_names),
        options.stats,
        options.warned,
    )
    outputs = flat.flatten(result)
    if grad:
        grads = gradients(outputs[0], [*params, *(leaves[i] for i in grad_leaves)])
        outputs = [o.detach() for o in outputs]
    program = compile_on_copies(options, flat, params, leaves)
    options.compile_time = clock.done(
        options.stats.add_compile_seconds,
        "lazyjit: compiled %s with %s (%d params, %d tensor inputs) in %.3f s",
        fn_name,
        options.backend.name,
        len(params),
        len(leaves),
    )
    options.stats.compilations += 1
    constraints = pyro_shim.store_constraints()
    entry = Entry(
        program=program,
        key=key,
        param_names=param_names,
        param_checks=tuple(
            (name, weakref.ref(p), constraints[name], (p.shape, p.stride()))
            for name, p in zip(param_names, params)
        ),
        unflatten=unflattener(flat.spec),
        grad_leaves=grad_leaves,
        wrt=(*range(len(params)), *(len(params) + i for i in grad_leaves)),
        flat=flat,
        # Checking an eager program (the backend or a fallback) against eager is moot.
        checks_left=0 if program.runs_eagerly else options.verify,
        backend_name=options.backend.name,
        num_outputs=flat.spec.num_leaves,
    )
    if not grad:
        return entry, result
    return entry, (entry.unflatten(outputs), entry.gradients(grads, len(leaves)))


def compile_on_copies(
    options: Options,
    flat: FlatFunction,
    params: Sequence[torch.Tensor],
    leaves: Sequence[torch.Tensor],
) -> Program:
    """The backend's program for ``flat``, compiled on copies of the call's tensors
    (``leaves``) without moving any random stream."""
    with keep_random_stream(leaves):
        return _compile_program(options, flat, [*params, *copies(leaves)])


def _compile_program(options: Options, flat: FlatFunction, inputs: list[torch.Tensor]) -> Program:
    # Validation checks call .item(), which would bake one outcome into the program.
    try:
        with validation_enabled(False), warnings.catch_warnings():
            if options.ignore_warnings:
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            return options.backend.compile(flat, inputs, options.jit_options)
    except StructureError as e:
        if options.strict:
            raise LazyJitError(
                f"{function_name(options.fn)} cannot be compiled: {e}. Its structure depends on tensor "
                "values, so a compiled version could be silently wrong."
            ) from e
        warn_once(
            options.warned,
            e.site,
            f"{function_name(options.fn)} runs eagerly: its structure depends on a tensor value at "
            f"{e.site} ({e.args[0]}). Pass that value as a non-tensor argument (it "
            "then selects a compiled entry), or wrap the line in "
            "pyro.util.ignore_jit_warnings() if it is static.",
            StructureWarning,
        )
    except LazyJitError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend failure must not break the user's call
        if options.strict:
            raise
        warn_once(
            options.warned,
            type(e).__name__,
            f"{function_name(options.fn)} runs eagerly: the {options.backend.name} backend failed to "
            f"compile it ({type(e).__name__}: {e})",
            LazyJitWarning,
        )
    options.stats.fallbacks += 1
    return Program(flat)


def function_name(fn: Any) -> str:
    """How lazyjit names a compiled function in its messages."""
    return getattr(fn, "__qualname__", None) or type(fn).__name__
