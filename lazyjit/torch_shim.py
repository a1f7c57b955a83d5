"""Every private torch API lazyjit uses, in one place: a torch upgrade is this file to read.

Each name below says what lazyjit needs it for. Checked against torch
:data:`TESTED_TORCH`; on another version lazyjit warns once at import, and what no
longer exists fails where it is used (a backend then falls back, with a warning).
"""

from __future__ import annotations

import builtins
import contextlib
import getpass
import hashlib
import importlib.util
import inspect
import linecache
import os
import platform
import re
import sys
import tempfile
import types
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import TreeSpec, tree_flatten, tree_unflatten, treespec_loads

from .errors import LazyJitWarning

TESTED_TORCH = "2.13"
if not torch.__version__.startswith(TESTED_TORCH + "."):
    warnings.warn(
        f"lazyjit is tested with torch {TESTED_TORCH}, not {torch.__version__}: the private "
        "torch APIs in lazyjit/torch_shim.py may have changed",
        LazyJitWarning,
        stacklevel=2,
    )

__all__ = [
    "TESTED_TORCH",
    "TorchDispatchMode",
    "TreeSpec",
    "tree_flatten",
    "tree_unflatten",
]

# The recorder is a dispatch mode; pytrees flatten arguments and results.
OpOverload = torch._ops.OpOverload


def op_schema(operator: OpOverload) -> torch._C.FunctionSchema:
    """The operator's schema: its arguments, which of them it writes to or aliases."""
    return operator._schema


def operator_entry(operator: OpOverload) -> Callable:
    """The C++ entry point that ``operator(...)`` calls from Python."""
    return operator._op


# --- TorchScript's tracer -------------------------------------------------------------
# Whether (and which) TorchScript trace runs on this thread; guards and Pyro branch on it.
get_tracing_state: Callable[[], Any] = torch._C._get_tracing_state
set_tracing_state: Callable[[Any], None] = torch._C._set_tracing_state
# The traced value (graph node output) behind a tensor, to walk the graph to its inputs.
value_trace: Callable[[torch.Tensor], Any] = torch._C._get_value_trace


def tracing_state_patch(replacement: Callable[[], Any]) -> list[tuple[Any, str, Any]]:
    """The patch (for :class:`lazyjit.patching.SharedPatch`) that makes every caller of
    ``torch._C._get_tracing_state`` call ``replacement`` instead."""
    return [(torch._C, "_get_tracing_state", replacement)]


def jit_enabled() -> bool:
    """Whether TorchScript is on (``PYTORCH_JIT=0`` turns it off)."""
    return bool(torch.jit._state._enabled)


def trace_to_function(
    fn: Callable, inputs: tuple[torch.Tensor, ...], names: bool, strict: bool, outplace: bool
) -> Any:
    """``torch.jit.trace``'s graph of ``fn`` as a function of a CompilationUnit of its own
    (``torch.jit.trace`` keeps every traced function in one process-wide unit forever).
    ``names=False`` leaves values unnamed: the tracer finds a name by scanning the
    locals of the frame that made the value, quadratic over a generated forward."""
    from torch.jit._trace import _create_interpreter_name_lookup_fn

    lookup = _create_interpreter_name_lookup_fn() if names else _no_name
    graph, _ = torch._C._create_graph_by_tracing(fn, inputs, lookup, strict, outplace)
    return torch._C.CompilationUnit().create_function("lazyjit_trace", graph)


def _no_name(value: torch.Tensor) -> str:
    return ""


@contextlib.contextmanager
def unoptimized_execution() -> Iterator[None]:
    """TorchScript's graph executor without its optimizing passes on this thread (what
    ``torch.jit.optimized_execution(False)`` sets, without its Python overhead)."""
    optimize = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(False)
    try:
        yield
    finally:
        torch._C._set_graph_executor_optimize(optimize)


# --- autograd ---------------------------------------------------------------------------
# The engine's entry point as torch.autograd.grad calls it (None where it moved): that
# function's Python argument handling is a sizeable part of a small compiled step.
run_backward: Callable | None = getattr(
    getattr(torch.autograd.Variable, "_execution_engine", None), "run_backward", None
)
# torch.no_grad() without its context-manager objects, for the hot path.
set_grad_enabled: Callable[[bool], None] = torch._C._set_grad_enabled


