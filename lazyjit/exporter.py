"""``lazyjit.export``: a Pyro function, for one call signature, saved as a file that
serves without Pyro (a ``torch.export`` program, compiled ahead of time if asked).

The function is made pure the way a compiled entry is (:mod:`lazyjit.params`): its
params become tensors the artifact holds (``params="bake"``) or takes by name
(``params="inputs"``), and ``torch.export`` traces it in its non-strict mode, which runs
Pyro's Python as it is, on tensors whose chosen sizes are symbolic.
"""

from __future__ import annotations

import os
import sysconfig
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import torch
from pyro.poutine.messenger import Messenger

from . import config, pyro_shim, torch_shim
from .artifact import META_FILE, Artifact, ArtifactInfo, load
from .compiler import function_name
from .entry import tensor_outputs
from .errors import LAZYJIT_DIR, LazyJitError, StructureError, error_site
from .graph.capture import draws
from .jit import CompiledFunction
from .params import find_params, pure_function
from .signature import signature
from .tensors import keep_random_stream

PARAM_MODES = ("bake", "inputs")


def export(
    fn: Callable | CompiledFunction,
    args: tuple,
    kwargs: dict | None = None,
    *,
    path: str | os.PathLike[str],
    dynamic: Mapping[int | str, Mapping[int, str]] | None = None,
    params: str = "bake",
    aot: bool = False,
) -> Artifact:
    """Saves ``fn`` for the signature of ``fn(*args, **kwargs)`` at ``path`` (a ``.pt2``
    PT2 archive) and returns it loaded (:func:`lazyjit.load` loads it elsewhere).

    The artifact takes the tensor arguments of that call, in the order they appear in
    ``args`` and then ``kwargs`` (the other arguments are fixed), and returns what ``fn``
    returns: tensors, or tuples, lists or dicts of tensors. A random program (a guide, a
    posterior predictive) draws what eager Pyro draws from the same random state.

    Example::

        predictive = lazyjit.export(
            predict, (x,), path="predictive.pt2", dynamic={0: {0: "batch"}}
        )
        predictive(x_new, seed=0)  # any batch size

    :param fn: a function that may call ``pyro.param`` and ``pyro.sample``, or a
        :class:`CompiledFunction` (its function is exported).
    :param args: the example call's positional arguments.
    :param kwargs: its keyword arguments.
    :param path: where to write the artifact; it must end in ``.pt2``.
    :param dynamic: the sizes that may vary between calls: ``{argument: {dimension:
        name}}``, where an argument is a position in ``args`` or a name in ``kwargs``
        and must be a tensor; one name used twice is one size. The others are fixed.
    :param params: ``"bake"``: the params' present values are part of the artifact;
        ``"inputs"``: a call passes them (unconstrained, by name: ``params=`` of
        :class:`Artifact`).
    :param aot: also compile the program with AOTInductor (C++ for this machine's CPU, or
        its GPU), which the artifact then runs.
    :raises StructureError: where the function's structure depends on tensor values (a
        branch on one, a size read from one); the message names the line and Pyro site.
    :raises LazyJitError: for a non-tensor output, a size in ``dynamic`` that the
        function fixes, or anything else ``torch.export`` cannot take.
    """
    if params not in PARAM_MODES:
        raise ValueError(f"params must be one of {PARAM_MODES}, got {params!r}")
    path = os.fspath(path)
    if not path.endswith(".pt2"):
        raise ValueError(f"path must end in .pt2, got {path!r}")
    if isinstance(fn, CompiledFunction):
        fn = fn.fn
    kwargs = dict(kwargs or {})
    name = function_name(fn)
    key, tensors, _ = signature(args, kwargs)
    dims = _dynamic_dims(dynamic or {}, args, kwargs, tensors)
    tracker = _SiteTracker()

    def tracked(*args: Any, **kwargs: Any) -> Any:
        with tracker:
            return fn(*args, **kwargs)

    with keep_random_stream(tensors):
        param_names, result = find_params(fn, args, kwargs)
        if not tensor_outputs(result, name)[0]:
            raise LazyJitError(f"{name} returns no tensor: there is nothing to export")
        store = pyro_shim.store_params()
        values = [store[n].detach().clone() for n in param_names]
        program = _Program(pure_function(tracked, key, param_names), param_names, values, params)
        exported = _export(program, tensors, values, params, dims, name, tracker)
    info = ArtifactInfo(
        function=name,
        num_tensors=len(tensors),
        params=params,
        param_names=param_names,
        dynamic={i: {d: n.__name__ for d, n in spec.items()} for i, spec in dims.items()},
        random=_draws(exported),
        aot=aot,
    )
    extra = {META_FILE: info.to_json()}
    if aot:
        torch_shim.aoti_package(exported, path, _aot_config(), extra)
    else:
        torch.export.save(exported, path, extra_files=extra)
    return load(path)


