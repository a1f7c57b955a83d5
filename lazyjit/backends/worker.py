"""The compile worker: a process of its own in which inductor compiles ``"auto"``'s hot
graphs.

On a thread of the user's process, a compile holds the GIL for most of its run, and the
user's loop slows to a crawl meanwhile; and the first inductor compile in a process pays
for loading inductor itself (its import, a probe compile of the CPU's vector
instructions, a hash of torch's sources) before its graph. The worker pays both on a CPU
of its own. It compiles with the user's process's settings, so it fills inductor's
on-disk cache for it too, and sends back where the generated code lies; the user's
process loads that code without importing inductor (``torch_shim.load_output_code``), and
records where it lies, so that a later run loads it when its lane is hot without asking
(:func:`remembered_path`).
What cannot be handed over so (a training compile, code that uses more of inductor) the
user's process compiles itself, as it would without a worker.

The worker starts when a function is wrapped for ``"auto"`` (``AutoBackend.prepare``),
so that its own start overlaps the user's setup and the calls before a lane is hot:
forked from the user's process where that is safe (:func:`can_fork`), which spares it
torch's import, else as a new interpreter. It is killed when the user's process exits
(a compile in flight is of no use then).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import torch
from torch.fx import GraphModule
from torch.fx.node import map_aggregate, map_arg

from .. import __version__, config, torch_shim
from ..graph.capture import Runner, constants
from ..log import logger
from ..torch_shim import OpOverload
from .inductor import inductor_settings


class WorkerLost(Exception):
    """The worker cannot take a compile (it is gone or never started, or the graph does
    not pickle): compile in this process instead."""


class CompileWorker:
    """The one compile worker process of this process, started on first need."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | _Forked | None = None
        self._lock = threading.Lock()
        self.lost: str | None = None  # why the worker is gone, once it is
        affinity = getattr(os, "sched_getaffinity", None)  # not on macOS
        self._cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
        self._pid = os.getpid()
        self.closed = False

    def _own(self) -> None:
        """In a forked child, forgets its parent's worker (writing into its parent's pipe
        would interleave two processes' jobs): the child starts one of its own."""
        if os.getpid() != self._pid:
            self._pid, self._process, self.lost, self.closed = os.getpid(), None, None, False
            self._lock = threading.Lock()

    def usable(self) -> bool:
        """Whether compiles should go to the worker: it is enabled
        (:data:`lazyjit.config.COMPILE_WORKER`), not lost, and this process may use two
        CPUs (on one, the worker would only take the loop's)."""
        self._own()
        return config.COMPILE_WORKER and self.lost is None and self._cpus > 1

    def start(self) -> None:
        """Starts the worker unless it runs already."""
        self._own()
        if self._process is not None:
            # Without the lock: a compile holds it until the worker answers, and a new
            # ELBO or trace built meanwhile must not wait for that.
            return
        with self._lock:
            if self._process is not None or not self.usable():
                return
            forked = can_fork()
            try:
                self._process = _Forked() if forked else _spawn()
            except OSError as e:
                self.lost = f"it did not start ({e})"
                return
        logger.info(
            "lazyjit: started a compile worker (process %d, %s)",
            self._process.pid,
            "forked" if forked else "a new interpreter",
        )

    def close(self) -> None:
        """Ends the worker; compiles go to this process from now on, and one waiting for
        the worker raises :class:`WorkerLost`."""
        self._own()  # a forked child's exit must not end its parent's worker
        process, self._process = self._process, None
        self.lost = "it was closed"
        self.closed = True
        if process is not None:
            process.kill()

    def compile(
        self, graph_module: GraphModule, inputs: Sequence[torch.Tensor], settings: dict[str, Any]
    ) -> Runner | None:
        """``graph_module``'s inference code compiled by inductor in the worker for
        inputs like ``inputs``, with :data:`lazyjit.config.INDUCTOR_CONFIG` and
        ``settings``; ``None`` where it cannot be handed over. Code that a worker compiled
        for the same job before, in this process or an earlier one, is loaded from where
        it lies (:func:`recall`) and the worker is not asked. Raises what inductor raised,
        or :class:`WorkerLost`."""
        job = make_job(graph_module, inputs, settings)
        try:
            path = remembered_path(job)
        except Exception as e:  # noqa: BLE001 - whatever the graph holds that does not pickle
            raise WorkerLost(f"the graph does not pickle ({type(e).__name__}: {e})") from e
        call = recall(path)
        if call is None:
            loadable = self._ask(job)
            call = None if loadable is None else _load(loadable)
            if call is None:
                return None
            remember(path, loadable)
        held = constants(graph_module)
        return lambda *inputs: call([*held, *inputs])

    def _ask(self, job: tuple) -> dict[str, Any] | None:
        """The worker's answer to ``job`` (:func:`make_job`): what loads its code, or
        ``None``."""
        try:
            sent = pickle.dumps(job)
        except Exception as e:  # noqa: BLE001 - whatever the graph holds that does not pickle
            raise WorkerLost(f"the graph does not pickle ({type(e).__name__}: {e})") from e
        self.start()
        with self._lock:
            process = self._process
            if process is None:
                raise WorkerLost(self.lost or "no worker")
            try:
                process.stdin.write(sent)
                process.stdin.flush()
                kind, value = pickle.load(process.stdout)
            except (OSError, EOFError, pickle.UnpicklingError) as e:
                if self._process is process:
                    self.lost = f"it exited ({type(e).__name__}: {e})"
                    self._process = None
                raise WorkerLost(self.lost) from e
        if kind == "failed":
            raise RuntimeError(value)
        return value


