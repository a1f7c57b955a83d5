"""The compile worker: inductor compiles in a process of its own, and this process loads
the generated code without importing inductor (``lazyjit.backends.worker``)."""

import io
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pyro
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoDiagonalNormal

import lazyjit
import lazyjit.backends.tiers
import lazyjit.config
from lazyjit.backends import TierPolicy
from lazyjit.backends.worker import WORKER, CompileWorker, WorkerLost, pack, unpack
from lazyjit.examples import gaussian_data, gaussian_model
from lazyjit.graph.capture import constants


def captured_graph():
    """The seed Gaussian SVI's value-and-grad graph, as auto captured it."""
    pyro.clear_param_store()
    backend = lazyjit.BACKENDS["auto"].replace(hot_calls=float("inf"), local_hot_calls=0)
    elbo = lazyjit.JitTrace_ELBO(backend=backend)
    data = gaussian_data(20)
    svi = SVI(gaussian_model, AutoDiagonalNormal(gaussian_model), pyro.optim.Adam({}), elbo)
    for _ in range(3):
        svi.step(data)
    (program,) = elbo.compiled_fn.compiled.values()
    return program.lanes["value_and_grad"].graph_module


def test_a_packed_graph_unpacks_to_the_same_code_and_constants():
    graph_module = captured_graph()
    # One tensor under two names: aot_autograd passes it twice, and so must the worker.
    graph_module.register_buffer("alias", constants(graph_module)[0])
    unpacked = unpack(*pack(graph_module))
    assert unpacked.code == graph_module.code
    # Inductor's code takes the constants first, in this order: it must be the same.
    assert [id(t) for t in constants(unpacked)] == [id(t) for t in constants(graph_module)]


@pytest.mark.parametrize("failure", [WorkerLost("gone"), None])
def test_what_the_worker_cannot_compile_compiles_here(monkeypatch, failure):
    def worker_compile(*args):
        if failure is None:
            return None  # code that needs inductor to load
        raise failure

    here = []
    monkeypatch.setattr(WORKER, "compile", worker_compile)
    monkeypatch.setattr(
        lazyjit.backends.tiers,
        "inductor_compile",
        lambda graph_module, inputs, grad, config=None: here.append(grad) or graph_module.forward,
    )
    runner = lazyjit.backends.tiers.hot_runner(captured_graph(), [], False, lambda s: None)
    assert here == [False] and callable(runner)


def test_a_worker_that_exits_is_lost_and_says_why(monkeypatch):
    monkeypatch.setattr(lazyjit.config, "COMPILE_WORKER", True)
    worker = CompileWorker()
    monkeypatch.setattr(worker, "_cpus", 2)
    worker.start()
    worker._process.kill()
    worker._process.wait()
    graph_module = captured_graph()
    with pytest.raises(WorkerLost, match="exited"):
        worker.compile(graph_module, [torch.zeros(2)] * 3, {})
    assert not worker.usable() and "exited" in worker.lost
    with pytest.raises(WorkerLost):  # and stays lost
        worker.compile(graph_module, [torch.zeros(2)] * 3, {})