class _Program(torch.nn.Module):
    """The pure function as ``torch.export`` takes it: ``forward(*tensors)``, or
    ``forward(*tensors, params_by_name)`` where the params are inputs."""

    def __init__(self, pure: Callable, names: tuple[str, ...], values: list, mode: str):
        super().__init__()
        self.pure = pure
        self.names = names
        self.baked = mode == "bake"
        if self.baked:
            for i, value in enumerate(values):
                self.register_buffer(f"param_{i}", value)

    def forward(self, *inputs: Any) -> Any:
        if self.baked:
            params = [getattr(self, f"param_{i}") for i in range(len(self.names))]
            return self.pure(*params, *inputs)
        *tensors, by_name = inputs
        return self.pure(*(by_name[n] for n in self.names), *tensors)


class _SiteTracker(Messenger):
    """Remembers the last Pyro site the function reached, to name it if export fails."""

    last: str | None = None

    def _process_message(self, msg: dict) -> None:
        self.last = msg["name"]

    def where(self) -> str:
        return "before any Pyro site" if self.last is None else f"after Pyro site {self.last!r}"


def _export(
    program: _Program,
    tensors: list[torch.Tensor],
    values: list[torch.Tensor],
    mode: str,
    dims: dict[int, dict[int, torch.export.Dim]],
    name: str,
    tracker: _SiteTracker,
) -> torch.export.ExportedProgram:
    inputs = tuple(tensors)
    shapes: tuple = tuple(dims.get(i) for i in range(len(tensors)))
    if mode == "inputs":
        inputs += (dict(zip(program.names, values)),)
        shapes += ({n: None for n in program.names},)
    # Here rather than at the top: it imports sympy, and this module loads with every
    # Pyro-facing name, for users who never export too.
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    # Validation reads values (a support check, say), which a traced program cannot. With
    # grad off throughout, a `torch.no_grad()` block inside (Predictive has them) is no
    # grad-mode switch: torch 2.13 saves such a switch as a subgraph it cannot load back.
    with pyro.validation_enabled(False), torch.no_grad():
        try:
            return torch.export.export(
                program, inputs, dynamic_shapes={"inputs": shapes} if dims else None, strict=False
            )
        except GuardOnDataDependentSymNode as exc:
            raise StructureError(
                f"{name} cannot be exported: its structure depends on a tensor's value "
                f"({tracker.where()})",
                # The user's statement: the innermost frame outside the libraries.
                error_site(exc, lambda f: f.startswith(_LIBRARY_DIRS)),
            ) from exc
        except Exception as exc:  # torch.export's errors have no common class
            raise LazyJitError(_export_failure(name, exc, dims, tracker)) from exc


def _export_failure(name: str, exc: Exception, dims: dict, tracker: _SiteTracker) -> str:
    message = str(exc).split("\n\nThe error above occurred", 1)[0].strip()
    if dims and "Constraints violated" in message:
        return (
            f"{name} cannot be exported with the sizes in dynamic= free to vary: the function "
            f"fixes some of them ({tracker.where()}).\n{message}"
        )
    return f"{name} cannot be exported ({tracker.where()}): {message}"


def _dynamic_dims(
    dynamic: Mapping[int | str, Mapping[int, str]],
    args: tuple,
    kwargs: dict,
    tensors: list[torch.Tensor],
) -> dict[int, dict[int, torch.export.Dim]]:
    """``dynamic`` as ``{tensor input index: {dimension: Dim}}``, checked."""
    named: dict[str, torch.export.Dim] = {}
    dims: dict[int, dict[int, torch.export.Dim]] = {}
    for argument, spec in dynamic.items():
        in_args = isinstance(argument, int) and 0 <= argument < len(args)
        if not in_args and argument not in kwargs:
            raise ValueError(f"dynamic names argument {argument!r}, which the call does not have")
        value = args[argument] if in_args else kwargs[argument]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"dynamic names argument {argument!r}, which is not a tensor")
        index = next(i for i, t in enumerate(tensors) if t is value)
        for dim, dim_name in spec.items():
            if not -value.dim() <= dim < value.dim():
                raise ValueError(
                    f"dynamic names dimension {dim} of argument {argument!r}, "
                    f"which has {value.dim()}"
                )
            if value.shape[dim] < 2:
                # torch.export takes a size of 0 or 1 for a fixed one (broadcasting).
                raise ValueError(
                    f"dynamic names dimension {dim} of argument {argument!r}, whose example "
                    f"size is {value.shape[dim]}: export with an example size of 2 or more"
                )
            dims.setdefault(index, {})[dim % value.dim()] = named.setdefault(
                dim_name, torch.export.Dim(dim_name)
            )
    return dims


def _draws(exported: torch.export.ExportedProgram) -> bool:
    """Whether the program has a random op (code run with grad off is a submodule)."""
    return any(
        draws(node)
        for module in exported.graph_module.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
    )


def _aot_config() -> dict[str, Any]:
    # Unlike lazyjit's own compiles, a served artifact meets inputs that nothing else has
    # checked: keep inductor's checks of their sizes.
    return {**config.INDUCTOR_CONFIG, "size_asserts": True}


_LIBRARY_DIRS = tuple(os.path.dirname(module.__file__) + os.sep for module in (torch, pyro)) + (
    LAZYJIT_DIR,
    sysconfig.get_paths()["stdlib"] + os.sep,
    "<",  # code made at run time (FX's, a lambda's)
)
