"""Data-parallel training with lazyjit's compiled ELBOs (``docs/distributed.md``), in real
processes: 2 ranks on CPU, gloo on 127.0.0.1.

The parity checks compare N ranks with a per-rank batch of B against one process on the
global batch of N*B, run with Pyro's eager ELBO of the same kind. What makes them exact:

- The data sit in a ``pyro.plate`` of ``TOTAL`` with ``subsample=`` the batch's indices,
  so a rank's terms are scaled by ``TOTAL / B`` and one process's by ``TOTAL / (N*B)``;
  DDP averages the ranks' gradients, which gives the one process's gradient.
- The local latent's guide is an ``AutoDelta`` (its params indexed by the subsample): it
  draws no noise, so no rank's draws have to equal a slice of the one process's. The
  global latent's ``AutoNormal`` draws one number a step; every rank and the one process
  seed the same before each step, so all draw the same. (Each rank drawing its own would
  be as right in use; it would only make the runs incomparable.)
- Plain SGD: Adam's update is blind to a gradient's scale, and would hide a mis-scaled
  ELBO (a sum over ranks instead of a mean, a wrong plate scale).
- The params exist before DDP wraps the module (as DDP needs): the guide is run once on
  the first batch, after the same seed in every process.

Each spawned run trains every configuration in one pair of processes (a process start
costs seconds) and writes what it saw to a file; the tests read it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
from pyro import poutine
from pyro.infer.autoguide import AutoDelta, AutoGuideList, AutoNormal
from pyro.nn import PyroModule
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

import lazyjit
import lazyjit.config
from lazyjit import LazyJitError, LazyJitWarning
from lazyjit.backends import AutoBackend, TierPolicy, tiers
from lazyjit.graph.pycode import fx_code

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch has no torch.distributed with gloo",
)

TOTAL, BATCH, RANKS, STEPS, LR = 64, 8, 2, 6, 2e-3
TIMEOUT = timedelta(seconds=60)  # every collective: a deadlock fails, never hangs

ELBOS = {
    "Trace": (lazyjit.JitTrace_ELBO, pyro.infer.Trace_ELBO),
    "TraceGraph": (lazyjit.JitTraceGraph_ELBO, pyro.infer.TraceGraph_ELBO),
    "TraceMeanField": (lazyjit.JitTraceMeanField_ELBO, pyro.infer.TraceMeanField_ELBO),
    "TraceEnum": (lazyjit.JitTraceEnum_ELBO, pyro.infer.TraceEnum_ELBO),
}
# The model has no discrete site; the Enum ELBOs must not warn that nothing enumerates.
OPTIONS = {"max_plate_nesting": 1, "strict_enumeration_warning": False}
BACKENDS = ["eager", "torchscript", "aten", "aten-jit", "auto"]
CONFIGS = [(m, e, b) for m in ("local", "linear") for e in ELBOS for b in BACKENDS]


# --- the models -------------------------------------------------------------------------


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(TOTAL, 3, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(TOTAL, generator=generator)
    return x, y


def local_model(idx, x, y):
    """A global latent, and a local latent per data point in a subsampled plate."""
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", TOTAL, subsample=idx):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("y", dist.Normal(z, 0.5), obs=y)


def _local_plates(idx, x, y):
    return pyro.plate("data", TOTAL, subsample=idx)


class Regression(PyroModule):
    """``nn.Linear`` weights (point estimates) and a latent noise scale."""

    def __init__(self):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](3, 1)

    def forward(self, idx, x, y):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", TOTAL, subsample=idx):
            pyro.sample("y", dist.Normal(self.linear(x).squeeze(-1), scale), obs=y)


def build(name: str) -> tuple:
    """(model, guide), with every param created from the first rank's first batch."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    if name == "local":
        model = local_model
        guide = AutoGuideList(model, create_plates=_local_plates)
        guide.append(AutoNormal(poutine.block(model, expose=["loc"])))
        guide.append(AutoDelta(poutine.block(model, expose=["z"])))
    else:
        model = Regression()
        guide = AutoNormal(model)
    guide(*batch(0, rank=0, ranks=RANKS))
    return model, guide


