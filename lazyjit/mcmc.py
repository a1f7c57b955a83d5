"""HMC and NUTS whose potential energy and its gradient come from one compiled call.

With ``jit_compile=True``, :class:`HMC` and :class:`NUTS` compile their potential energy
(``lazyjit.potential``) and answer each of Pyro's ``potential_grad`` calls with
:meth:`lazyjit.CompiledPotential.value_and_grad`: the backend decides how the gradient is
computed (TorchScript runs autograd over the compiled program; a graph-capture backend
returns it from inside its graph). On backends that compile a captured graph
(``Backend.compiles_graph``), :class:`NUTS` compiles each whole tree leaf instead
(:class:`CompiledLeaf`). See ``docs/mcmc.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.infer.mcmc.hmc
import pyro.infer.mcmc.nuts
import torch
from pyro.infer.mcmc.adaptation import BlockMassMatrix
from pyro.ops.integrator import velocity_verlet

from .backends import AutoBackend, Backend, EagerBackend, get_backend
from .jit import CompiledFunction
from .potential import CompiledPotential, Potential, compiled_gradients, potential_fn
from .pyro_shim import EXCEPTION_HANDLERS, TreeInfo

__all__ = ["HMC", "NUTS", "CompiledLeaf"]


# --------------------------------------------------------------------------------------
# A NUTS tree leaf as one compiled call.
#
# Once the potential and its gradient are compiled, most of a leapfrog step is the eager
# arithmetic around them, paid op by op: the momentum and position updates, the mass
# matrix products, the kinetic energy and the leaf's weight. NUTS builds every leaf with
# ``_build_basetree``, so :class:`NUTS` compiles that whole method body, Pyro's own
# functions running inside the capture.
# --------------------------------------------------------------------------------------


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
        # not a new one per leaf.
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
    ) -> TreeInfo:
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
        return TreeInfo(
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
    return auto.replace(first=EagerBackend())


def _leaf_structure(kernel: NUTS) -> tuple[tuple, tuple, tuple]:
    # The dicts' orders: z's is the potential's site order, r's the mass matrix blocks'.
    z_names = tuple(kernel.initial_params)
    blocks = tuple(kernel.mass_matrix_adapter.inverse_mass_matrix)
    r_names = tuple(name for block in blocks for name in block)
    return z_names, r_names, blocks


class _CompiledPotentialKernel:
    """What :class:`HMC` and :class:`NUTS` add to Pyro's kernels."""

    backend: str | Backend
    strict: bool

    def _configure(self, backend: str | Backend, strict: bool) -> None:
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
        with compiled_gradients():
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
        with compiled_gradients():
            return super().sample(params)