def profiler_enabled() -> bool:
    """Whether torch's profiler records (inductor's call wrapper then adds its ranges)."""
    return bool(torch.autograd.profiler._is_profiler_enabled)


# --- torch.fx ---------------------------------------------------------------------------
def forget_fx_sources(keys: Iterable[str]) -> None:
    """Drops generated GraphModule sources from torch.fx's process-wide source cache,
    which never shrinks on its own."""
    from torch.fx.graph_module import _loader

    for key in keys:
        _loader.eval_cache.pop(key, None)
        linecache.cache.pop(key, None)


# --- dynamo's C++ tensor checks (no dynamo import) --------------------------------------
try:
    from torch._C._dynamo.guards import TensorGuards
except ImportError:  # a torch built without dynamo
    TensorGuards = None


# --- inductor ---------------------------------------------------------------------------
def compile_fx(
    graph_module: torch.fx.GraphModule,
    inputs: Sequence[torch.Tensor],
    config: dict[str, Any],
) -> Callable:
    """Inductor's ``compile_fx`` on fake tensors like ``inputs``: it reads only their
    metadata, and the real ones may change meanwhile. The fake mode has a (static) shape
    environment because inductor's on-disk graph cache needs one."""
    from torch._inductor.compile_fx import compile_fx as inductor_compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    fake_mode = FakeTensorMode(shape_env=ShapeEnv())
    examples = [fake_mode.from_tensor(t, static_shapes=True) for t in inputs]
    return inductor_compile_fx(graph_module, examples, config_patches=config)


def inductor_cache_dir() -> str:
    """Inductor's on-disk cache directory, found without importing inductor (whose
    package import costs about 1.3 s): ``$TORCHINDUCTOR_CACHE_DIR``, else
    :func:`inductor_machine_dir` (inductor's rule, ``torch/_inductor/runtime/
    cache_dir_utils.py``)."""
    return os.path.abspath(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or inductor_machine_dir())


def inductor_machine_dir() -> str:
    """``torchinductor_<user>`` in the temporary directory: inductor's default cache, and
    where it keeps its precompiled headers whatever ``$TORCHINDUCTOR_CACHE_DIR`` says."""
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    user = re.sub(r'[\\/:*?"<>|]', "_", user)
    return os.path.join(tempfile.gettempdir(), "torchinductor_" + user)


