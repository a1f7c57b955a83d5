"""A lazyjit ``JitTrace_ELBO`` for MiniPyro (``pyro.contrib.minipyro``).

MiniPyro has its own param store and effect handlers, so Pyro's ELBOs and
:func:`lazyjit.trace` (which read Pyro's param store) do not apply to it. This module
compiles MiniPyro's own ``elbo`` with a lazyjit backend, the way MiniPyro's
``JitTrace_ELBO`` compiles it with ``torch.jit.trace``. :func:`lazyjit.install` puts it
at ``pyro.contrib.minipyro.JitTrace_ELBO``, so Pyro's ``examples/minipyro.py --jit``
runs on lazyjit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch
from pyro.contrib.minipyro import PARAM_STORE, block, elbo, param, replay, trace
from pyro.distributions import validation_enabled
from torch.distributions import transform_to

from .backends import Backend, Program, get_backend
from .errors import StructureError, StructureWarning
from .tensors import keep_random_stream


class JitTrace_ELBO:
    """MiniPyro's ``JitTrace_ELBO``, compiled lazily by a lazyjit backend.

    Same contract as :class:`pyro.contrib.minipyro.JitTrace_ELBO`: called as
    ``elbo(model, guide, *args)`` it returns the loss (the negative ELBO) as a
    differentiable tensor, for MiniPyro's ``SVI`` to call ``backward()`` on. Unlike
    MiniPyro's, it compiles one program per call signature (model, guide, shapes, dtypes
    and devices of the tensor arguments, values of the others, grad mode) instead of
    reusing its first one, and compiling draws no random numbers, so a seeded run gives
    the losses and params of MiniPyro's eager ``elbo``.

    :param backend: a lazyjit backend name (``lazyjit.BACKENDS``) or object; ``"auto"``
        by default.
    :param ignore_jit_warnings: hide TorchScript's ``TracerWarning``\\ s, as in MiniPyro.

    Other keyword arguments are accepted and ignored, as MiniPyro does. Example::

        import pyro.distributions as dist
        import torch
        from pyro.contrib import minipyro

        import lazyjit.minipyro

        def model(data):
            loc = minipyro.sample("loc", dist.Normal(0.0, 1.0))
            with minipyro.plate("data", len(data), dim=-1):
                minipyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

        def guide(data):
            loc = minipyro.param("loc_q", torch.tensor(0.0))
            scale = minipyro.param("scale_q", torch.tensor(1.0), dist.constraints.positive)
            minipyro.sample("loc", dist.Normal(loc, scale))

        elbo = lazyjit.minipyro.JitTrace_ELBO()
        svi = minipyro.SVI(model, guide, minipyro.Adam({"lr": 0.01}), elbo)
        data = torch.randn(100) + 3.0
        for step in range(1000):
            svi.step(data)
    """

    def __init__(self, backend: str | Backend = "auto", **kwargs: Any):
        self.ignore_jit_warnings = kwargs.pop("ignore_jit_warnings", False)
        self.backend = get_backend(backend)
        # signature -> (param names, program); an entry holds its model and guide, so
        # their ids in the key cannot be reused while it lives.
        self._entries: dict[tuple, tuple[list[str], Program]] = {}

    def __call__(self, model: Callable, guide: Callable, *args: Any) -> torch.Tensor:
        key = (id(model), id(guide), torch.is_grad_enabled(), *map(_signature, args))
        entry = self._entries.get(key)
        if entry is None or any(name not in PARAM_STORE for name in entry[0]):
            # A new signature, or the param store was cleared since: find the params anew.
            entry = self._entries[key] = self._compile(model, guide, args)
        names, program = entry
        # Read through param(), as MiniPyro's does: SVI's trace records these sites to
        # know which params to step.
        params = [param(name).unconstrained() for name in names]
        return program(*params, *[a for a in args if isinstance(a, torch.Tensor)])[0]

    def _compile(self, model: Callable, guide: Callable, args: tuple) -> tuple[list[str], Program]:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        is_tensor = [isinstance(a, torch.Tensor) for a in args]
        constants = [None if t else a for a, t in zip(args, is_tensor)]  # keeps no tensor alive
        # Neither finding the params nor compiling may move the random stream: the first
        # compiled call must draw what eager elbo() would.
        with keep_random_stream(tensors):
            # MiniPyro's own param discovery: creates the params, records their names.
            with block(), trace() as found, block(hide_fn=lambda m: m["type"] != "param"):
                elbo(model, guide, *args)
            names = list(found)
            constraints = [PARAM_STORE[name][1] for name in names]

            def flat(*inputs: torch.Tensor) -> tuple[torch.Tensor]:
                values = {
                    name: {"value": transform_to(c)(u)}
                    for name, c, u in zip(names, constraints, inputs)
                }
                rest = iter(inputs[len(names) :])
                call_args = [next(rest) if t else c for c, t in zip(constants, is_tensor)]
                # The sites in here belong to the program; the caller's handlers (SVI's
                # param trace) see only the param() reads in __call__.
                with block():
                    return (replay(elbo, guide_trace=values)(model, guide, *call_args),)

            params = [PARAM_STORE[name][0] for name in names]
            # Validation calls .item(), which would bake one outcome into the program.
            with validation_enabled(False), warnings.catch_warnings():
                if self.ignore_jit_warnings:
                    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                try:
                    program = self.backend.compile(flat, [*params, *tensors], {})
                except StructureError as e:
                    warnings.warn(
                        f"lazyjit.minipyro.JitTrace_ELBO runs eagerly: the ELBO's structure "
                        f"depends on a tensor value ({e})",
                        StructureWarning,
                        stacklevel=3,
                    )
                    program = Program(flat)
        return names, program


def _signature(arg: Any) -> Hashable:
    if isinstance(arg, torch.Tensor):
        return (arg.shape, arg.dtype, arg.device, arg.requires_grad)
    return (type(arg), arg)  # the value is compiled in
