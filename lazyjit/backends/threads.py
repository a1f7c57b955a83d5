"""The compiler thread and the locks that let compiles run beside the user's loop.

Inductor compiles on a thread of its own. What makes that safe (checked in torch 2.13;
tests/test_auto.py checks the first point):

* Inductor and aot_autograd save the global RNG state when a compile starts and restore
  it when it ends (dynamo's ``preserve_rng_state``). Beside a user's loop, that would
  rewind the user's random stream by every draw made meanwhile. The compile itself draws
  nothing (``fallback_random`` keeps random ops as aten calls), so on the compiler
  thread the save and restore are skipped; elsewhere they run unchanged.
* aot_autograd traces the graph inside ``warnings.catch_warnings``, whose state is
  process-wide: interleaved with lazyjit's own warning-recording TorchScript trace,
  either could lose the other's warnings. Both take :data:`WARNINGS_LOCK`.
* aot_autograd traces with ``make_fx``, and torch.fx's tracer keeps a module-global
  patcher: two traces at once fail. Compiles take :data:`TRACE_LOCK`; lazyjit's own
  captures do not use that tracer and run beside them.
* aot_autograd's tracing turns on anomaly mode, which is process-wide too: autograd on
  other threads runs slower for that moment. A training compile (forward and backward)
  also traces a joint graph under it: those compile on the calling thread instead.

Lock order: :data:`PYRO_LOCK`, :data:`TRACE_LOCK`, then :data:`WARNINGS_LOCK`.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from .. import torch_shim

# Held while lazyjit runs Pyro code outside a compiled program (a signature's first call,
# an eager tier, a capture): Pyro's effect-handler stack is process-wide, and two threads
# inside it at once break each other's handlers.
PYRO_LOCK = threading.RLock()
TRACE_LOCK = threading.RLock()
WARNINGS_LOCK = threading.RLock()
_on_compiler_thread = threading.local()
_prepared = False


@contextlib.contextmanager
def catch_warnings(*args: Any, **kwargs: Any) -> Iterator[Any]:
    """``warnings.catch_warnings`` under :data:`WARNINGS_LOCK`."""
    with WARNINGS_LOCK, warnings.catch_warnings(*args, **kwargs) as caught:
        yield caught


def prepare_inductor_for_threads() -> None:
    """Installs (once) the adjustments described above; raises if this torch does not
    look as expected, and the compile then fails (the lane stays on its tier)."""
    global _prepared
    with WARNINGS_LOCK:  # importing them runs catch_warnings blocks too
        if not _prepared:
            torch_shim.thread_safe_compiles(
                lambda: getattr(_on_compiler_thread, "active", False), catch_warnings
            )
            _prepared = True


class CompilerThread:
    """One daemon thread running background compiles in turn. A daemon, so that it never
    keeps a program alive; at exit, the compile in flight gets a minute to finish."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._last: Future | None = None
        self._lock = threading.Lock()
        self.started = 0

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queues ``job``; the future holds what it returns or raises."""
        future: Future = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="lazyjit-compiler", daemon=True
                )
                self._thread.start()
            self._last = future
            self.started += 1
        self._jobs.put((future, job))
        return future

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the jobs submitted so far are done (they run in order)."""
        last = self._last
        return last is None or not concurrent.futures.wait([last], timeout).not_done

    def _work(self) -> None:
        _on_compiler_thread.active = True
        while True:
            future, job = self._jobs.get()
            future.set_running_or_notify_cancel()
            try:
                with TRACE_LOCK:
                    future.set_result(job())
            except BaseException as e:  # noqa: BLE001 - the job reports its own failures
                future.set_exception(e)


COMPILER = CompilerThread()


@atexit.register
def _finish_compiles() -> None:
    # A daemon thread still inside inductor when the interpreter finalizes can take the
    # process down with it (exit code 134): let the compile in flight end first.
    COMPILER.wait(timeout=60)


def wait_for_compiles(timeout: float | None = None) -> bool:
    """Waits for every background compile started so far (of any program); whether
    they are done. For benchmarks and tests: normal code never needs to wait."""
    return COMPILER.wait(timeout)


def compiles_started() -> int:
    """How many background compiles have been started in this process. A hot lane
    waits for the compile in flight before it starts its own, so a loop has reached its
    steady state once a pass over it starts none."""
    return COMPILER.started


def done_future(job: Callable[[], Any]) -> Future:
    """A future holding what ``job()`` returned or raised, run now on this thread."""
    future: Future = Future()
    try:
        future.set_result(job())
    except Exception as e:  # noqa: BLE001 - the future carries it
        future.set_exception(e)
    return future