def import_inductor() -> None:
    """Imports inductor, hiding the TorchScript deprecation warnings of the mkldnn
    modules it defines (nothing of lazyjit uses them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit\.script_method", DeprecationWarning)
        import torch._inductor.compile_fx  # noqa: F401


def warm_inductor() -> None:
    """Pays what inductor's first compile in a process pays before its graph: the
    import, the probe of the CPU's vector instructions and the hash of torch's sources."""
    import_inductor()
    from torch._inductor.codecache import torch_key

    probe_vec_isa()
    torch_key()


def probe_vec_isa() -> None:
    """Inductor's probe of the CPU's vector instructions (a compile and a load of a test
    program for each that the CPU has: 3 to 4 s, or 0.4 s with the compiled program in
    inductor's cache), once per machine. A probe that found every instruction set the
    CPU has usable is recorded in :func:`inductor_machine_dir`, as inductor keeps its
    precompiled headers, under the compiler, its flags, torch and the CPU's sets; with
    that record, inductor is told the sets are usable (``cpp.vec_isa_ok``) and skips its
    probe, even with an empty ``$TORCHINDUCTOR_CACHE_DIR``."""
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    if platform.machine() not in ("x86_64", "AMD64"):
        cpu_vec_isa.pick_vec_isa()
        return
    flags = cpu_vec_isa.x86_isa_checker()
    sets = [
        isa
        for isa in cpu_vec_isa.supported_vec_isa_list
        if all(flag in flags for flag in str(isa).split())
    ]
    fingerprints = [
        cpu_vec_isa._get_isa_dry_compile_fingerprint(i.build_arch_flags()) for i in sets
    ]
    digest = hashlib.sha256(repr((flags, fingerprints)).encode()).hexdigest()
    record = os.path.join(inductor_machine_dir(), "lazyjit", f"vec-isa-{digest}")
    if sets and os.path.exists(record):
        inductor_config.cpp.vec_isa_ok = True
        return
    if sets and len(cpu_vec_isa.valid_vec_isa_list()) == len(sets):
        with contextlib.suppress(OSError):  # a read-only directory: probe again next time
            os.makedirs(os.path.dirname(record), exist_ok=True)
            open(record, "w").close()
    cpu_vec_isa.pick_vec_isa()


def plain_inference_code(compiled: Callable, num_inputs: int, num_outputs: int) -> Any:
    """The generated code inside an inductor inference ``compiled`` with ``num_inputs``
    (constants included) and ``num_outputs``, where aot_autograd's runtime wrappers would
    only pass the inputs on: no input mutation, no output alias, no tensor subclass, no
    effect tokens. ``None`` otherwise. Call it as ``code(list)``; after its first call,
    ``code.current_callable(list)`` skips the metrics bookkeeping around it."""
    from torch._functorch._aot_autograd.schemas import PlainTensorMeta
    from torch._inductor.output_code import OutputCode

    serialize = getattr(compiled, "serialize", None)  # set where aot_autograd caches
    meta = getattr(serialize() if serialize else None, "runtime_metadata", None)
    code = inspect.unwrap(compiled)
    if (
        meta is None
        or not isinstance(code, OutputCode)
        or len(meta.input_info) != num_inputs
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
    return code


# --- inductor's generated code, loaded without inductor --------------------------------
# The module inductor generates for a graph imports much of inductor: loading it costs a
# process about 2 s the first time (the import, a probe compile of the CPU's vector
# instructions, a hash of torch's sources). Its ``call`` needs none of that: the kernels
# compiled for it, allocators from torch._C, and torch's matmuls. A compile worker
# (lazyjit.backends.worker) compiles and describes the module with
# :func:`loadable_output_code`; the user's process loads it with :func:`load_output_code`,
# giving the module stand-ins for what it imports from inductor.
_INDUCTOR_IMPORTS = {
    "torch._inductor.hooks": ("run_intermediate_hooks",),
    "torch._inductor.utils": ("maybe_profile",),
    "torch._inductor.codegen.memory_planning": ("_align",),
    "torch._inductor.async_compile": ("AsyncCompile",),
    "torch._inductor.select_algorithm": ("extern_kernels",),
    "torch._inductor.codecache": ("CppWrapperCodeCache",),
}
# Names that ``call`` must not use: their stand-ins only fail; ``custom_op_wrapper`` is the
# C++ wrapper's way back to Python for an op without a C shim, through inductor.
_UNUSABLE = ("run_intermediate_hooks", "maybe_profile", "align", "custom_op_wrapper")


def cpp_wrapper_calls_python(graph_module: Any) -> bool:
    """Whether inductor's C++ wrapper would call one of ``graph_module``'s aten ops back
    through Python (importing inductor where the code runs): an op that inductor neither
    lowers nor decomposes, and that has no C shim. Mutating ops are skipped: aot_autograd
    turns them into their functional forms first."""
    from torch._inductor.decomposition import select_decomp_table
    from torch._inductor.lowering import fallbacks, lowerings
    from torchgen.aoti.fallback_ops import inductor_fallback_ops

    decompositions = select_decomp_table()
    for node in graph_module.graph.nodes:
        op = node.target
        if node.op != "call_function" or not isinstance(op, OpOverload) or op._schema.is_mutable:
            continue
        generated = op in lowerings and op not in fallbacks
        if not generated and op not in decompositions and str(op) not in inductor_fallback_ops:
            return True
    return False


def loadable_output_code(code: Any) -> dict[str, Any] | None:
    """What :func:`load_output_code` needs to load the module behind ``code`` (what
    :func:`plain_inference_code` returned, in the process that compiled it): its path,
    each kernel's extension module (in the order the module makes them) and the torch
    functions it calls as ``extern_kernels``. A module compiled with ``cpp_wrapper`` has
    one extension module, its C++ wrapper with the kernels inside. ``None`` where the
    module uses more of inductor than the stand-ins cover."""
    from torch._inductor.select_algorithm import extern_kernels

    call = getattr(code, "current_callable", None)
    module_globals = getattr(getattr(call, "__func__", call), "__globals__", {})
    path = module_globals.get("__file__")
    if path is None:
        return None
    with open(path) as f:
        source = f.read()
    body = "\n".join(
        line for line in source.splitlines() if not line.startswith(("from ", "import "))
    )
    if any(re.search(rf"\b{name}\b", body) for name in _UNUSABLE):
        return None
    kernels = []
    made = r"^(\w+) = (async_compile\.\w+|CppWrapperCodeCache\.load_pybinding)\("
    loadable = ("async_compile.cpp_pybinding", "CppWrapperCodeCache.load_pybinding")
    for name, method in re.findall(made, source, re.M):
        kernel = module_globals.get(name)
        module = getattr(kernel, "__self__", None)
        if method not in loadable or not isinstance(module, types.ModuleType):
            return None
        kernels.append((module.__name__, module.__file__, kernel.__name__))
    externs = sorted(set(re.findall(r"\bextern_kernels\.(\w+)", source)))
    if any(getattr(torch, name, None) is not getattr(extern_kernels, name, 0) for name in externs):
        return None
    return {"path": path, "kernels": kernels, "externs": externs}


def load_output_code(loadable: dict[str, Any]) -> Callable[[list], Any]:
    """The ``call`` of the module :func:`loadable_output_code` described, loaded without
    importing inductor. Raises where the module does not load so."""
    kernels = iter([_load_kernel(*kernel) for kernel in loadable["kernels"]])

    class AsyncCompile:
        def cpp_pybinding(self, argtypes: Any, source: str) -> Any:
            return next(kernels)

        def wait(self, scope: Any) -> None:
            pass

    class CppWrapperCodeCache:
        @staticmethod
        def load_pybinding(*args: Any, **kwargs: Any) -> Any:
            return next(kernels)

    def unusable(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("lazyjit loaded this inductor code without inductor")

    stand_ins = {
        "run_intermediate_hooks": unusable,
        "maybe_profile": unusable,
        "_align": unusable,
        "AsyncCompile": AsyncCompile,
        "CppWrapperCodeCache": CppWrapperCodeCache,
        "extern_kernels": types.SimpleNamespace(
            **{name: getattr(torch, name) for name in loadable["externs"]}
        ),
    }
    modules = {
        name: types.SimpleNamespace(**{n: stand_ins[n] for n in names})
        for name, names in _INDUCTOR_IMPORTS.items()
    }

    def import_(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("torch._inductor"):
            return modules[name]  # a KeyError: the module imports more than is stood in
        return builtins.__import__(name, *args, **kwargs)

    path = loadable["path"]
    with open(path) as f:
        source = f.read()
    scope: dict[str, Any] = {
        "__builtins__": {**vars(builtins), "__import__": import_},
        "__name__": "lazyjit_inductor_code",
        "__file__": path,
    }
    exec(compile(source, path, "exec"), scope)
    if next(kernels, None) is not None:
        raise RuntimeError(f"{path} made fewer kernels than it was compiled with")
    return scope["call"]


def _load_kernel(module_name: str, path: str, function: str) -> Callable:
    """A kernel, or a C++ wrapper, that inductor compiled as a Python extension module."""
    # Its init reads where torch's tensor-to-data-pointer function lies from there.
    os.environ["_TORCHINDUCTOR_PYOBJECT_TENSOR_DATA_PTR"] = str(
        torch._C._dynamo.guards._torchinductor_pyobject_tensor_data_ptr
    )
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


def thread_safe_compiles(skip_rng_restore: Callable[[], bool], catch_warnings: Any) -> None:
    """Makes inductor compiles safe on a thread beside the user's loop (see
    ``lazyjit.backends.threads``): dynamo's ``preserve_rng_state`` is skipped where
    ``skip_rng_restore()`` says so, and aot_autograd's graph capture sees ``catch_warnings``
    (a lock-taking replacement) as ``warnings.catch_warnings``. Raises if this torch is
    not laid out as expected."""
    import torch._dynamo.utils as dynamo_utils
    import torch._functorch._aot_autograd.graph_capture_wrappers as graph_capture
    import torch._functorch.aot_autograd as aot_autograd

    import_inductor()
    original = dynamo_utils.preserve_rng_state
    if aot_autograd.preserve_rng_state is not original or graph_capture.warnings is not warnings:
        raise RuntimeError("this torch's compiler is not laid out as lazyjit expects")

    @contextlib.contextmanager
    def preserve_rng_state() -> Iterator[None]:
        if skip_rng_restore():
            yield
        else:
            with original():
                yield

    dynamo_utils.preserve_rng_state = aot_autograd.preserve_rng_state = preserve_rng_state
    graph_capture.warnings = _WarningsModule(catch_warnings)


class _WarningsModule:
    """The ``warnings`` module with another ``catch_warnings``."""

    def __init__(self, catch_warnings: Any):
        self.catch_warnings = catch_warnings

    def __getattr__(self, name: str) -> Any:
        return getattr(warnings, name)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Ops run here are not recorded by the TorchScript trace running on this thread:
    the tensors they make are constants of the trace."""
    tracing = get_tracing_state()
    set_tracing_state(None)
    try:
        yield
    finally:
        set_tracing_state(tracing)


