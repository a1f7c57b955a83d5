"""Settings that lazyjit's modules share. Change them before the first compile; the
measurements behind them are in ``docs/backends.md`` and ``docs/reliability.md``."""

from __future__ import annotations

from typing import Any

# The most compiled entries (call signatures) a CompiledFunction keeps; the least
# recently used goes first.
DEFAULT_CACHE_SIZE = 32
# An entry whose value guards fail keeps up to this many programs, each specialized for
# the values its trace saw (the two sides of a branch on a latent's sign, say).
MAX_SPECIALIZATIONS = 4
# An entry whose specializations all failed this many times runs eagerly from then on:
# its compiled programs serve too few of its calls to pay for the checks and the rerun.
MAX_GUARD_FAILURES = 32

# A TorchScript-traced graph of more nodes runs without the executor's optimizing
# passes, whose cost grows faster than the graph while the gain shrinks.
TORCHSCRIPT_MAX_OPTIMIZED_NODES = 15000
# "auto" moves a lane to TorchScript on the caller's thread (a trace and the executor's
# optimizing first calls); a bigger graph runs as FX code until inductor's code arrives.
AUTO_SCRIPT_MAX_NODES = 30000

# Settings for every inductor compile:
# fallback_random: inductor's own generator would draw other numbers than eager from the
#   same seed; aten's random ops keep a compiled program checkable against eager (and on
#   CPU they are faster). On a GPU inductor's fused generator may win: set it False
#   there if matching eager's draws does not matter.
# cpp.enable_loop_tail_vec: torch 2.13's masked vector code for a loop's tail can write
#   out of bounds in a value-and-grad kernel; scalar tails compute it right
#   (tests/test_fuzz.py::test_inductor_tail_loops).
# size_asserts: the generated code would check each input's sizes and strides, which the
#   cache key (tensor arguments) and the param check (params) have checked already.
INDUCTOR_CONFIG: dict[str, Any] = {
    "fallback_random": True,
    "cpp.enable_loop_tail_vec": False,
    "size_asserts": False,
}
# An inference graph with this many ops that inductor leaves to torch's kernels (matrix
# products, random draws) or more compiles with inductor's C++ wrapper (one compiler run
# for all its kernels, where the Python wrapper runs one per kernel, 1 to 2 s each on a
# small CPU); below, the one bigger run costs more than the few small ones. Measured in
# docs/backends.md ("A cold compile").
CPP_WRAPPER_MIN_BREAKS = 4
# Bigger graphs keep the Python wrapper: measured up to 600 ops, and one C++ file of
# hundreds of kernels may take the compiler longer than the same kernels one by one.
CPP_WRAPPER_MAX_OPS = 2000
# Added for compiles beside the user's loop: inductor compiles C++ in a pool of worker
# processes, one per CPU; one leaves the loop a CPU of its own on a small machine.
BACKGROUND_INDUCTOR_CONFIG: dict[str, Any] = {"compile_threads": 1}
# "auto" compiles its hot graphs in a worker process (lazyjit.backends.worker) where
# this process may use two CPUs or more: beside the user's loop, a compile on a thread
# of its own slows the loop down several times while it runs.
COMPILE_WORKER = True
