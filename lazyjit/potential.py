"""A Pyro potential energy and its gradient from one lazily compiled call.

:class:`CompiledPotential` compiles a potential energy function of a dict of unconstrained
values; :func:`potential_fn` builds Pyro's potential of a model that way
(:class:`ModelPotential`). Pyro's integrator asks for the energy and its gradient through
:func:`pyro.ops.integrator.potential_grad`; :data:`compiled_gradients` points that name at
:meth:`CompiledPotential.value_and_grad` while lazyjit's kernels (``lazyjit.mcmc``) run.
See ``docs/mcmc.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.infer.mcmc.hmc
import pyro.infer.mcmc.nuts
import pyro.ops.integrator
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc.util import initialize_model
from torch.distributions import Transform

from .backends import Backend, get_backend
from .jit import CompiledFunction
from .patching import Patches, SharedPatch
from .pyro_shim import EXCEPTION_HANDLERS

# A potential energy function: {site name: unconstrained value} -> scalar energy.
Potential = Callable[[dict[str, torch.Tensor]], torch.Tensor]

__all__ = [
    "CompiledPotential",
    "ModelPotential",
    "Potential",
    "compiled_gradients",
    "potential_fn",
]


class _AttachGradient(torch.autograd.Function):
    """Returns ``energy`` wired to ``inputs`` so that autograd yields precomputed ``grads``.

    This lets code that differentiates the potential itself (Pyro's own
    ``potential_grad``, ``HMC``/``NUTS`` kernels, user code) get the gradient that the
    compiled call already computed, instead of needing autograd through the program.
    The precomputed gradient has no graph of its own, so a second derivative would be
    silently zero: ``create_graph=True`` is refused instead.
    """

    @staticmethod
    def forward(ctx, energy: torch.Tensor, grads: tuple, *inputs: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return energy.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple:
        if torch.is_grad_enabled():  # backward runs with grad mode on only for create_graph
            raise RuntimeError(
                "lazyjit's compiled potential gives first derivatives only; evaluate "
                "CompiledPotential.fn (the eager potential) for higher derivatives"
            )
        return (None, None, *(grad_output * g for g in ctx.grads))


class CompiledPotential:
    """A potential energy function of a dict of unconstrained values, compiled lazily.

    ``fn(z)`` must return the scalar potential energy for ``z = {site name: tensor}``.
    The dict is passed to :class:`lazyjit.CompiledFunction` as its argument, so its
    tensors are the program's inputs and its names, shapes and dtypes select the
    compiled entry; everything ``fn`` closes over (data, transforms) is baked into the
    program. Pickling drops the compiled programs: each process compiles on first use.

    :param fn: the eager potential energy function.
    :param backend: a :data:`lazyjit.BACKENDS` name or a :class:`lazyjit.backends.Backend`.
    :param jit_options: keyword arguments for :func:`torch.jit.trace`.
    :param ignore_jit_warnings: hide TorchScript's ``TracerWarning``\\ s (the guard
        against structure that depends on tensor values stays on).
    :param strict: raise :class:`lazyjit.LazyJitError` instead of running eagerly when
        the potential cannot be compiled faithfully.

    Example::

        pe = lazyjit.CompiledPotential(lambda z: 0.5 * (z["x"] ** 2).sum())
        energy, grads = pe.value_and_grad({"x": torch.ones(3)})
    """

    def __init__(
        self,
        fn: Potential,
        *,
        backend: str | Backend = "auto",
        jit_options: dict | None = None,
        ignore_jit_warnings: bool = False,
        strict: bool = False,
    ):
        self.fn = fn
        self.compiled = CompiledFunction(
            fn, ignore_jit_warnings, jit_options, backend, strict=strict
        )

    def value_and_grad(
        self, z: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The potential energy at ``z`` (detached) and its gradient ``{name: tensor}``."""
        # Fresh leaves that require grad: the entry is compiled for (and the gradient is
        # taken w.r.t.) exactly these inputs, whatever the caller's tensors are.
        inputs = {name: value.detach().requires_grad_() for name, value in z.items()}
        energy, grads = self.compiled.value_and_grad(inputs)
        # The call's only tensors are the dict's values, in its order.
        return energy, dict(zip(inputs, grads.leaves))

    def __call__(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """The potential energy at ``z``.

        When autograd records and ``z`` requires grad, the result is differentiable
        w.r.t. ``z`` (first order only) with the gradient from :meth:`value_and_grad`.
        """
        if not z:
            return self.fn(z)
        # Even a plain evaluation goes through value_and_grad: one compiled entry serves
        # both, and HMC/NUTS evaluate without the gradient only a few times per run.
        energy, grads = self.value_and_grad(z)
        if torch.is_grad_enabled() and any(v.requires_grad for v in z.values()):
            return _AttachGradient.apply(energy, tuple(grads[k] for k in z), *z.values())
        return energy


class ModelPotential(CompiledPotential):
    """The compiled potential energy of a Pyro model, with what HMC/NUTS need to start.

    Returned by :func:`potential_fn`. The potential is exactly Pyro's
    (``pyro.infer.mcmc.util.initialize_model``): minus the log joint density of the
    model in unconstrained space, including the log-Jacobian of each transform and
    enumerated discrete sites summed out.

    :ivar transforms: ``{site name: transform}`` from each site's support to the
        unconstrained space (``transforms[name].inv`` maps a sample back).
    :ivar initial_params: ``{site name: unconstrained tensor}`` where the potential and
        its gradient are finite; with ``num_chains > 1`` each has a leading chain dim.
    :ivar prototype_trace: a trace of the model, as Pyro's kernels keep it.
    """

    def __init__(
        self,
        fn: Potential,
        transforms: dict[str, Transform],
        initial_params: dict[str, torch.Tensor],
        prototype_trace: poutine.Trace,
        **options: Any,
    ):
        super().__init__(fn, **options)
        self.transforms = transforms
        self.initial_params = initial_params
        self.prototype_trace = prototype_trace


def potential_fn(
    model: Callable,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    *,
    backend: str | Backend = "auto",
    transforms: dict[str, Transform] | None = None,
    max_plate_nesting: int | None = None,
    jit_options: dict | None = None,
    ignore_jit_warnings: bool = False,
    strict: bool = False,
    init_strategy: Callable = init_to_uniform,
    initial_params: dict[str, torch.Tensor] | None = None,
    num_chains: int = 1,
) -> ModelPotential:
    """Builds the compiled potential energy of ``model(*model_args, **model_kwargs)``.

    For users who pass ``potential_fn=`` to HMC/NUTS themselves or evaluate the
    potential directly::

        pe = lazyjit.potential_fn(model, (data,))
        kernel = lazyjit.NUTS(potential_fn=pe)
        mcmc = MCMC(kernel, 500, initial_params=pe.initial_params, transforms=pe.transforms)

    Nothing is compiled until the potential is first evaluated. The arguments other than
    ``backend``, ``strict`` and the jit ones are those of Pyro's ``initialize_model``.

    :raises ValueError: if a latent site is discrete and cannot be enumerated (HMC/NUTS
        need every non-enumerated latent to be continuous), or Pyro finds no initial
        point with a finite potential and gradient.
    """
    get_backend(backend)  # fail on a typo now, not at the first leapfrog step
    model_kwargs = {} if model_kwargs is None else model_kwargs
    try:
        init_params, eager_potential, transforms, trace = initialize_model(
            model,
            model_args,
            model_kwargs,
            transforms=transforms,
            max_plate_nesting=max_plate_nesting,
            num_chains=num_chains,
            init_strategy=init_strategy,
            initial_params=initial_params,
        )
    except NotImplementedError as e:
        # Pyro treats a latent without enumerate support as continuous and only fails
        # when it finds no bijection to its support; name the site instead.
        _check_no_discrete_latents(model, model_args, model_kwargs, e)
        raise
    return ModelPotential(
        eager_potential,
        transforms,
        init_params,
        trace,
        backend=backend,
        jit_options=jit_options,
        ignore_jit_warnings=ignore_jit_warnings,
        strict=strict,
    )


def _check_no_discrete_latents(
    model: Callable, model_args: tuple, model_kwargs: dict, cause: Exception
) -> None:
    with poutine.block():
        trace = poutine.trace(model).get_trace(*model_args, **model_kwargs)
    for name, site in trace.iter_stochastic_nodes():
        fn = site["fn"]
        if getattr(fn.support, "is_discrete", False) and not fn.has_enumerate_support:
            raise ValueError(
                f"HMC/NUTS cannot sample the discrete latent site {name!r} "
                f"({type(fn).__name__}): its support is not enumerable, so it can be neither "
                "integrated over nor given a gradient. Marginalize it out in the model, "
                "or sample it with a different (e.g. Gibbs or discrete) kernel."
            ) from cause


# --------------------------------------------------------------------------------------
# The hook: where Pyro's integrator gets the potential energy and its gradient.
#
# Pyro's kernels call the module global ``potential_grad(potential_fn, z)`` in three
# modules: ``pyro.ops.integrator`` (every leapfrog step of ``velocity_verlet``),
# ``pyro.infer.mcmc.hmc`` (``HMC.setup``/``HMC.sample``) and ``pyro.infer.mcmc.nuts``
# (``NUTS.sample``). Overriding the callers in lazyjit's kernels would mean copying
# Pyro's trajectory code, so while one of them runs ``setup`` or ``sample`` the name
# points at ``_potential_grad``. The hook only saves work: without it Pyro's
# ``potential_grad`` still gets the same gradient through ``CompiledPotential.__call__``.
# --------------------------------------------------------------------------------------

_HOOKED_MODULES = (pyro.ops.integrator, pyro.infer.mcmc.hmc, pyro.infer.mcmc.nuts)
_pyro_potential_grad = pyro.ops.integrator.potential_grad


def _potential_grad(
    potential_fn: Callable, z: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pyro's ``potential_grad`` contract: ``(grads, energy)``, NaN energy and zero
    grads when a registered handler (e.g. for singular matrices) claims the error."""
    if not isinstance(potential_fn, CompiledPotential):
        return _pyro_potential_grad(potential_fn, z)
    try:
        energy, grads = potential_fn.value_and_grad(z)
    except Exception as e:
        if any(handler(e) for handler in EXCEPTION_HANDLERS.values()):
            value = next(iter(z.values()))
            return {k: v.new_zeros(v.shape) for k, v in z.items()}, value.new_tensor(float("nan"))
        raise
    return grads, energy


def _hook_potential_grad() -> Patches:
    return [(module, "potential_grad", _potential_grad) for module in _HOOKED_MODULES]


#: ``with compiled_gradients(): ...`` sends Pyro's ``potential_grad`` calls for a
#: :class:`CompiledPotential` to its :meth:`~CompiledPotential.value_and_grad`, anything
#: else to Pyro's function; reference-counted across threads and nested calls.
compiled_gradients = SharedPatch(_hook_potential_grad)
