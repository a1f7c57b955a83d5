"""Helpers on a call's tensors: gradients of a scalar, copies, and the random stream
kept around a run."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.overrides import has_torch_function

from . import torch_shim


def copies(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """New tensors with the same values and ``requires_grad``, outside any autograd graph."""
    return [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]


def rng_snapshot(tensors: Sequence[torch.Tensor]) -> Callable[[], None]:
    """A function that puts the CPU generator, and those of the GPUs ``tensors`` live
    on, back to their present state (for a call that must be run again)."""
    cpu = torch.get_rng_state()
    gpus = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    states = [(d, torch.cuda.get_rng_state(d)) for d in gpus]

    def restore() -> None:
        torch.set_rng_state(cpu)
        for device, state in states:
            torch.cuda.set_rng_state(state, device)

    return restore


@contextlib.contextmanager
def keep_random_stream(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Restores the CPU generator, and those of the GPUs ``tensors`` live on, on exit:
    what runs inside draws nothing from the caller's random stream."""
    restore = rng_snapshot(tensors)
    try:
        yield
    finally:
        restore()


def gradients(output: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of a scalar ``output`` w.r.t. each of ``targets``, by autograd: zeros
    where it does not depend on one (or on none: an output that requires no grad)."""
    if targets and output.requires_grad:
        return _grad(output, targets)
    return [torch.zeros_like(t) for t in targets]


def _grad(output: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
    """``torch.autograd.grad(output, targets, allow_unused=True, materialize_grads=True)``
    for a scalar ``output``, without the Python argument handling of ``torch.autograd.grad``.

    That wrapper's argument handling is a sizeable part of a small compiled step
    (``docs/architecture.md``). Anything unusual (a tensor subclass, a non-scalar output,
    a torch without this engine entry point) takes the public function.
    """
    if (
        torch_shim.run_backward is None
        or output.numel() != 1
        or has_torch_function((output, *targets))
    ):
        return list(torch.autograd.grad(output, targets, allow_unused=True, materialize_grads=True))
    grads = torch_shim.run_backward(
        (output,),
        (torch.ones_like(output),),
        False,  # keep_graph
        False,  # create_graph
        tuple(targets),
        True,  # allow_unreachable: an unused target gets None, as with allow_unused
        False,  # accumulate_grad: return the gradients instead of adding them to .grad
    )
    return [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