class HMC(_CompiledPotentialKernel, pyro.infer.mcmc.hmc.HMC):
    """:class:`pyro.infer.mcmc.HMC` with a lazily compiled potential energy and gradient.

    Every argument but ``backend`` and ``strict`` is Pyro's and goes to Pyro's ``HMC``
    unchanged, positional ones in Pyro's order (``model``, ``potential_fn``,
    ``step_size``, ``trajectory_length``, ``num_steps``, ...). With ``jit_compile=True``
    the potential energy of ``model`` (or ``potential_fn`` itself) is compiled by lazyjit
    on first use, and each leapfrog step gets the energy and its gradient from
    :meth:`lazyjit.CompiledPotential.value_and_grad`; with ``jit_compile=False`` it is
    Pyro's HMC unchanged.

    Example::

        kernel = lazyjit.HMC(model, step_size=0.1, num_steps=10, jit_compile=True)
        mcmc = pyro.infer.MCMC(kernel, num_samples=500, warmup_steps=200)
        mcmc.run(data)

    :param model: Pyro's: the model whose potential energy is sampled.
    :param potential_fn: Pyro's: a potential energy of ``{site name: tensor}`` instead of
        a model; wrapped in a :class:`lazyjit.CompiledPotential` when ``jit_compile``.
    :param args: Pyro's other positional arguments, in Pyro's order.
    :param backend: the lazyjit backend that compiles the potential, a
        :data:`lazyjit.BACKENDS` name (an unknown one raises here) or a
        :class:`lazyjit.backends.Backend`.
    :param strict: raise :class:`lazyjit.LazyJitError` instead of running the potential
        eagerly when it cannot be compiled faithfully (e.g. it branches on a latent value).
    :param kwargs: Pyro's other keyword arguments (``jit_compile``, ``full_mass``, ...).
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Potential | None = None,
        *args: Any,
        backend: str | Backend = "auto",
        strict: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, potential_fn, *args, **kwargs)
        self._configure(backend, strict)


class NUTS(_CompiledPotentialKernel, pyro.infer.mcmc.nuts.NUTS):
    """:class:`pyro.infer.mcmc.NUTS` with a lazily compiled potential energy and gradient.

    Every argument but ``backend`` and ``strict`` is Pyro's and goes to Pyro's ``NUTS``
    unchanged, positional ones in Pyro's order (``model``, ``potential_fn``,
    ``step_size``, ``adapt_step_size``, ...); ``backend`` and ``strict`` are those of
    :class:`HMC`. On a backend that compiles a captured graph
    (``Backend.compiles_graph``: ``"aten-jit"``, ``"inductor"``, ``"auto"``) each tree
    leaf (a leapfrog step and the leaf's energy, weight and acceptance probability) is
    one compiled call, a :class:`CompiledLeaf`.

    Example::

        kernel = lazyjit.NUTS(model, jit_compile=True, max_tree_depth=8, backend="aten-jit")
        mcmc = pyro.infer.MCMC(kernel, num_samples=500, warmup_steps=500)
        mcmc.run(data)

    :param model: Pyro's: the model whose potential energy is sampled.
    :param potential_fn: Pyro's: a potential energy of ``{site name: tensor}`` instead of
        a model; wrapped in a :class:`lazyjit.CompiledPotential` when ``jit_compile``.
    :param args: Pyro's other positional arguments, in Pyro's order.
    :param backend: the lazyjit backend that compiles the potential and the leaves (a
        name or a :class:`lazyjit.backends.Backend`).
    :param strict: raise :class:`lazyjit.LazyJitError` instead of running eagerly what
        cannot be compiled faithfully.
    :param kwargs: Pyro's other keyword arguments (``jit_compile``, ``max_tree_depth``, ...).
    """

    def __init__(
        self,
        model: Callable | None = None,
        potential_fn: Potential | None = None,
        *args: Any,
        backend: str | Backend = "auto",
        strict: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model, potential_fn, *args, **kwargs)
        self._configure(backend, strict)

    @property
    def compiled_leaf(self) -> CompiledLeaf | None:
        """The :class:`CompiledLeaf` that builds this kernel's tree leaves (``None`` before
        the first leaf, or where leaves run Pyro's own code): its ``compiled.stats`` count
        the leaves, one leapfrog step each."""
        return self._leaf

    def _build_basetree(
        self,
        z: dict[str, torch.Tensor],
        r: dict[str, torch.Tensor],
        z_grads: dict[str, torch.Tensor],
        log_slice: torch.Tensor,
        direction: int,
        energy_current: torch.Tensor,
    ) -> TreeInfo:
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
            if any(handler(e) for handler in EXCEPTION_HANDLERS.values()):
                return super()._build_basetree(z, r, z_grads, log_slice, direction, energy_current)
            raise

    def _compiled_leaf(self) -> CompiledLeaf | None:
        potential = self.potential_fn
        if not (
            isinstance(potential, CompiledPotential)
            # Elsewhere the leaf's ops would run one by one, as Pyro runs them, or (on
            # TorchScript) the leaf would not keep Pyro's jit's draws.
            and potential.compiled.backend.compiles_graph
            # A potential that runs eagerly (its structure reads a value) has no graph.
            and not potential.compiled.stats.fallbacks
            and type(self.mass_matrix_adapter) is BlockMassMatrix
        ):
            return None
        if self._leaf is None or self._leaf.potential is not potential:
            self._leaf = CompiledLeaf(self)
        return self._leaf
