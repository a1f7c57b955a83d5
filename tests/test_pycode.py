"""FX code's public entries (``lazyjit.graph.pycode.PUBLIC_ENTRIES``): each public torch
function must reach its operator's overload with the same arguments, and give the same
bits, for the argument kinds a recorded graph holds (tensors of any rank and dtype,
Python numbers where the schema takes a tensor, keywords by their schema names)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lazyjit import torch_shim
from lazyjit.graph.pycode import PUBLIC_ENTRIES

aten = torch.ops.aten


class Dispatched(TorchDispatchMode):
    """Records the overloads called, with their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def tensors():
    torch.manual_seed(0)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    return {
        "x": x,
        "y": y,
        "pos": x.abs() + 0.5,
        "scalar": torch.tensor(1.7),
        "double": torch.randn(3, 4, dtype=torch.float64),
        "ints": torch.arange(12).reshape(3, 4),
        "square": torch.randn(4, 4),
        "batch": torch.randn(2, 3, 4),
        "batch2": torch.randn(2, 4, 5),
        "bias": torch.randn(3, 4),
    }


# Each operator's calls, as a recorded graph would make them (positions as FX prints them).
CASES = {
    aten.abs.default: [("x",)],
    aten.add.Tensor: [
        ("x", "y"),
        ("x", 0.5),
        ("ints", 2),
        ("x", "scalar"),
        ("double", "x"),
        ("x", "y", {"alpha": 2}),
    ],
    aten.addcmul.default: [("x", "y", "pos"), ("x", "y", "pos", {"value": 0.01})],
    aten.addmm.default: [
        ("bias", "x", "square"),
        ("bias", "x", "square", {"beta": 0.5, "alpha": 2}),
    ],
    aten.bmm.default: [("batch", "batch2")],
    aten.clone.default: [("x",), ("x", {"memory_format": torch.contiguous_format})],
    aten.detach.default: [("x",)],
    aten.digamma.default: [("pos",)],
    aten.div.Tensor: [("x", "pos"), ("x", 3), ("ints", 2), ("x", "scalar")],
    aten.eq.Tensor: [("x", "y"), ("ints", "ints")],
    aten.exp.default: [("x",), ("double",)],
    aten.expand.default: [("scalar", [3, 4]), ("x", [2, 3, 4]), ("x", [3, 4])],
    aten.expm1.default: [("x",)],
    aten.lerp.Scalar: [("x", "y", 0.1)],
    aten.lgamma.default: [("pos",)],
    aten.log.default: [("pos",), ("scalar",)],
    aten.log1p.default: [("pos",)],
    aten.mm.default: [("x", "square")],
    aten.mul.Tensor: [("x", "y"), ("x", 2), ("ints", 0.5), ("scalar", "x"), ("x", True)],
    aten.neg.default: [("x",), ("ints",)],
    aten.permute.default: [("batch", [2, 0, 1])],
    aten.pow.Scalar: [(2.0, "x"), (3, "ints")],
    aten.pow.Tensor_Scalar: [("x", 2), ("pos", 0.5), ("pos", -1.5), ("ints", 2)],
    aten.pow.Tensor_Tensor: [("pos", "y")],
    aten.reciprocal.default: [("pos",)],
    aten.rsqrt.default: [("pos",)],
    aten.rsub.Scalar: [("x", 1), ("x", 0.0), ("ints", 3, 2)],
    aten.rsub.Tensor: [("x", "y"), ("x", "y", {"alpha": 3})],
    aten.sigmoid.default: [("x",)],
    aten.sqrt.default: [("pos",)],
    aten.sub.Tensor: [("x", "y"), ("x", 0.9189385332046727), ("x", "y", {"alpha": 0.5})],
    aten.sum.default: [("x",), ("ints",), ("x", {"dtype": torch.float64})],
    aten.sum.dim_IntList: [
        ("x", [0]),
        ("x", [1], True),
        ("x", [0, 1], False, {"dtype": torch.float64}),
    ],
    aten.t.default: [("x",)],
    aten.tanh.default: [("x",)],
    aten.transpose.int: [("batch", 0, 2)],
    aten.unsqueeze.default: [("x", 1), ("scalar", 0)],
    aten.view.default: [("x", [12]), ("scalar", []), ("x", [2, 6])],
}


def test_every_public_entry_has_cases():
    assert set(CASES) == set(PUBLIC_ENTRIES)


@pytest.mark.parametrize("operator", list(CASES), ids=str)
def test_public_entry_calls_the_same_overload_with_the_same_arguments(operator):
    for case in CASES[operator]:
        named = tensors()
        kwargs = case[-1] if isinstance(case[-1], dict) else {}
        args = [
            named.get(a, a) if isinstance(a, str) else a for a in case if not isinstance(a, dict)
        ]
        results, calls = [], []
        for call in (torch_shim.operator_entry(operator), PUBLIC_ENTRIES[operator]):
            with Dispatched() as mode:
                results.append(call(*args, **kwargs))
            calls.append(mode.calls)
        (entry, public) = calls
        assert len(public) == 1 and public[0][0] is operator, (case, public)
        assert repr(public) == repr(entry), case
        expected, got = results
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True, msg=str(case))