def can_fork() -> bool:
    """Whether the worker may be forked from this process, torch imported already, instead
    of started as a new interpreter that imports torch again (2 to 3 s before it can
    compile): on Linux, with no other thread running (a lock one held would stay held in
    the child) and CUDA not initialized (a forked child cannot use it)."""
    return (
        sys.platform == "linux"
        and threading.active_count() == 1
        and not torch.cuda.is_initialized()
    )


def _spawn() -> subprocess.Popen:
    """The worker as a new interpreter, with this process's ``sys.path``."""
    path = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen(
        [sys.executable, "-c", "from lazyjit.backends.worker import main; main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )


class _Forked:
    """The worker forked from this process, with what ``subprocess.Popen`` gives of a
    spawned one: ``pid``, the pipes ``stdin`` (jobs) and ``stdout`` (replies), ``kill``
    and ``wait``."""

    def __init__(self) -> None:
        jobs_read, jobs_write = os.pipe()
        replies_read, replies_write = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # else the child would write them again
            with contextlib.suppress(Exception):
                stream.flush()
        self.pid = os.fork()
        if self.pid == 0:
            status = 1
            try:
                os.close(jobs_write)
                os.close(replies_read)
                gc.freeze()  # a collection then copies none of the parent's pages
                main(os.fdopen(jobs_read, "rb"), os.fdopen(replies_write, "wb"))
                status = 0
            finally:
                os._exit(status)  # never the parent's exit handlers, never its code after
        os.close(jobs_read)
        os.close(replies_write)
        self.stdin = os.fdopen(jobs_write, "wb")
        self.stdout = os.fdopen(replies_read, "rb")

    def kill(self) -> None:
        """Ends the worker."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def wait(self) -> None:
        """Waits for the worker to have ended."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def make_job(
    graph_module: GraphModule, inputs: Sequence[torch.Tensor], settings: dict[str, Any]
) -> tuple:
    """What the worker compiles (:func:`compile_loadable`'s arguments): ``graph_module``
    packed (:func:`pack`), the shapes, strides, dtypes and devices of ``inputs``, and
    :data:`lazyjit.config.INDUCTOR_CONFIG` with ``settings``."""
    return pack(graph_module), [_meta(t) for t in inputs], {**config.INDUCTOR_CONFIG, **settings}


def _load(loadable: dict[str, Any]) -> Callable[[list], Any] | None:
    """The code that ``loadable`` describes, loaded here; ``None`` (logged) where it does
    not load without inductor: this process compiles that graph itself."""
    try:
        return torch_shim.load_output_code(loadable)
    except Exception as e:  # noqa: BLE001 - this process compiles it instead
        logger.info("lazyjit: the worker's code did not load here (%s: %s)", type(e).__name__, e)
        return None


# --- The worker's code, remembered across processes ---------------------------------------
# Inductor's own cache would give the same code back, but only to a process that imported
# inductor: the worker, which takes seconds to start. An index from each job to what the
# worker answered lets the next run load the code when its lane is hot, without asking.


def remembered_path(job: tuple) -> str:
    """Where the worker's answer to ``job`` (packed graph, input metadata, settings) is
    remembered: in inductor's cache directory, so that emptying that cache forgets it too,
    under a hash of the job and of what else the code depends on (torch, Python, lazyjit,
    inductor's settings from the environment)."""
    (nodes, parameters, buffers), metas, settings = job
    held = {**parameters, **buffers}
    environment = sorted((k, v) for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR_"))
    digest = hashlib.sha256()
    # A pickled tensor names its storage by address: constants go in by value instead.
    described = (nodes, [(name, _meta(t)) for name, t in held.items()], metas, settings)
    digest.update(pickle.dumps((torch.__version__, sys.version, __version__, environment)))
    digest.update(pickle.dumps(described))
    for t in held.values():
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return os.path.join(torch_shim.inductor_cache_dir(), "lazyjit", digest.hexdigest() + ".pkl")


def _meta(t: torch.Tensor) -> tuple:
    """What inductor's code is compiled for of a tensor."""
    return tuple(t.shape), t.stride(), t.dtype, t.device


def recall(path: str) -> Callable[[list], Any] | None:
    """The code remembered at ``path``, loaded; ``None`` where there is none, or where it
    does not load (its files were removed from inductor's cache): then it is forgotten."""
    try:
        with open(path, "rb") as f:
            loadable = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: compile again
        logger.info("lazyjit: %s is unreadable (%s: %s)", path, type(e).__name__, e)
        loadable = None
    call = None if loadable is None else _load(loadable)
    if call is None:
        with contextlib.suppress(OSError):
            os.remove(path)
        return None
    logger.info("lazyjit: loaded a graph's inductor code that a worker compiled before")
    return call


def remember(path: str, loadable: dict[str, Any]) -> None:
    """Writes ``loadable`` at ``path`` whole or not at all (processes may share it)."""
    partial = f"{path}.{os.getpid()}.{threading.get_ident()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(partial, "wb") as f:
            pickle.dump(loadable, f)
        os.replace(partial, path)
    except OSError as e:  # a read-only cache: the next run asks the worker again
        logger.info("lazyjit: could not remember a graph's code at %s (%s)", path, e)


WORKER = CompileWorker()


@atexit.register  # before the compiler thread's own exit handler, registered earlier
def _close_worker() -> None:
    # A compile in flight in the worker is of no use to a process that exits: end it, so
    # that the compiler thread waiting for it does not hold up the exit.
    WORKER.close()


@dataclasses.dataclass(frozen=True)
class _Ref:
    """A node of a packed graph, by name (a tuple would be mapped into)."""

    name: str


@dataclasses.dataclass(frozen=True)
class _Op:
    """An aten operator, by name (operators do not pickle)."""

    name: str  # as OpOverload.name() gives it: "aten::add.Tensor"

    def resolve(self) -> Any:
        namespace, _, qualified = self.name.partition("::")
        name, _, overload = qualified.partition(".")
        return getattr(getattr(getattr(torch.ops, namespace), name), overload or "default")


def pack(graph_module: GraphModule) -> tuple:
    """``graph_module`` as picklable parts. GraphModule's own pickling re-traces its
    code, which can make other constants than the graph held."""
    nodes = [
        (
            node.op,
            node.name,
            _Op(node.target.name()) if isinstance(node.target, OpOverload) else node.target,
            map_arg(node.args, lambda n: _Ref(n.name)),
            map_arg(node.kwargs, lambda n: _Ref(n.name)),
        )
        for node in graph_module.graph.nodes
    ]
    # Every name, as graph.capture.constants lists them and aot_autograd passes them.
    return (
        nodes,
        dict(graph_module.named_parameters(remove_duplicate=False)),
        dict(graph_module.named_buffers(remove_duplicate=False)),
    )


def unpack(nodes: list[tuple], parameters: dict, buffers: dict) -> GraphModule:
    """The graph module :func:`pack` took apart, holding the same constants in the same
    order (inductor's code takes them as its first arguments)."""
    graph = torch.fx.Graph()
    made: dict[str, torch.fx.Node] = {}
    for op, name, target, args, kwargs in nodes:
        args, kwargs = map_aggregate(
            (args, kwargs), lambda a: made[a.name] if isinstance(a, _Ref) else a
        )
        target = target.resolve() if isinstance(target, _Op) else target
        made[name] = graph.create_node(op, target, args, kwargs, name)
    graph_module = GraphModule({**parameters, **buffers}, graph)
    # GraphModule keeps what the graph reads, in the graph's order: restore all, in theirs.
    for held, tensors in ((graph_module._parameters, parameters), (graph_module._buffers, buffers)):
        held.clear()
        held.update(tensors)
    return graph_module


def compile_loadable(
    graph_module: GraphModule, metas: Sequence[tuple], settings: dict[str, Any]
) -> dict[str, Any] | None:
    """In the worker: compiles ``graph_module`` for inputs described by ``metas``, with
    ``settings`` over :func:`lazyjit.backends.inductor.inductor_settings`; what the
    user's process needs to load the code, or ``None``."""
    inputs = [
        torch.empty_strided(shape, stride, dtype=dtype, device=device)
        for shape, stride, dtype, device in metas
    ]
    num_inputs = len(constants(graph_module)) + len(inputs)
    num_outputs = len(graph_module.graph.output_node().args[0])
    settings = {**inductor_settings(graph_module, inputs), **settings}
    with torch.no_grad():
        compiled = torch_shim.compile_fx(graph_module, inputs, settings)
    code = torch_shim.plain_inference_code(compiled, num_inputs, num_outputs)
    return None if code is None else torch_shim.loadable_output_code(code)


def main(jobs: BinaryIO | None = None, replies: BinaryIO | None = None) -> None:
    """The worker's loop: a job from ``jobs`` (stdin), its reply to ``replies`` (stdout),
    until ``jobs`` closes."""
    if replies is None:
        replies = os.fdopen(os.dup(1), "wb")
    # Anything printed goes to stderr: not into the replies, nor (forked) into the output
    # of the user's process.
    os.dup2(2, 1)
    jobs = jobs or sys.stdin.buffer
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the user's process reports what matters
    torch_shim.warm_inductor()  # while the user's process still runs its first calls
    while True:
        try:
            packed, metas, settings = pickle.load(jobs)
        except EOFError:
            return
        try:
            reply = ("compiled", compile_loadable(unpack(*packed), metas, settings))
        except Exception as e:  # noqa: BLE001 - the user's process decides what to do
            reply = ("failed", f"inductor failed to compile the graph ({type(e).__name__}: {e})")
        pickle.dump(reply, replies)
        replies.flush()
