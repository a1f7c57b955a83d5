"""Data-parallel SVI on CPU: steps per second on 1 and 2 ranks, Pyro's JitTrace_ELBO
against lazyjit's (default backend), on the same model.

    python benchmarks/bench_distributed.py [--steps 500] [--rounds 3] [--out FILE]

Each rank is a process of its own (torch.multiprocessing, gloo on 127.0.0.1, one torch
thread) that trains ``DistributedDataParallel(elbo(model, guide))`` with ``torch.optim.Adam``
on a batch of ``--batch`` points of its own: 2 ranks take twice the data a step (weak
scaling). The model is a PyroModule regression (two ``nn.Linear`` layers, point
estimates) with a latent noise scale (``AutoNormal``) and a subsampled plate.

A run: ``--warmup`` steps (the compiles: Pyro's trace at the first step, lazyjit's captured
graph at the third), a pause of ``--pause`` seconds for every contender (lazyjit's compile
worker warms inductor up in the background meanwhile: it would share the CPUs with the
timed steps otherwise), then ``--steps`` timed steps between two barriers. Contenders
alternate within each round; the table has the median over rounds, and the warm-up's
seconds (the first steps, compiles included, as a user waits for them).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
import warnings
from datetime import timedelta

import pyro
import pyro.distributions as dist
import torch
import torch.distributed
import torch.multiprocessing as mp
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule
from torch.nn.parallel import DistributedDataParallel

import lazyjit

TOTAL, FEATURES, HIDDEN = 100_000, 8, 16
CONTENDERS = {
    "Pyro JitTrace_ELBO": lambda: pyro.infer.JitTrace_ELBO(),
    "lazyjit JitTrace_ELBO (auto)": lambda: lazyjit.JitTrace_ELBO(),
}


class Regression(PyroModule):
    def __init__(self):
        super().__init__()
        self.hidden = PyroModule[torch.nn.Linear](FEATURES, HIDDEN)
        self.out = PyroModule[torch.nn.Linear](HIDDEN, 1)

    def forward(self, idx, x, y):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        loc = self.out(torch.tanh(self.hidden(x))).squeeze(-1)
        with pyro.plate("data", TOTAL, subsample=idx):
            pyro.sample("y", dist.Normal(loc, scale), obs=y)


def rank_run(rank: int, ranks: int, port: int, contender: str, args, results) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)  # TorchScript's, via Pyro's jit
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=ranks,
        timeout=timedelta(seconds=300),
    )
    pyro.set_rng_seed(0)
    model = Regression()
    guide = AutoNormal(model)
    elbo = CONTENDERS[contender]()
    generator = torch.Generator().manual_seed(rank)
    batches = []
    for _ in range(16):
        idx = torch.randint(TOTAL, (args.batch,), generator=generator)
        x = torch.randn(args.batch, FEATURES, generator=generator)
        batches.append((idx, x, x.sum(-1) + torch.randn(args.batch, generator=generator)))
    guide(*batches[0])  # the params exist before DDP wraps the module
    ddp = DistributedDataParallel(elbo(model, guide))
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)

    def steps(n: int) -> None:
        for step in range(n):
            optimizer.zero_grad()
            ddp(*batches[step % len(batches)]).backward()
            optimizer.step()

    start = time.perf_counter()
    steps(args.warmup)
    warmup = time.perf_counter() - start
    time.sleep(args.pause)
    torch.distributed.barrier()
    start = time.perf_counter()
    steps(args.steps)
    torch.distributed.barrier()
    seconds = time.perf_counter() - start
    if rank == 0:
        results.put((args.steps / seconds, warmup))
    torch.distributed.destroy_process_group()


def measure(ranks: int, contender: str, args) -> tuple[float, float]:
    """(steps per second, warm-up seconds) of one run on ``ranks`` processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=rank_run, args=(rank, ranks, port, contender, args, results))
        for rank in range(ranks)
    ]
    for process in processes:
        process.start()
    result = results.get(timeout=600)
    for process in processes:
        process.join(60)
        if process.exitcode != 0:
            raise RuntimeError(f"a rank of {contender} on {ranks} ranks failed")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="timed steps a run")
    parser.add_argument("--warmup", type=int, default=50, help="steps before the timing")
    parser.add_argument("--pause", type=float, default=10.0, help="seconds between the two")
    parser.add_argument("--batch", type=int, default=100, help="points a rank, a step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args()
    runs: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        for ranks in map(int, args.ranks.split(",")):
            order = list(CONTENDERS) if round_ % 2 == 0 else list(reversed(CONTENDERS))
            for contender in order:
                rate, warmup = measure(ranks, contender, args)
                runs.setdefault((ranks, contender), []).append((rate, warmup))
                print(f"round {round_}: {ranks} rank(s), {contender}: {rate:.0f} steps/s")
    lines = [
        f"Steps per second (median of {args.rounds} rounds; {args.steps} timed steps after "
        f"{args.warmup}), {args.batch} points a rank a step, one torch thread a rank.",
        "",
        "| ranks | ELBO | steps/s | points/s | first steps, s | vs Pyro's jit |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for (ranks, contender), values in runs.items():
        rate = statistics.median(r for r, _ in values)
        warmup = statistics.median(w for _, w in values)
        pyro_rate = statistics.median(r for r, _ in runs[ranks, next(iter(CONTENDERS))])
        lines.append(
            f"| {ranks} | {contender} | {rate:.0f} | {rate * ranks * args.batch:,.0f} "
            f"| {warmup:.2f} | {rate / pyro_rate:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
