"""A cold compile of the programs' hot graphs: inductor's Python wrapper against its C++
wrapper, on an empty inductor cache.

    python benchmarks/bench_cold_compile.py [--programs vae,lda,mue,eight-schools] [--repeats 3]

For each program a child process runs it under ``lazyjit.install()`` until ``"auto"``
sends its first hot graph to the compile worker, and keeps that graph (its nodes,
constants and input shapes). Then, for each graph and wrapper in turn, a fresh process
with an empty ``TORCHINDUCTOR_CACHE_DIR`` warms inductor up (untimed: its import and the
probe of the CPU's vector instructions, which the worker pays once before any graph) and
times the worker's own compile of the graph (``lazyjit.backends.worker.compile_loadable``).
Inductor's precompiled headers live outside that directory and stay built, as they do on
a machine that has compiled before. Run it on a quiet machine; one torch thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lazyjit.bench.programs import run_python  # noqa: E402

# Runs a program until its first graph goes to the worker; writes that job to argv[2].
KEEP_GRAPH = """
import os, pickle, sys, warnings
import torch
torch.set_num_threads(1)
warnings.filterwarnings("ignore")
import lazyjit
from lazyjit.backends import worker
from lazyjit.backends.inductor import inductor_settings
from lazyjit.bench.programs import PROGRAMS, RESULT_TAG
from lazyjit.graph.capture import op_count

def keep(self, graph_module, inputs, settings):
    with open(sys.argv[2], "wb") as f:
        pickle.dump(worker.make_job(graph_module, inputs, settings), f)
    ops = op_count(graph_module)
    chosen = inductor_settings(graph_module, inputs).get("cpp_wrapper", False)
    # To the real stdout: a program may have redirected sys.stdout (MuE's prints).
    print(RESULT_TAG + '{"ops": %d, "cpp_wrapper": %s}' % (ops, str(chosen).lower()),
          file=sys.__stdout__, flush=True)
    os._exit(0)

worker.CompileWorker.compile = keep
lazyjit.install()
program = PROGRAMS[sys.argv[1]]
program.run(program.steps)
"""

# Compiles the job in argv[1] on an empty cache, C++ wrapper or not by argv[2].
COMPILE = """
import json, pickle, sys, time
import torch
torch.set_num_threads(1)
from lazyjit import torch_shim
from lazyjit.backends import worker
from lazyjit.bench.programs import RESULT_TAG
packed, metas, settings = pickle.load(open(sys.argv[1], "rb"))  # worker.make_job's
torch_shim.warm_inductor()
settings = {**settings, "cpp_wrapper": sys.argv[2] == "cpp"}
start = time.perf_counter()
worker.compile_loadable(worker.unpack(*packed), metas, settings)
print(RESULT_TAG + json.dumps({"seconds": time.perf_counter() - start}))
"""

WRAPPERS = ("python", "cpp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", default="vae,lda,mue,eight-schools")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = args.programs.split(",")
    with tempfile.TemporaryDirectory() as folder:
        jobs = {}
        for name in names:
            path = os.path.join(folder, f"{name}.pkl")
            found, _ = run_python(KEEP_GRAPH, [name, path], timeout=600)
            if "error" in found:
                sys.exit(f"{name}: {found['error']}")
            jobs[name] = (path, found)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for name, (path, _) in jobs.items():
                for wrapper in WRAPPERS:
                    with tempfile.TemporaryDirectory() as cache:
                        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
                        done, _ = run_python(COMPILE, [path, wrapper], timeout=600, env=env)
                    if "error" in done:
                        sys.exit(f"{name}, {wrapper} wrapper: {done['error']}")
                    times.setdefault((name, wrapper), []).append(done["seconds"])
    print("| graph | ops | Python wrapper s | C++ wrapper s | C++ / Python | lazyjit picks |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, (_, found) in jobs.items():
        python, cpp = (statistics.median(times[name, w]) for w in WRAPPERS)
        picks = "C++" if found["cpp_wrapper"] else "Python"
        print(
            f"| {name} | {found['ops']} | {python:.1f} | {cpp:.1f} | {cpp / python:.2f} | {picks} |"
        )
    print(f"\nmedians of {args.repeats} compiles each, wrappers alternating, an empty cache each")


if __name__ == "__main__":
    main()
