"""lazyjit.simplify: a captured graph loses the ops that compute nothing, and only those."""

import pytest
import torch

import lazyjit
from lazyjit.graph.capture import capture, capture_value_and_grad

aten = torch.ops.aten


def targets(graph_module):
    return [n.target for n in graph_module.graph.nodes if n.op == "call_function"]


def test_value_and_grad_graph_loses_its_no_ops():
    def fn(x):
        y = x.detach() * 1.0 + 0.0  # three no-ops, in a graph that runs without grad
        return ((x - y) ** 2 + x**2).sum() + x.neg().neg().sum(), x.exp() * 1

    x = torch.randn(5)
    graph = capture_value_and_grad(fn, [x], (0,))
    ops = targets(graph)
    assert aten.detach.default not in ops
    assert not any(
        n.target in (aten.mul.Tensor, aten.add.Tensor, aten.pow.Tensor_Scalar)
        and n.args[1] in (0, 1)
        for n in graph.graph.nodes
        if n.op == "call_function" and len(n.args) == 2
    )
    # -(-x) goes, and autograd's seed (sums of zeros) with it.
    assert ops.count(aten.neg.default) < 2
    assert aten.zeros_like.default not in ops

    x2 = torch.randn(5)
    leaf = x2.detach().requires_grad_()
    value, exp = fn(leaf)
    (grad,) = torch.autograd.grad(value, [leaf])
    with torch.no_grad():
        got = graph(x2)
    for g, want in zip(got, (value, exp, grad)):
        torch.testing.assert_close(g, want.detach())


def test_a_cast_is_no_no_op():
    # The op called with a Python number, as autograd's formulas call ops: int / 1 is a
    # float tensor.
    graph, _ = capture(lambda x: (aten.div.Tensor(x, 1) + 0,), [torch.arange(3)])
    assert aten.div.Tensor in targets(graph)
    torch.testing.assert_close(graph(torch.arange(3))[0], torch.arange(3.0))


def test_a_copy_written_to_in_place_stays_a_copy():
    def fn(x):
        y = x * 1
        y.add_(1.0)
        return x.sum(), y

    lazy = lazyjit.trace(fn, backend="aten")
    x = torch.zeros(3)
    lazy(x)
    total, y = lazy(x)
    assert total.item() == 0.0 and torch.equal(x, torch.zeros(3))
    torch.testing.assert_close(y, torch.ones(3))


def test_an_output_never_becomes_an_input():
    x = torch.randn(3)
    graph, _ = capture(lambda x: (x * 1, x.detach()), [x])
    out = graph(x)
    assert out[0] is not x and out[1] is not x
    out[0].add_(1.0)
    torch.testing.assert_close(out[1], x)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_detach_goes_only_where_nothing_requires_grad(requires_grad):
    x = torch.randn(3, requires_grad=requires_grad)
    graph, _ = capture(lambda x: ((x.detach() * x).sum(),), [x], replayable=True)
    assert (aten.detach.default in targets(graph)) is requires_grad
    if requires_grad:
        (grad,) = torch.autograd.grad(graph(x)[0], [x])
        torch.testing.assert_close(grad, x.detach())  # d/dx of c * x, c = x detached
