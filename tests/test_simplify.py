"""lazyjit.simplify: a captured graph loses the ops that compute nothing, and only those."""

import pytest
import torch

import lazyjit
from lazyjit.graph.capture import capture, capture_value_and_grad, constants

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


def test_a_repeated_op_runs_once():
    x = torch.randn(4)
    graph, _ = capture(lambda x: ((x.exp() + x.exp()).sum(), x.expand(4).sum()), [x])
    assert targets(graph).count(aten.exp.default) == 1
    assert aten.expand.default not in targets(graph)  # to the shape x has
    for got, want in zip(graph(x), ((x.exp() + x.exp()).sum(), x.sum())):
        assert torch.equal(got, want)


def test_repeats_are_told_apart_by_number_type_sign_and_randomness():
    def fn(x):
        ints, floats = (x * 2).sum(), (x * 2.0).sum()  # an int tensor, then a float one
        zeros = 1 / ((x + 1) * 0.0), 1 / ((x + 1) * -0.0)  # inf and -inf
        draws = torch.randn(4) + x, torch.randn(4) + x
        return ints, floats, *zeros, *draws

    x = torch.arange(4)
    graph, _ = capture(fn, [x])
    torch.manual_seed(3)
    got = graph(x)
    torch.manual_seed(3)
    want = fn(x)
    assert targets(graph).count(aten.randn.default) == 2
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
    assert (got[2] > 0).all() and (got[3] < 0).all()
    assert not torch.equal(got[4], got[5])


def test_an_op_on_constants_alone_is_computed_once():
    scale = torch.tensor([2.0, 3.0])
    graph, _ = capture(lambda x: ((x * scale.log()).sum(),), [torch.ones(2)])
    assert aten.log.default not in targets(graph)
    x = torch.randn(2)
    assert torch.equal(graph(x)[0], (x * scale.log()).sum())
    # The graph holds the folded constant only, not the one it was folded from: every
    # tensor held is passed to each call of a compiled graph.
    (held,) = constants(graph)
    assert torch.equal(held, scale.log())


def test_a_constant_written_in_place_is_computed_at_every_call():
    scale = torch.tensor([2.0, 3.0])

    def fn(x):
        counts = scale.clone()
        counts.add_(x)  # depends on the input: the log below must see it
        return ((counts.log() * scale.log()).sum(),)

    graph, _ = capture(fn, [torch.ones(2)])
    assert targets(graph).count(aten.log.default) == 1  # scale's, folded; counts' stays
    for x in (torch.zeros(2), torch.full((2,), 5.0)):
        assert torch.equal(graph(x)[0], fn(x)[0])
