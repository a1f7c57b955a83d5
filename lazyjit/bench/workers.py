"""One worker process per contender, for ``python -m lazyjit bench``.

A worker is a fresh process with one torch thread: two contenders never share a warm
cache, and all run alike. It builds its contender and times the first call when the
parent asks, then one round at a time (:mod:`lazyjit.bench.timing` in the worker;
:func:`lazyjit.bench.timing.alternate` in the parent, through :class:`Worker`). At the
end it reports its peak resident memory. A contender that cannot run (NumPyro missing, a
compile that fails, a worker that dies or times out) becomes a row that says why.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import pyro
import torch

from .. import LazyJitWarning
from .timing import Result, alternate, first_call, hot_after, timed_round
from .workloads import Contender, Workload

# How long a worker may take to start (import torch and pyro) and to finish.
START_TIMEOUT_S = 300.0


def prepare_worker() -> None:
    """What every worker does first: one torch thread, one XLA thread, the same seed,
    TorchScript's warnings hidden and lazyjit's recorded."""
    # XLA's CPU client otherwise runs its own thread pool beside torch's single thread;
    # read when jax first starts a backend, so before any NumPyro contender is built.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    # One thread for every contender alike: the other core stays free for the parent,
    # background compiles and the machine's other load.
    torch.set_num_threads(1)
    # TorchScript's warnings via Pyro's jit (ignore_jit_warnings does not hide them all).
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    # ... but not lazyjit's own (a fallback to eager, say): the row reports them.
    warnings.filterwarnings("default", category=LazyJitWarning)
    pyro.set_rng_seed(0)  # every worker draws the same data
    pyro.clear_param_store()


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes there, KiB here


def worker_main(conn: Connection, contender: Contender, warmup: int) -> None:
    """A worker's life: say it started, build and time the first call when told, then
    run rounds until told to finish. Every failure is sent back, never raised."""
    with warnings.catch_warnings(record=True) as caught:
        try:
            prepare_worker()
            conn.send(("started",))
            if conn.recv()[0] != "setup":
                return
            with hot_after(contender.hot_calls):
                step, first = first_call(contender.setup, contender.warm_seconds, warmup)
                conn.send(("ready", first))
                while (command := conn.recv())[0] == "round":
                    conn.send(("round", *timed_round(step, command[1])))
                metrics = step.metrics() if callable(getattr(step, "metrics", None)) else {}
            said = list(dict.fromkeys(str(w.message) for w in caught))
            conn.send(("done", peak_rss_mb(), metrics, said))
        except Exception as e:  # noqa: BLE001 - reported as the contender's row
            if isinstance(e, ImportError) and e.name:
                message = f"{e.name} is not installed (pip install -e '.[bench]')"
            else:
                message = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            try:
                conn.send(("error", message, traceback.format_exc()))
            except OSError:
                pass  # the parent has gone


class Worker:
    """The parent's end of one worker process; a :class:`lazyjit.bench.timing.Timed`."""

    def __init__(self, context: Any, contender: Contender, workload: Workload):
        self.result = Result(contender.name, contender.kind)
        self.timeout_s = workload.setup_timeout_s
        self.done = False  # it answered "finish" and is exiting
        self.conn, child = context.Pipe()
        # Not a daemon: inductor starts compile worker processes of its own.
        self.process = context.Process(
            target=worker_main,
            args=(child, contender, workload.warmup),
            name=f"bench {contender.name}",
        )
        self.process.start()
        child.close()

    def started(self) -> None:
        """Waits until the worker has imported torch and pyro."""
        self.ask(None, START_TIMEOUT_S)

    def first(self) -> None:
        answer = self.ask(("setup",), self.timeout_s)
        if answer is not None:
            self.result.first_s = answer[1]

    def round(self, calls: int) -> None:
        answer = self.ask(("round", calls), self.timeout_s)
        if answer is not None:
            self.result.rounds_s.append(answer[1])
            self.result.round_started.append(answer[2])

    def finish(self) -> None:
        """Collects the worker's memory, metrics and warnings; it then exits."""
        if self.result.error is None:
            answer = self.ask(("finish",), START_TIMEOUT_S)
            if answer is not None:
                self.result.peak_rss_mb, self.result.metrics, self.result.warnings = answer[1:]
                self.done = True

    def ask(self, message: tuple | None, timeout: float) -> tuple | None:
        """Sends ``message`` (if any) and returns the answer; on failure the row records
        why and the process is stopped."""
        try:
            if message is not None:
                self.conn.send(message)
            if not self.conn.poll(timeout):
                self.fail(f"no answer in {timeout:.0f} s (stopped)")
                return None
            answer = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            self.fail(f"the worker died (exit code {self.process.exitcode})")
            return None
        if answer[0] == "error":
            self.result.traceback = answer[2]
            self.fail(answer[1])
            return None
        return answer

    def fail(self, message: str) -> None:
        """Records why the row has no figures and stops the process."""
        self.result.error = message
        self.close(grace_s=0.0)

    def close(self, grace_s: float) -> None:
        """Gives the process ``grace_s`` to exit (it does after "finish"), then kills it."""
        self.process.join(grace_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def run_workload(workload: Workload, log: Callable[[str], None] = print) -> list[Result]:
    """Times ``workload``'s contenders side by side, one worker process each; one row
    per contender, in the workload's order."""
    context = process_context()
    start = time.perf_counter()
    workers: list[Worker] = []
    try:
        for contender in workload.contenders:
            workers.append(Worker(context, contender, workload))
        # All start (import torch and pyro) together; nothing is timed until all have.
        for worker in workers:
            worker.started()
        alternate(
            workers, workload.steps, workload.repeats, log, f"[{workload.name}] ", workload.unit
        )
        for worker in workers:
            worker.finish()
    finally:
        for worker in workers:  # also on an interrupt: none is left running
            worker.close(grace_s=10.0 if worker.done else 0.0)
    log(f"[{workload.name}] done in {time.perf_counter() - start:.0f} s")
    return [worker.result for worker in workers]


def process_context() -> Any:
    """Where workers come from: a fork server that has imported lazyjit (torch, pyro) and
    run nothing, so that each worker is a fresh process without paying the imports
    again (seconds each on a small machine, dozens of workers a run); "spawn" (a new
    interpreter each) where there is no fork server."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context