# A seeded SVI run whose value-and-grad lane reaches inductor's code through the worker,
# then the same graph compiled by inductor in this process, on the same inputs.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    import pyro, torch
    import lazyjit
    from lazyjit.backends import TierPolicy, wait_for_compiles
    from lazyjit.examples import gaussian_data, gaussian_model
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoDiagonalNormal

    def losses(elbo):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        data = gaussian_data(50)
        guide = AutoDiagonalNormal(gaussian_model)
        svi = SVI(gaussian_model, guide, pyro.optim.Adam({"lr": 0.02}), elbo)
        return [svi.step(data) for _ in range(12)], guide  # the entry lives as long as guide

    lazyjit.BACKENDS["auto"].policy = TierPolicy(2, 3, 4)  # inductor's code from call 7
    elbo = lazyjit.JitTrace_ELBO()
    lazy, guide = losses(elbo)
    (program,) = elbo.compiled_fn.compiled.values()
    lane = program.lanes["value_and_grad"]
    eager, _ = losses(Trace_ELBO())
    no_inductor = "torch._inductor.compile_fx" not in sys.modules
    from lazyjit.backends.inductor import inductor_compile
    from lazyjit.backends.worker import WORKER
    inputs = [torch.randn(2), torch.rand(2), torch.randn(50)]
    torch.manual_seed(1)
    loaded = WORKER.compile(lane.graph_module, inputs, {})(*inputs)
    torch.manual_seed(1)
    here = inductor_compile(lane.graph_module, inputs, False)(*inputs)
    print(json.dumps({
        "tier": lane.tier, "no_inductor_import": no_inductor, "lazy": lazy, "eager": eager,
        "same_code_same_numbers": all(torch.equal(a, b) for a, b in zip(loaded, here)),
    }))
    """
)


def test_worker_code_runs_here_without_inductor_and_matches_eager_and_local_inductor():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["tier"] == "inductor"
    assert result["no_inductor_import"]  # until this process compiled for itself
    assert result["lazy"] == pytest.approx(result["eager"], rel=1e-5, abs=1e-5)
    assert result["same_code_same_numbers"]


# A graph of many kernels (matrix products and a random draw between its pointwise ops):
# the worker compiles it with inductor's C++ wrapper, and this process loads that code
# without inductor; it draws and computes what inductor's Python wrapper does, bit for bit.
CPP_WRAPPER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx
    from lazyjit import torch_shim
    from lazyjit.backends.worker import WORKER

    def f(x, w):
        for _ in range(4):
            x = torch.tanh(x @ w)
        return x * torch.rand_like(x), x.sum()

    inputs = [torch.randn(3, 8), torch.randn(8, 8)]
    graph_module = make_fx(f)(*inputs)
    sources = []
    load = torch_shim.load_output_code
    torch_shim.load_output_code = lambda loadable: sources.append(
        open(loadable["path"]).read()) or load(loadable)
    torch.manual_seed(1)
    loaded = WORKER.compile(graph_module, inputs, {})(*inputs)  # the worker picks the wrapper
    no_inductor = "torch._inductor.compile_fx" not in sys.modules
    from lazyjit.backends.inductor import inductor_compile
    torch.manual_seed(1)
    python_wrapper = inductor_compile(graph_module, inputs, False, {"cpp_wrapper": False})(*inputs)
    torch.manual_seed(1)
    eager = graph_module(*inputs)
    print(json.dumps({
        "cpp_wrapper_code": "CppWrapperCodeCache" in sources[0],
        "no_inductor_import": no_inductor,
        "same_numbers": all(torch.equal(a, b) for a, b in zip(loaded, python_wrapper)),
        "close_to_eager": all(torch.allclose(a, b, atol=1e-6) for a, b in zip(loaded, eager)),
    }))
    """
)