def batch(step: int, rank: int, ranks: int) -> tuple[torch.Tensor, ...]:
    """Rank ``rank``'s share of step ``step``'s global batch (``ranks * BATCH`` points)."""
    start = (step * RANKS * BATCH + rank * BATCH) % TOTAL
    return points(torch.arange(start, start + BATCH * (RANKS // ranks)))


def points(idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x, y = data()
    return idx, x[idx], y[idx]


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def reference(model_name: str, elbo_name: str, steps: int = STEPS, batches=None) -> list[dict]:
    """Params after each step of one process on the global batch, eager Pyro; the
    global batches' indices are ``batches``, or those :func:`batch` deals out."""
    model, guide = build(model_name)
    elbo = ELBOS[elbo_name][1](**OPTIONS)
    module = elbo(model, guide)
    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    history = []
    for step in range(steps):
        pyro.set_rng_seed(step)
        optimizer.zero_grad()
        if batches is None:
            global_batch = batch(step, rank=0, ranks=1)
        else:
            global_batch = points(batches[step])
        elbo.loss_and_grads(model, guide, *global_batch)
        optimizer.step()
        history.append(snapshot(module))
    return history


# --- the ranks --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(target, out: Path, *args, timeout: float = 300) -> list[dict]:
    """Runs ``target(rank, port, out_file, *args)`` in ``RANKS`` spawned processes; the
    ranks' results. A rank still running after ``timeout`` seconds fails the test."""
    port = free_port()
    context = mp.get_context("spawn")
    files = [out / f"rank{rank}.pt" for rank in range(RANKS)]
    processes = [
        context.Process(target=target, args=(rank, port, files[rank], *args))
        for rank in range(RANKS)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(processes) if p.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
    assert not hung, f"ranks {hung} still ran after {timeout} s: a deadlock"
    results = [torch.load(f) if f.exists() else {"error": "no result"} for f in files]
    errors = [f"rank {r}: {res['error']}" for r, res in enumerate(results) if "error" in res]
    assert not errors, "\n".join(errors)
    return results


def rank_main(fn):
    """Wraps a rank's body: one torch thread, the process group (with a timeout on every
    collective), lazyjit's warnings recorded, and the result or traceback saved."""

    @functools.wraps(fn)
    def main(rank: int, port: int, out: Path, *args) -> None:
        torch.set_num_threads(1)
        try:
            torch.distributed.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=RANKS,
                timeout=TIMEOUT,
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", LazyJitWarning)
                result = fn(rank, *args)
            result["warnings"] = [
                str(w.message) for w in caught if issubclass(w.category, LazyJitWarning)
            ]
            torch.distributed.destroy_process_group()
        except BaseException:  # noqa: BLE001 - reported by the test
            result = {"error": traceback.format_exc()}
        torch.save(result, out)

    return main


def train(rank: int, model_name: str, elbo, steps: int = STEPS, each_step=None) -> dict:
    """``steps`` SGD steps of ``DistributedDataParallel(elbo(model, guide))`` on this
    rank's batches; the params after each step, each step's seconds, and the model and
    guide (the ELBO's entries live as long as they do: it holds them weakly)."""
    model, guide = build(model_name)
    module = elbo(model, guide)
    ddp = DistributedDataParallel(module)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
    history, seconds = [], []
    for step in range(steps):
        start = time.perf_counter()
        pyro.set_rng_seed(step)
        optimizer.zero_grad()
        ddp(*batch(step, rank, RANKS)).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        history.append(snapshot(module))
        if each_step is not None:
            each_step(step, model, guide)
    return {"history": history, "seconds": seconds, "model": model, "guide": guide}


@rank_main
def train_every_config(rank: int, configs: list) -> dict:
    lazyjit.config.COMPILE_WORKER = False  # these lanes never get hot: no inductor
    results = {}
    for model_name, elbo_name, backend in configs:
        elbo = ELBOS[elbo_name][0](**OPTIONS, backend=backend)
        run = train(rank, model_name, elbo)
        stats = elbo.compiled_fn.stats
        reached = [
            e.program.lanes["call"].tier for e in elbo.compiled_fn.entries if backend == "auto"
        ]
        results[model_name, elbo_name, backend] = {
            "history": run["history"],
            "fallbacks": stats.fallbacks,
            "tiers": reached,
        }
    # lazyjit.SVI's fused update would use this rank's gradients alone.
    model, guide = build("local")
    svi = lazyjit.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), lazyjit.JitTrace_ELBO())
    try:
        svi.step(*batch(0, rank, RANKS))
    except LazyJitError as e:
        results["svi"] = str(e)
    return results


# --- every ELBO and backend, 2 ranks against one process ---------------------------------


@pytest.fixture(scope="module")
def every_config(tmp_path_factory):
    return spawn(train_every_config, tmp_path_factory.mktemp("ddp"), CONFIGS)


def test_every_rank_holds_the_same_params_after_every_step(every_config):
    """DDP's all-reduce reached every param: the ranks' steps agree bit for bit."""
    for config in CONFIGS:
        histories = [r[config]["history"] for r in every_config]
        for step, params in enumerate(zip(*histories)):
            for name in params[0]:
                assert torch.equal(params[0][name], params[1][name]), (config, step, name)


@pytest.mark.parametrize("config", CONFIGS, ids=["-".join(c) for c in CONFIGS])
def test_two_ranks_match_one_process_on_the_global_batch(every_config, config):
    """2 ranks with a batch of B each, compiled, against eager Pyro in one process with a
    batch of 2B, after every step (the scheme is in the module's docstring)."""
    model_name, elbo_name, backend = config
    result = every_config[0][config]
    expected = reference(model_name, elbo_name)
    for step, (got, want) in enumerate(zip(result["history"], expected, strict=True)):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(
                got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"{config} step {step} {name}"
            )
    # The steps moved the params: a test of params that never change would prove nothing.
    first, last = result["history"][0], result["history"][-1]
    assert all(not torch.equal(first[name], last[name]) for name in first)
    assert result["fallbacks"] == 0, "an entry ran eagerly instead of compiled"
    if backend == "auto":
        assert set(result["tiers"]) == {"aten-jit"}, "auto's entry did not reach its warm tier"
    assert not every_config[0]["warnings"] and not every_config[1]["warnings"]


def test_lazyjit_svi_refuses_a_data_parallel_run(every_config):
    """The fused step would update each rank from its own gradients: it says so, and
    names what to use instead."""
    for result in every_config:
        message = result.get("svi", "")
        assert "2 ranks" in message and "DistributedDataParallel(elbo(model, guide))" in message


# --- a rank compiling while the other waits in all-reduce --------------------------------


class Stall:
    """Slows rank 1 down: its captures and its training compile (on the calling thread)
    sleep ``seconds`` first, and its background compile waits for :attr:`release`. Rank
    0's take what they take. With ``inductor=False`` the stand-in for inductor's compile
    is the graph's FX code: the test is about when things happen, in seconds."""

    def __init__(self, rank: int, seconds: float, inductor: bool):
        self.rank, self.seconds = rank, seconds
        self.release = threading.Event()
        real_capture, real_compile = tiers.capture_lane, tiers.hot_runner

        def capture_lane(*args):
            self.sleep()
            return real_capture(*args)

        def hot_runner(graph_module, inputs, grad, add_seconds):
            if grad:
                self.sleep()  # on the calling thread: the other rank waits in all-reduce
            elif rank == 1:
                self.release.wait(120)  # in the background: rank 1 switches later
            if inductor:
                return real_compile(graph_module, inputs, grad, add_seconds)
            return fx_code(graph_module)

        tiers.capture_lane, tiers.hot_runner = capture_lane, hot_runner

    def sleep(self) -> None:
        if self.rank == 1:
            time.sleep(self.seconds)


EARLY = TierPolicy(warm_calls=2, hot_calls=4, local_hot_calls=4, switch_calls=None)


@rank_main
def train_while_compiling(rank: int, seconds: float, inductor: bool, steps: int) -> dict:
    if not inductor:
        lazyjit.config.COMPILE_WORKER = False
    stall = Stall(rank, seconds, inductor)
    elbo = lazyjit.JitTrace_ELBO(backend=AutoBackend(EARLY))
    entries, seen = {}, []
    # The no-grad lane's compile is done by this step on rank 0, and starts on rank 1.
    done_at = steps - 5 if rank == 0 else steps - 3

    def each_step(step, model, guide):
        entries.setdefault("train", elbo.compiled_fn.entries[-1])
        if step == done_at:
            stall.release.set()
            assert entries["loss"].program.wait(300)
        # A no-grad loss each step (a validation loss): its lane compiles in the
        # background and switches as soon as that is done (switch_calls=None).
        with torch.no_grad():
            elbo.loss(model, guide, *batch(step, rank, RANKS))
        entries.setdefault("loss", elbo.compiled_fn.entries[-1])
        seen.append([entries[k].program.lanes["call"].tier for k in ("train", "loss")])

    run = train(rank, "linear", elbo, steps=steps, each_step=each_step)
    return {"history": run["history"], "seconds": run["seconds"], "tiers": seen}


def check_compiling_ranks(results: list[dict], seconds: float, steps: int) -> None:
    histories = [r["history"] for r in results]
    for step, params in enumerate(zip(*histories)):
        for name in params[0]:
            assert torch.equal(params[0][name], params[1][name]), (step, name)
    for got, want in zip(histories[0], reference("linear", "Trace", steps), strict=True):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
    train_tiers = [[lanes[0] for lanes in r["tiers"]] for r in results]
    assert train_tiers[0] == train_tiers[1], "the training lanes switched at different steps"
    assert train_tiers[0][-1] == "inductor"
    switched = [[lanes[1] for lanes in r["tiers"]].index("inductor") for r in results]
    assert switched[0] <= steps - 5 < steps - 3 == switched[1], switched
    # Rank 0 waited in all-reduce while rank 1 captured, and again while it compiled.
    assert sorted(results[0]["seconds"])[-2] > 0.8 * seconds
    assert not results[0]["warnings"] and not results[1]["warnings"]


def test_a_rank_compiling_while_the_other_waits_in_all_reduce(tmp_path):
    """Rank 1 takes seconds longer to capture its graph and to compile the hot one (on
    the calling thread, as a training compile is), while rank 0 waits in DDP's
    all-reduce; the no-grad lane's background compile finishes steps later on rank 1 than
    on rank 0. No deadlock, the training lanes switch at the same step on both ranks, and
    the params agree after every step, with each other and with eager Pyro."""
    seconds, steps = 1.5, 10
    results = spawn(train_while_compiling, tmp_path, seconds, False, steps)
    check_compiling_ranks(results, seconds, steps)


@pytest.mark.slow
def test_a_rank_compiling_with_inductor_while_the_other_waits(tmp_path):
    """The same with inductor's real compiles: the training compile on the calling
    thread, the no-grad one in the compile worker."""
    seconds, steps = 5.0, 12
    results = spawn(train_while_compiling, tmp_path, seconds, True, steps, timeout=600)
    check_compiling_ranks(results, seconds, steps)


@rank_main
def train_inductor(rank: int, model_names: tuple[str, ...]) -> dict:
    results = {}
    for model_name in model_names:
        elbo = lazyjit.JitTrace_ELBO(max_plate_nesting=1, backend="inductor")
        results[model_name] = train(rank, model_name, elbo)["history"]
        assert elbo.compiled_fn.stats.fallbacks == 0
    return results


@pytest.mark.parametrize(
    "model_names",
    [("linear",), pytest.param(("local", "linear"), marks=pytest.mark.slow)],
    ids=["linear", "both"],
)
def test_the_inductor_backend_on_two_ranks_matches_one_process(tmp_path, model_names):
    """inductor's training compile (aot_autograd's backward) under DDP."""
    results = spawn(train_inductor, tmp_path, model_names, timeout=600)
    for model_name in model_names:
        expected = reference(model_name, "Trace")
        for step, want in enumerate(expected):
            for name in want:
                got = [r[model_name][step][name] for r in results]
                assert torch.equal(got[0], got[1])
                torch.testing.assert_close(got[0], want[name], rtol=1e-5, atol=1e-6)


# --- in this process: a world of one, and the setups lazyjit refuses -----------------------


@pytest.fixture
def world_of_one():
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        timeout=TIMEOUT,
    )
    yield
    torch.distributed.destroy_process_group()


def test_lazyjit_svi_runs_in_a_world_of_one(world_of_one):
    """Only a run of several ranks is refused: one rank's gradients are all there is.
    (The check is made at a signature's first step; the second would start a compile.)"""
    model, guide = build("local")
    svi = lazyjit.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), lazyjit.JitTrace_ELBO())
    assert math.isfinite(svi.step(*batch(0, 0, RANKS)))


