"""HMC and NUTS whose potential energy and its gradient come from one compiled call.

Pyro's integrator asks for the potential energy and its gradient at every leapfrog step
through :func:`pyro.ops.integrator.potential_grad`. With ``jit_compile=True``,
:class:`HMC` and :class:`NUTS` answer that call with
:meth:`CompiledPotential.value_and_grad`, which is
:meth:`lazyjit.CompiledFunction.value_and_grad` on the potential: the backend decides
how the gradient is computed (TorchScript runs autograd over the compiled program; a
graph-capture backend returns it from inside its graph). On the graph-compiling
backends, :class:`NUTS` compiles each whole tree leaf instead (:class:`CompiledLeaf`).
See ``docs/mcmc.md``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyro.infer.mcmc.hmc
import pyro.infer.mcmc.nuts
import pyro.ops.integrator
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc.adaptation import BlockMassMatrix
from pyro.infer.mcmc.nuts import _TreeInfo
from pyro.infer.mcmc.util import initialize_model
from pyro.ops.integrator import _EXCEPTION_HANDLERS, velocity_verlet
from torch.distributions import Transform

from .backends import AutoBackend, Backend, get_backend
from .jit import CompiledFunction

# A potential energy function: {site name: unconstrained value} -> scalar energy.
Potential = Callable[[dict[str, torch.Tensor]], torch.Tensor]

__all__ = ["HMC", "NUTS", "CompiledLeaf", "CompiledPotential", "ModelPotential", "potential_fn"]


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
    :param backend: a :data:`lazyjit.BACKENDS` name.
    :param jit_options: keyword arguments for :func:`torch.jit.trace`.
    :param ignore_jit_warnings: hide TorchScript's ``TracerWarning``\\ s (the guard
        against structure that depends on tensor values stays on).
    :param strict: raise :class:`lazyjit.LazyJitError` instead of running eagerly when
        the potential cannot be compiled faithfully.
    """

    def __init__(
        self,
        fn: Potential,
        *,
        backend: str = "auto",
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
    backend: str = "auto",
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
# (``NUTS.sample``). Overriding them in our subclasses would mean copying the trajectory
# code, so while one of our kernels runs ``setup`` or ``sample`` the name is pointed at
# ``_potential_grad``, which sends a :class:`CompiledPotential` to its
# ``value_and_grad`` and anything else to Pyro's function; the originals come back when
# the last such call returns. The hook only saves work: without it Pyro's
# ``potential_grad`` still gets the same gradient through ``CompiledPotential.__call__``.
# --------------------------------------------------------------------------------------

_HOOKED_MODULES = (pyro.ops.integrator, pyro.infer.mcmc.hmc, pyro.infer.mcmc.nuts)
_pyro_potential_grad = pyro.ops.integrator.potential_grad
_hook_lock = threading.Lock()
_hook_depth = 0
_hook_saved: list[Callable] = []


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
        if any(handler(e) for handler in _EXCEPTION_HANDLERS.values()):
            value = next(iter(z.values()))
            return {k: v.new_zeros(v.shape) for k, v in z.items()}, value.new_tensor(float("nan"))
        raise
    return grads, energy


@contextlib.contextmanager
def _compiled_gradients() -> Iterator[None]:
    global _hook_depth
    with _hook_lock:
        if _hook_depth == 0:
            _hook_saved[:] = [m.potential_grad for m in _HOOKED_MODULES]
            for module in _HOOKED_MODULES:
                module.potential_grad = _potential_grad
        _hook_depth += 1
    try:
        yield
    finally:
        with _hook_lock:
            _hook_depth -= 1
            if _hook_depth == 0:
                for module, original in zip(_HOOKED_MODULES, _hook_saved):
                    module.potential_grad = original


# --------------------------------------------------------------------------------------
# A NUTS tree leaf as one compiled call.
#
# Once the potential and its gradient are compiled, most of a leapfrog step is the eager
# arithmetic around them: the momentum and position updates, the mass matrix products,
# the kinetic energy and the leaf's weight, a few microseconds an op (measured on the
# seed Gaussian model: 98 us a leaf with an inductor potential, 47 us as one inductor
# graph). NUTS builds every leaf with ``_build_basetree``, so :class:`NUTS` compiles that
# whole method body, Pyro's own functions run inside the capture.
# --------------------------------------------------------------------------------------

# The backends on which a leaf is compiled: those that compile the captured graph.
# "torchscript" keeps Pyro's jit's draws; "eager" and "aten" would run the leaf's ops one
# by one, as Pyro does.
_LEAF_BACKENDS = frozenset({"aten-jit", "inductor", "auto"})


class _Block(BlockMassMatrix):
    """A :class:`BlockMassMatrix` holding given (inverse, inverse square root) tensors,
    so that its ``kinetic_grad`` and ``unscale`` read them as inputs of a compiled leaf."""

    def __init__(self, blocks: tuple, inverse: tuple, sqrt_inverse: tuple):
        self._inverse_mass_matrix = dict(zip(blocks, inverse))
        self._mass_matrix_sqrt_inverse = dict(zip(blocks, sqrt_inverse))


class CompiledLeaf:
    """One NUTS tree leaf in one compiled call: what Pyro's ``NUTS._build_basetree`` does,
    a velocity Verlet step, the new energy (``inf`` for NaN), the leaf's weight, whether it
    diverges and its acceptance probability.

    Compiled with the potential's backend, jit options and strictness; the step size,
    the slice, the current energy and the mass matrix are inputs, so step size and mass
    matrix adaptation need no recompile. Only a :class:`BlockMassMatrix` (Pyro's adapter
    unless ``full_mass`` uses its arrowhead structure) is supported.

    :param kernel: the :class:`NUTS` kernel whose potential, mass matrix adapter and
        sampling scheme the leaf follows.
    :ivar compiled: the :class:`lazyjit.CompiledFunction` of the leaf.
    """

    def __init__(self, kernel: NUTS):
        potential = kernel.potential_fn
        self.potential = potential
        self._structure = _leaf_structure(kernel)
        z_names, r_names, blocks = self._structure
        multinomial = kernel.use_multinomial_sampling
        max_sliced_energy = kernel._max_sliced_energy
        kinetic_energy = kernel._kinetic_energy  # reads no kernel state
        n, b = len(z_names), len(blocks)

        # Inputs and outputs are flat tuples of tensors: nested dicts would cost a pytree
        # walk each way at every leaf.
        def nuts_leaf(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            z = dict(zip(z_names, inputs[:n]))
            r = dict(zip(r_names, inputs[n : 2 * n]))
            z_grads = dict(zip(z_names, inputs[2 * n : 3 * n]))
            step_size, log_slice, energy_current = inputs[3 * n : 3 * n + 3]
            adapter = _Block(blocks, inputs[3 * n + 3 : 3 * n + 3 + b], inputs[3 * n + 3 + b :])
            z_new, r_new, z_grads, potential_energy = velocity_verlet(
                z, r, potential.fn, adapter.kinetic_grad, step_size, z_grads=z_grads
            )
            r_unscaled = adapter.unscale(r_new)
            energy_new = potential_energy + kinetic_energy(r_unscaled)
            energy_new = torch.where(
                torch.isnan(energy_new), torch.full_like(energy_new, math.inf), energy_new
            )
            sliced_energy = energy_new + log_slice
            diverging = sliced_energy > max_sliced_energy
            accept_prob = (-(energy_new - energy_current)).exp().clamp(max=1.0)
            if multinomial:
                tree_weight = -sliced_energy
            else:
                tree_weight = (sliced_energy <= 0).to(sliced_energy.dtype)
            return (
                *z_new.values(),
                *r_new.values(),
                *r_unscaled.values(),
                *z_grads.values(),
                potential_energy,
                tree_weight,
                diverging,
                accept_prob,
            )

        compiled = potential.compiled
        backend = compiled.backend
        self.compiled = CompiledFunction(
            nuts_leaf,
            compiled.ignore_warnings,
            compiled.jit_options,
            _leaf_auto(backend) if isinstance(backend, AutoBackend) else backend,
            strict=compiled.strict,
        )
        self._step_tensors: dict[tuple[float, torch.dtype], torch.Tensor] = {}

    def _step_tensor(self, step_size: float, dtype: torch.dtype) -> torch.Tensor:
        # A trajectory's leaves share one step size (of either sign): a tensor for each,
        # not one per leaf (2 us of a leaf's 140).
        key = (step_size, dtype)
        tensor = self._step_tensors.get(key)
        if tensor is None:
            if len(self._step_tensors) >= 4:  # adaptation has moved the step size on
                self._step_tensors.clear()
            tensor = self._step_tensors[key] = torch.tensor(step_size, dtype=dtype)
        return tensor

    def __call__(
        self,
        z: dict[str, torch.Tensor],
        r: dict[str, torch.Tensor],
        z_grads: dict[str, torch.Tensor],
        log_slice: torch.Tensor,
        step_size: float,
        energy_current: torch.Tensor,
        adapter: BlockMassMatrix,
    ) -> _TreeInfo:
        """The leaf one step of ``step_size`` from ``(z, r)``, as ``_build_basetree``
        returns it."""
        z_names, r_names, blocks = self._structure
        n, b = len(z_names), len(blocks)
        out = self.compiled(
            *(z[name] for name in z_names),
            *(r[name] for name in r_names),
            *(z_grads[name] for name in z_names),
            self._step_tensor(step_size, energy_current.dtype),
            log_slice,
            energy_current,
            *(adapter.inverse_mass_matrix[block] for block in blocks),
            *(adapter._mass_matrix_sqrt_inverse[block] for block in blocks),
        )
        z_new = dict(zip(z_names, out[:n]))
        r_new = dict(zip(r_names, out[n : 2 * n]))
        r_unscaled = dict(zip(blocks, out[2 * n : 2 * n + b]))
        grads = dict(zip(z_names, out[2 * n + b : 3 * n + b]))
        potential_energy, tree_weight, diverging, accept_prob = out[3 * n + b :]
        # Pyro's field order: the leaf is its tree's left end, right end and proposal.
        return _TreeInfo(
            z_new,
            r_new,
            r_unscaled,
            grads,
            z_new,
            r_new,
            r_unscaled,
            grads,
            z_new,
            potential_energy,
            grads,
            r_unscaled,
            tree_weight,
            False,
            diverging,
            accept_prob,
            1,
        )


def _leaf_auto(auto: AutoBackend) -> AutoBackend:
    # TorchScript's tracer cannot record the gradient inside a leaf, so tier 0 is eager
    # (the leaf's ops one by one, as Pyro runs them); the tiers above are auto's own.
    return AutoBackend(auto.policy, first=Backend())


def _leaf_structure(kernel: NUTS) -> tuple[tuple, tuple, tuple]:
    # The dicts' orders: z's is the potential's site order, r's the mass matrix blocks'.
    z_names = tuple(kernel.initial_params)
    blocks = tuple(kernel.mass_matrix_adapter.inverse_mass_matrix)
    r_names = tuple(name for block in blocks for name in block)
    return z_names, r_names, blocks


class _CompiledPotentialKernel:
    """What :class:`HMC` and :class:`NUTS` add to Pyro's kernels."""

    backend: str
    strict: bool

    def _configure(self, backend: str, strict: bool) -> None:
        get_backend(backend)
        self.backend = backend
        self.strict = strict
        self._leaf: CompiledLeaf | None = None
        if (
            self._jit_compile
            and self.potential_fn is not None
            and not isinstance(self.potential_fn, CompiledPotential)
        ):
            self.potential_fn = CompiledPotential(self.potential_fn, **self._compile_options())

    def __getstate__(self) -> dict:
        # A compiled leaf closes over the kernel; like the potential's programs it is
        # rebuilt in each process (MCMC's worker processes).
        return {**self.__dict__, "_leaf": None}

    def _compile_options(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "jit_options": self._jit_options,
            "ignore_jit_warnings": self._ignore_jit_warnings,
            "strict": self.strict,
        }

    def _initialize_model_properties(self, model_args: tuple, model_kwargs: dict) -> None:
        if not self._jit_compile:
            super()._initialize_model_properties(model_args, model_kwargs)
            return
        potential = potential_fn(
            self.model,
            model_args,
            model_kwargs,
            transforms=self.transforms,
            max_plate_nesting=self._max_plate_nesting,
            init_strategy=self._init_strategy,
            initial_params=self._initial_params,
            **self._compile_options(),
        )
        self.potential_fn = potential
        self.transforms = potential.transforms
        self._initial_params = potential.initial_params
        self._prototype_trace = potential.prototype_trace

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        """Pyro's ``setup``; the compiled potential is built here and compiled on first use."""
        with _compiled_gradients():
            super().setup(warmup_steps, *args, **kwargs)

    def _initialize_adapter(self) -> None:
        # Runs right after the first potential/gradient evaluation and before the step
        # size search: from a NaN energy, Pyro's kernels go on and fail later with an
        # unrelated error (NUTS: a Bernoulli probability check on a NaN tree weight).
        if isinstance(self.potential_fn, CompiledPotential):
            energy, grads = self._potential_energy_last, self._z_grads_last
            if not (
                torch.isfinite(energy) and all(torch.isfinite(g).all() for g in grads.values())
            ):
                raise ValueError(
                    f"the potential energy is {energy.item()} (or its gradient is not "
                    f"finite) at the initial point (sites {sorted(self.initial_params)}); "
                    "HMC/NUTS cannot start there. Pass initial_params (in unconstrained "
                    "space) where the model's log density is finite. If jit_compile=False "
                    "starts fine from the same point, please report a lazyjit bug."
                )
        super()._initialize_adapter()

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pyro's ``sample``, with the potential and gradient from one compiled call."""
        with _compiled_gradients():
            return super().sample(params)


class HMC(_CompiledPotentialKernel, pyro.infer.mcmc.hmc.HMC):
    """:class:`pyro.infer.mcmc.HMC` with a lazily compiled potential energy and gradient.

    The arguments are Pyro's. With ``jit_compile=True`` the potential energy of
    ``model`` (or ``potential_fn`` itself) is compiled by lazyjit on first use, and each
    leapfrog step gets the energy and its gradient from
    :meth:`CompiledPotential.value_and_grad`; with ``jit_compile=False`` it is Pyro's
    HMC unchanged.

    :param backend: the lazyjit backend that compiles the potential.
    :param strict: raise :class:`lazyjit.LazyJitError` instead of running the potential
        eagerly when it cannot be compiled faithfully (e.g. it branches on a latent value).
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Potential | None = None,
        step_size: float = 1,
        trajectory_length: float | None = None,
        num_steps: int | None = None,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        full_mass: bool | list[tuple[str, ...]] = False,
        transforms: dict[str, Transform] | None = None,
        max_plate_nesting: int | None = None,
        jit_compile: bool = False,
        jit_options: dict | None = None,
        ignore_jit_warnings: bool = False,
        target_accept_prob: float = 0.8,
        init_strategy: Callable = init_to_uniform,
        *,
        min_stepsize: float = 1e-10,
        max_stepsize: float = 1e10,
        backend: str = "auto",
        strict: bool = False,
    ):
        super().__init__(
            model,
            potential_fn,
            step_size,
            trajectory_length,
            num_steps,
            adapt_step_size,
            adapt_mass_matrix,
            full_mass,
            transforms,
            max_plate_nesting,
            jit_compile,
            jit_options,
            ignore_jit_warnings,
            target_accept_prob,
            init_strategy,
            min_stepsize=min_stepsize,
            max_stepsize=max_stepsize,
        )
        self._configure(backend, strict)


class NUTS(_CompiledPotentialKernel, pyro.infer.mcmc.nuts.NUTS):
    """:class:`pyro.infer.mcmc.NUTS` with a lazily compiled potential energy and gradient.

    The arguments are Pyro's; ``backend`` and ``strict`` are those of :class:`HMC`. On the
    ``"aten-jit"``, ``"inductor"`` and ``"auto"`` backends each tree leaf (a leapfrog step
    and the leaf's energy, weight and acceptance probability) is one compiled call, a
    :class:`CompiledLeaf`.
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Potential | None = None,
        step_size: float = 1,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        full_mass: bool | list[tuple[str, ...]] = False,
        use_multinomial_sampling: bool = True,
        transforms: dict[str, Transform] | None = None,
        max_plate_nesting: int | None = None,
        jit_compile: bool = False,
        jit_options: dict | None = None,
        ignore_jit_warnings: bool = False,
        target_accept_prob: float = 0.8,
        max_tree_depth: int = 10,
        init_strategy: Callable = init_to_uniform,
        *,
        backend: str = "auto",
        strict: bool = False,
    ):
        super().__init__(
            model,
            potential_fn,
            step_size,
            adapt_step_size,
            adapt_mass_matrix,
            full_mass,
            use_multinomial_sampling,
            transforms,
            max_plate_nesting,
            jit_compile,
            jit_options,
            ignore_jit_warnings,
            target_accept_prob,
            max_tree_depth,
            init_strategy,
        )
        self._configure(backend, strict)

    def _build_basetree(
        self,
        z: dict[str, torch.Tensor],
        r: dict[str, torch.Tensor],
        z_grads: dict[str, torch.Tensor],
        log_slice: torch.Tensor,
        direction: int,
        energy_current: torch.Tensor,
    ) -> _TreeInfo:
        leaf = self._compiled_leaf()
        if leaf is None:
            return super()._build_basetree(z, r, z_grads, log_slice, direction, energy_current)
        step_size = self.step_size if direction == 1 else -self.step_size
        try:
            return leaf(
                z, r, z_grads, log_slice, step_size, energy_current, self.mass_matrix_adapter
            )
        except Exception as e:
            # Pyro's path turns an error that a registered handler claims (a singular
            # matrix) into a NaN energy; the leaf has no random draw to repeat.
            if any(handler(e) for handler in _EXCEPTION_HANDLERS.values()):
                return super()._build_basetree(z, r, z_grads, log_slice, direction, energy_current)
            raise

    def _compiled_leaf(self) -> CompiledLeaf | None:
        potential = self.potential_fn
        if not (
            isinstance(potential, CompiledPotential)
            and potential.compiled.backend.name in _LEAF_BACKENDS
            # A potential that runs eagerly (its structure reads a value) has no graph.
            and not potential.compiled.stats.fallbacks
            and type(self.mass_matrix_adapter) is BlockMassMatrix
        ):
            return None
        if self._leaf is None or self._leaf.potential is not potential:
            self._leaf = CompiledLeaf(self)
        return self._leaf
