"""Every private Pyro name lazyjit reads, in one place: a Pyro upgrade is this file to read.

Checked against Pyro 1.9; an import error here names what moved. (lazyjit's kernels and
ELBOs also override private methods of the Pyro classes they derive from, as subclasses
do; ``docs/architecture.md`` lists them.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pyro
import pyro.infer.mcmc.nuts
import pyro.infer.trace_elbo
import pyro.infer.traceenum_elbo
import pyro.ops.integrator
import pyro.optim.optim
import pyro.poutine.runtime
import torch

TESTED_PYRO = "1.9"

# The process-wide param store and effect-handler stack.
PARAM_STORE = pyro.poutine.runtime._PYRO_PARAM_STORE
HANDLER_STACK: list = pyro.poutine.runtime._PYRO_STACK
# The ELBO pieces lazyjit's Jit ELBOs call as Pyro's do.
compute_log_r: Callable = pyro.infer.trace_elbo._compute_log_r
compute_dice_elbo: Callable = pyro.infer.traceenum_elbo._compute_dice_elbo
# What NUTS's _build_basetree returns, and the integrator's registered error handlers
# (a singular matrix becomes a NaN energy).
TreeInfo: type = pyro.infer.mcmc.nuts._TreeInfo
EXCEPTION_HANDLERS: dict[str, Callable[[Exception], bool]] = pyro.ops.integrator._EXCEPTION_HANDLERS


def store_params() -> dict[str, torch.Tensor]:
    """The param store's ``{name: unconstrained tensor}`` (the live dict, not a copy)."""
    return PARAM_STORE._params


def store_constraints() -> dict[str, Any]:
    """The param store's ``{name: constraint}`` (the live dict, not a copy)."""
    return PARAM_STORE._constraints


def create_optimizers(optim: pyro.optim.PyroOptim, params: Iterable[torch.Tensor]) -> None:
    """What ``PyroOptim.__call__`` does for a param it has not seen, short of stepping:
    its torch optimizer, its gradient clipping, and the state ``set_state`` left for it."""
    for param in params:
        if param in optim.optim_objs:
            continue
        optimizer = optim.optim_objs[param] = optim._get_optim(param)
        optim.grad_clip[param] = optim._get_grad_clip(param)
        state = optim._state_waiting_to_be_consumed.pop(PARAM_STORE.param_name(param), None)
        if state is not None:
            pyro.optim.optim._load_state_dict(optimizer, state)