def test_a_ddp_module_inside_the_model_is_refused(world_of_one):
    """Its forward arms the all-reduce, and compiled calls skip it: ranks would drift."""
    model, guide = build("linear")
    elbo = lazyjit.JitTrace_ELBO(backend="torchscript")
    with pytest.raises(LazyJitError, match=r"DistributedDataParallel\(elbo\(model, guide\)\)"):
        elbo.differentiable_loss(DistributedDataParallel(model), guide, *batch(0, 0, RANKS))


def test_module_local_params_are_refused_with_the_reason():
    """Pyro's Lightning example sets module_local_params; lazyjit reads the param store."""
    with pyro.settings.context(module_local_params=True):
        model, guide = build("linear")
        with pytest.raises(LazyJitError, match="module_local_params"):
            elbo = lazyjit.JitTrace_ELBO(backend="eager")  # the check precedes any compile
            elbo.differentiable_loss(model, guide, *batch(0, 0, RANKS))


# --- Lightning -----------------------------------------------------------------------------


def test_lightning_ddp_trainer_matches_one_process(tmp_path):
    """``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` fits a PyroModule with
    ``lazyjit.JitTrace_ELBO`` (default backend) as its ``training_step`` loss. Lightning
    starts rank 1 itself, by running this file again (``__main__`` below)."""
    pytest.importorskip(
        "lightning", reason="Lightning is an optional extra: pip install -e '.[distributed]'"
    )
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--lightning", str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # rank 1 joins this session: one kill ends both
    )
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the Lightning run still ran after 300 s:\n{output}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # a rank left behind
    assert process.returncode == 0, output
    assert "LazyJitWarning" not in output, output
    results = [torch.load(tmp_path / f"lightning{rank}.pt") for rank in range(RANKS)]
    steps = results[0]["steps"]
    assert steps == STEPS
    expected = reference("linear", "Trace", steps, lightning_batches(steps))[-1]
    for name, value in expected.items():
        assert torch.equal(results[0]["params"][name], results[1]["params"][name]), name
        torch.testing.assert_close(results[0]["params"][name], value, rtol=1e-5, atol=1e-6)
    assert all(r["tier"] == "aten-jit" for r in results), [r["tier"] for r in results]