# Copies many tensors in one call: the fused SVI step writes its results back with it.
foreach_copy_: Callable[..., None] = torch._foreach_copy_


# --- torch.optim -----------------------------------------------------------------------
# ``torch._disable_dynamo`` keeps its wrapper's dynamo-disabled function under this name
# on the wrapped function, and imports torch._dynamo to make it on the first call.
_DYNAMO_DISABLE = "__dynamo_disable"


@contextlib.contextmanager
def optimizers_without_dynamo() -> Iterator[None]:
    """Torch optimizers built here do not import ``torch._dynamo`` (about a second on a
    small machine, most of a short run's setup).

    ``Optimizer.add_param_group`` is wrapped by ``torch._disable_dynamo``, which imports
    dynamo on its first call to keep it from tracing the function. While dynamo is not
    imported nothing can be tracing, so the wrapper may call the function as it is; its
    own cache slot holds the plain function for that time and is emptied after.
    """
    fn = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if "torch._dynamo" in sys.modules or fn is None or hasattr(fn, _DYNAMO_DISABLE):
        yield
        return
    setattr(fn, _DYNAMO_DISABLE, fn)
    try:
        yield
    finally:
        if getattr(fn, _DYNAMO_DISABLE, None) is fn:
            delattr(fn, _DYNAMO_DISABLE)


