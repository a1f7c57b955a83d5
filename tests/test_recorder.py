"""lazyjit.recorder: the aten graph of a function, recorded on real tensors."""

import subprocess
import sys

import pytest
import torch
from torch.fx import GraphModule

from lazyjit.graph import recorder
from lazyjit.graph.recorder import DATA_DEPENDENT


def record(fn, inputs, **kwargs):
    return GraphModule(*recorder.record(fn, inputs, **kwargs))


def test_graph_replays_the_function_on_new_inputs():
    data = torch.tensor([1.0, 2.0, 3.0])  # a closure's tensor: a constant of the graph

    def fn(x, y):
        z = (x * data).sum() + y.exp()
        return z, torch.stack([x, x])

    x, y = torch.randn(3), torch.randn(())
    graph = record(fn, [x, y])
    x2, y2 = torch.randn(3), torch.randn(())
    for got, want in zip(graph(x2, y2), fn(x2, y2)):
        torch.testing.assert_close(got, want)


def test_gradients_taken_inside_are_graph_ops():
    def fn(x):
        x = x.detach().requires_grad_()
        y = (x.sin() * x).sum()
        (g,) = torch.autograd.grad(y, [x])
        return y.detach(), g

    graph = record(fn, [torch.randn(4)])
    targets = {str(n.target) for n in graph.graph.nodes}
    assert "aten.cos.default" in targets  # the backward of sin
    x = torch.randn(4)
    for got, want in zip(graph(x), fn(x)):
        torch.testing.assert_close(got, want)


def test_a_tensor_made_in_the_function_is_fresh_at_every_call():
    # torch.tensor(...) reaches the recorder as lift_fresh of a constant: replayed as is,
    # the in-place add would accumulate into the constant from call to call.
    def fn(x):
        acc = torch.tensor([1.0, 1.0])
        acc.add_(x)
        return (acc * 2,)

    x = torch.ones(2)
    graph = record(fn, [x])
    first, second = graph(x)[0], graph(x)[0]
    torch.testing.assert_close(first, torch.full((2,), 4.0))
    torch.testing.assert_close(second, first)


def test_reading_a_value_that_depends_on_an_input_is_refused():
    for read in (lambda t: t.item(), lambda t: bool(t > 0), lambda t: torch.equal(t, t)):
        with pytest.raises(RuntimeError, match=DATA_DEPENDENT):
            record(lambda x, read=read: (x * 2 if read(x.sum()) else x,), [torch.ones(2)])


def test_reading_a_constant_value_is_allowed():
    def fn(x):
        scale = torch.tensor(2.0).log()  # deterministic ops on constants only
        offset = torch.ones(()).add(1)  # made from no tensor at all
        return (x * scale.item() + offset.item(),)

    x = torch.randn(3)
    torch.testing.assert_close(record(fn, [x])(x)[0], fn(x)[0])


def test_a_random_draw_from_constants_is_not_a_constant():
    # A draw differs at every call: a branch on it is a branch on data.
    with pytest.raises(RuntimeError, match=DATA_DEPENDENT):
        record(lambda x: (x if torch.randn(()).item() > 0 else -x,), [torch.ones(2)])


def test_no_grad_outputs_are_detached_when_asked():
    def fn(x):
        with torch.no_grad():
            frozen = x * 3
        return (x * frozen,)

    x = torch.randn(3, requires_grad=True)
    for detach, want in ((True, x.detach() * 3), (False, x.detach() * 6)):
        graph = record(fn, [x], detach_no_grad=detach)
        (grad,) = torch.autograd.grad(graph(x)[0].sum(), [x])
        torch.testing.assert_close(grad, want)


def test_recording_does_not_import_dynamo():
    # make_fx imports torch._dynamo (and torch._inductor): 0.8 s in a fresh process.
    code = (
        "import sys, torch, lazyjit.graph.capture as c\n"
        "c.capture(lambda x: (x.sin(),), [torch.ones(2)])\n"
        "print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