def test_a_graph_of_many_kernels_compiles_with_the_cpp_wrapper_and_the_same_numbers():
    done = subprocess.run(
        [sys.executable, "-c", CPP_WRAPPER_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {
        "cpp_wrapper_code": True,
        "no_inductor_import": True,
        "same_numbers": True,
        "close_to_eager": True,
    }


def test_a_graph_of_few_kernels_or_too_many_ops_keeps_the_python_wrapper(monkeypatch):
    from torch.fx.experimental.proxy_tensor import make_fx

    from lazyjit.backends.inductor import inductor_settings

    inputs = [torch.randn(3, 8), torch.randn(8, 8)]
    # Matrix products and random draws count alike: three, then four.
    three = make_fx(lambda x, w: ((x @ w) @ w).exp() * torch.rand_like(x))(*inputs)
    four = make_fx(lambda x, w: ((x @ w) @ w @ w).exp() * torch.rand_like(x))(*inputs)
    assert inductor_settings(three, inputs) == {}
    assert inductor_settings(four, inputs) == {"cpp_wrapper": True}
    assert inductor_settings(four, [t.to("meta") for t in inputs]) == {}  # not on the CPU
    # A gamma draw has no C shim: the C++ wrapper would call it through inductor's Python.
    gamma = make_fx(lambda x, w: ((x @ w) @ w @ w @ w).exp() * torch._standard_gamma(x.exp()))
    assert inductor_settings(gamma(*inputs), inputs) == {}
    monkeypatch.setattr(lazyjit.config, "CPP_WRAPPER_MAX_OPS", 5)
    assert inductor_settings(four, inputs) == {}  # 6 ops


def test_the_default_policy_compiles_in_the_worker_early_and_switches_late():
    policy = TierPolicy()
    assert policy.hot_calls < policy.local_hot_calls
    assert policy.hot_calls + policy.switch_calls > policy.local_hot_calls


class _FakeProcess:
    """A worker process that has already answered: its reply is waiting in stdout."""

    def __init__(self, reply):
        self.stdin = io.BytesIO()
        self.stdout = io.BytesIO(pickle.dumps(reply))


@pytest.mark.parametrize(
    "reply, expected",
    [
        (("compiled", None), "None"),  # code that needs inductor to load
        (("compiled", {"path": "/nonexistent/code.py", "kernels": [], "externs": []}), "None"),
        (("failed", "inductor failed to compile the graph (boom)"), "boom"),
    ],
)
def test_what_this_process_does_with_the_workers_reply(monkeypatch, reply, expected):
    monkeypatch.setattr(lazyjit.backends.worker, "recall", lambda path: None)  # ask it
    worker = CompileWorker()
    monkeypatch.setattr(worker, "start", lambda: None)
    worker._process = _FakeProcess(reply)
    if expected == "None":  # this process compiles the graph itself
        assert worker.compile(captured_graph(), [torch.zeros(2)] * 3, {}) is None
    else:  # the lane stays on its tier, with the worker's reason in its warning
        with pytest.raises(RuntimeError, match=expected):
            worker.compile(captured_graph(), [torch.zeros(2)] * 3, {})
    assert worker.usable() or worker._cpus < 2  # a reply is no reason to give up on it


def test_a_forked_child_starts_its_own_worker_and_leaves_its_parents_alone(monkeypatch):
    monkeypatch.setattr(lazyjit.config, "COMPILE_WORKER", True)
    worker = CompileWorker()
    monkeypatch.setattr(worker, "_cpus", 2)
    parents = worker._process = _FakeProcess(("compiled", None))
    monkeypatch.setattr(worker, "_pid", -1)  # as a forked child sees it
    worker.close()  # at the child's exit
    assert worker._process is None and parents.stdin.getvalue() == b""
    monkeypatch.setattr(worker, "_pid", -1)
    assert worker.usable() and worker._process is None  # the parent's is not its own


def test_starting_a_running_worker_does_not_wait_for_its_compile():
    worker = CompileWorker()
    worker._process = _FakeProcess(("compiled", None))
    with worker._lock:  # as a compile holds it until the worker answers
        starting = threading.Thread(target=worker.start)  # a new ELBO's prepare()
        starting.start()
        starting.join(timeout=5)
        assert not starting.is_alive()


# The worker's code is remembered: a later process loads it when its lane is hot, without
# asking the worker (or importing inductor), and gets the same numbers.
REMEMBERED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx
    from lazyjit.backends import worker

    asked = []
    ask = worker.CompileWorker._ask
    worker.CompileWorker._ask = lambda self, job: asked.append(1) or ask(self, job)
    scale = torch.tensor([0.5, 2.0, -1.0])  # a constant: held by the graph, pickled by value
    graph_module = make_fx(lambda x: (torch.tanh(x * scale).sum(0), x.exp() + scale))(
        torch.ones(4, 3)
    )
    x = torch.linspace(-2, 2, 12).reshape(4, 3)
    code = worker.WORKER.compile(graph_module, [x], {})
    print(json.dumps({
        "asked": len(asked),
        "inductor_imported": "torch._inductor.compile_fx" in sys.modules,
        "out": [t.tolist() for t in code(x)],
    }))
    """
)


def test_a_later_process_loads_the_workers_code_without_asking(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}

    def run():
        done = subprocess.run(
            [sys.executable, "-c", REMEMBERED_SCRIPT],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    first, second = run(), run()
    assert first["asked"] == 1 and second["asked"] == 0
    assert not first["inductor_imported"] and not second["inductor_imported"]
    assert first["out"] == second["out"]
    # Once inductor's cache is emptied, what was remembered is forgotten, not loaded.
    (entry,) = (tmp_path / "lazyjit").iterdir()
    for item in tmp_path.iterdir():
        if item.name != "lazyjit":
            shutil.rmtree(item)
    assert lazyjit.backends.worker.recall(str(entry)) is None and not entry.exists()


# A script's process, with no other thread: its worker is forked from it (torch imported
# already), compiles, and ends with it.
FORK_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx
    import lazyjit.config
    from lazyjit.backends import worker

    lazyjit.config.COMPILE_WORKER = True
    worker.WORKER._cpus = 2  # a worker even where the test runs on one CPU
    graph_module = make_fx(lambda x: ((torch.sin(x) * 2).sum(0),))(torch.ones(4, 3))
    x = torch.linspace(-2, 2, 12).reshape(4, 3)
    print("before the worker")  # unflushed in a pipe's buffer when the worker forks
    code = worker.WORKER.compile(graph_module, [x], {})
    print(json.dumps({
        "forked": isinstance(worker.WORKER._process, worker._Forked),
        "pid": worker.WORKER._process.pid,
        "close": torch.allclose(code(x)[0], graph_module(x)[0]),
    }))
    """
)


def _ended(pid: int) -> bool:
    """Whether process ``pid`` is gone (or a zombie that its new parent has yet to reap)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "State:\tZ" in f.read()
    except FileNotFoundError:
        return True


@pytest.mark.skipif(sys.platform != "linux", reason="the worker is forked on Linux only")
def test_the_worker_is_forked_from_a_single_threaded_process_and_ends_with_it(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["forked"] and result["close"]
    assert done.stdout.count("before the worker") == 1  # not written again by the worker
    deadline = time.monotonic() + 10
    while not _ended(result["pid"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _ended(result["pid"])


def test_the_worker_is_not_forked_beside_another_thread():
    gate = threading.Event()
    other = threading.Thread(target=gate.wait)
    other.start()
    try:
        assert not lazyjit.backends.worker.can_fork()
    finally:
        gate.set()
        other.join()


def test_code_is_remembered_under_the_graph_its_constants_values_and_the_inputs(monkeypatch):
    from lazyjit.backends.worker import remembered_path

    graph_module = captured_graph()
    (nodes, parameters, buffers), metas, settings = job = (
        pack(graph_module),
        [((2,), (1,), torch.float32, torch.device("cpu"))],
        {},
    )
    copied = {name: t.clone() for name, t in buffers.items()}  # other storages, same values
    assert remembered_path(((nodes, parameters, copied), metas, settings)) == remembered_path(job)
    name = next(iter(buffers))
    changed = {**copied, name: copied[name] + 1}
    assert remembered_path(((nodes, parameters, changed), metas, settings)) != remembered_path(job)
    other_inputs = [((3,), (1,), torch.float32, torch.device("cpu"))]
    assert remembered_path(((nodes, parameters, buffers), other_inputs, settings)) != (
        remembered_path(job)
    )
    assert remembered_path((job[0], metas, {"cpp_wrapper": True})) != remembered_path(job)
    before = remembered_path(job)
    monkeypatch.setenv("TORCHINDUCTOR_MAX_AUTOTUNE", "1")  # inductor's settings, by environment
    assert remembered_path(job) != before


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86's probe")
def test_the_vector_probe_is_recorded_per_machine_and_not_run_again(monkeypatch, tmp_path):
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    from lazyjit import torch_shim

    monkeypatch.setattr(torch_shim, "inductor_machine_dir", lambda: str(tmp_path))
    # inductor's own patch: monkeypatch's undo deletes a config entry instead of restoring it
    with inductor_config.patch({"cpp.vec_isa_ok": None}):
        torch_shim.probe_vec_isa()
        flags = cpu_vec_isa.x86_isa_checker()
        every_set = [i for i in cpu_vec_isa.supported_vec_isa_list if str(i) in flags]
        if len(cpu_vec_isa.valid_vec_isa_list()) < len(every_set) or not every_set:
            assert not (tmp_path / "lazyjit").exists()  # a set the compiler cannot build
            return
        assert len(list((tmp_path / "lazyjit").iterdir())) == 1
        assert inductor_config.cpp.vec_isa_ok is None  # this process probed
        monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", lambda *a: pytest.fail("probed"))
        torch_shim.probe_vec_isa()  # a later worker
        assert inductor_config.cpp.vec_isa_ok is True
        assert cpu_vec_isa.pick_vec_isa() == cpu_vec_isa.valid_vec_isa_list()[0]
    assert inductor_config.cpp.vec_isa_ok is None  # restored for the tests after this one