# --- AOTInductor and PT2 archives (lazyjit.export, lazyjit.load) ------------------------
def aoti_package(
    program: torch.export.ExportedProgram,
    path: str,
    config: dict[str, Any],
    extra_files: dict[str, str],
) -> None:
    """Compiles ``program`` with AOTInductor and writes one PT2 archive at ``path`` that
    holds the compiled model, the program itself (for ``torch.export.load``) and
    ``extra_files``: ``torch._inductor.aoti_compile_and_package`` keeps only the first."""
    import torch._inductor
    from torch.export.pt2_archive._package import package_pt2

    args, kwargs = program.example_inputs
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*torch\.jit\.script_method", DeprecationWarning)
        # torch's own pickling of its pytree specs, not lazyjit's use of them.
        warnings.filterwarnings("ignore", r".*LeafSpec", FutureWarning)
        files = torch._inductor.aot_compile(
            program.module(), args, kwargs, options={**config, "aot_inductor.package": True}
        )
    package_pt2(path, exported_programs=program, aoti_files=files, extra_files=extra_files)


def aoti_load_package(path: str) -> Callable[..., Any]:
    """AOTInductor's compiled model in the archive at ``path``, callable as the program
    was. ``torch._inductor.aoti_load_package`` would import inductor and deserialize the
    program beside the model, seconds in a fresh process, and read the call's structure
    anew at every call."""
    loader = torch._C._aoti.AOTIModelPackageLoader(path, "model", False, 1, -1)
    out_spec = treespec_loads(loader.get_call_spec()[1])

    def run(*inputs: Any) -> Any:
        flat = [x for x in tree_flatten(inputs)[0] if isinstance(x, torch.Tensor)]
        return tree_unflatten(loader.boxed_run(flat), out_spec)

    return run