def lightning_batches(steps: int) -> list[torch.Tensor]:
    """Each step's global batch as Lightning deals the data out: a shuffled
    ``DistributedSampler`` per rank (seed 0, ``set_epoch`` at each epoch), ``BATCH``
    points a rank."""
    per_epoch = TOTAL // (RANKS * BATCH)
    batches = []
    for step in range(steps):
        epoch, k = divmod(step, per_epoch)
        idx = []
        for rank in range(RANKS):
            sampler = DistributedSampler(range(TOTAL), RANKS, rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            idx += list(sampler)[k * BATCH : (k + 1) * BATCH]
        batches.append(torch.tensor(idx))
    return batches


def lightning_main(out: Path) -> None:
    """One rank of the Lightning run: the seeds and the SGD of :func:`reference`, through
    Lightning's DDP strategy and the DistributedSampler it puts in the DataLoader."""
    import lightning.pytorch as pl

    torch.set_num_threads(1)
    # Training calls compile on their own thread; the worker would only take a CPU.
    lazyjit.config.COMPILE_WORKER = False
    x, y = data()
    dataset = torch.utils.data.TensorDataset(torch.arange(TOTAL), x, y)

    class Fit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model, self.guide = build("linear")
            self.elbo = lazyjit.JitTrace_ELBO(max_plate_nesting=1)

        def training_step(self, batch, batch_idx):
            pyro.set_rng_seed(self.global_step)  # the module docstring says why
            return self.elbo.differentiable_loss(self.model, self.guide, *batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    fit = Fit()
    # As a user would (docs/distributed.md): the loss once before Lightning wraps the
    # module in DDP, whose broadcast then writes into the params the entry was built for.
    fit.elbo.differentiable_loss(fit.model, fit.guide, *batch(0, 0, RANKS))
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=RANKS,
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(fit, torch.utils.data.DataLoader(dataset, batch_size=BATCH))
    (entry,) = fit.elbo.compiled_fn.entries
    torch.save(
        {
            "params": snapshot(torch.nn.ModuleDict({"model": fit.model, "guide": fit.guide})),
            "steps": trainer.global_step,
            "tier": entry.program.lanes["call"].tier,
        },
        out / f"lightning{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--lightning"]:
        lightning_main(Path(sys.argv[2]))
