"""An exported function (:func:`lazyjit.export`) loaded from its file with torch alone.

The file is a PT2 archive: a ``torch.export`` ``ExportedProgram``, with AOTInductor's
compiled model beside it where it was exported with ``aot=True``, and lazyjit's
description of its inputs in ``extra/lazyjit.json``. This module imports no Pyro (nor
anything of lazyjit that does), so that a service loading an artifact starts without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from . import torch_shim
from .errors import LazyJitError

META_FILE = "lazyjit.json"
FORMAT = 1


@dataclass(frozen=True)
class ArtifactInfo:
    """What lazyjit records in an artifact beside the program.

    :ivar function: the exported function's name.
    :ivar num_tensors: how many tensor arguments a call takes.
    :ivar params: ``"bake"`` (the params' values are in the artifact) or ``"inputs"``
        (a call passes them, by name).
    :ivar param_names: the params' names in the param store, in the order the program
        takes them.
    :ivar dynamic: ``{tensor argument index: {dimension: name}}``: the sizes that may vary.
    :ivar random: whether the program draws random numbers.
    :ivar aot: whether the archive holds AOTInductor's compiled model.
    """

    function: str
    num_tensors: int
    params: str
    param_names: tuple[str, ...]
    dynamic: dict[int, dict[int, str]]
    random: bool
    aot: bool
    format: int = FORMAT

    def to_json(self) -> str:
        """The text stored in the archive's ``extra/lazyjit.json``."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ArtifactInfo:
        """Reads :meth:`to_json`'s text; raises :class:`LazyJitError` for another format."""
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise LazyJitError(
                f"this artifact has lazyjit's format {data.get('format')}; this lazyjit "
                f"reads format {FORMAT}"
            )
        data["param_names"] = tuple(data["param_names"])
        data["dynamic"] = {
            int(i): {int(d): n for d, n in dims.items()} for i, dims in data["dynamic"].items()
        }
        return cls(**data)


class Artifact:
    """A loaded export: call it as ``artifact(*tensors)``, or ``artifact(*tensors,
    params=...)`` for an artifact exported with ``params="inputs"``.

    :param tensors: the tensor arguments of the exported call, in the order they appear
        in its ``args`` and then its ``kwargs``.
    :param params: the unconstrained param values by name (a mapping holding at least
        :attr:`info.param_names <ArtifactInfo.param_names>`, such as
        ``pyro.get_param_store().get_state()["params"]``), for ``params="inputs"``.
    :param seed: draw the program's random numbers from a generator seeded with this,
        leaving the global random stream alone.
    :param generator: draw them from this ``torch.Generator`` (it advances as if the
        program had drawn from it), leaving the global random stream alone. Without
        ``seed`` or ``generator`` a random program draws from the global stream, as eager
        Pyro does.

    :ivar info: the :class:`ArtifactInfo`.
    :ivar path: the file it was loaded from.
    :ivar aot: whether it runs AOTInductor's compiled model (else the ``ExportedProgram``).
    """

    def __init__(self, run: Callable[..., Any], info: ArtifactInfo, path: str, aot: bool):
        self._run = run
        self.info = info
        self.path = path
        self.aot = aot

    def __call__(
        self,
        *tensors: torch.Tensor,
        params: Mapping[str, torch.Tensor] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Any:
        if len(tensors) != self.info.num_tensors:
            raise TypeError(
                f"{self.info.function} was exported for {self.info.num_tensors} tensor "
                f"arguments, got {len(tensors)}"
            )
        if self.info.params == "inputs":
            inputs = (*tensors, self._params(params))
        elif params is not None:
            raise TypeError(f"{self.info.function} was exported with its params baked in")
        else:
            inputs = tensors
        if seed is not None:
            if generator is not None:
                raise TypeError("pass seed or generator, not both")
            # A generator of its own rather than torch.manual_seed, which would also seed
            # (or queue the seeding of) every GPU's global stream.
            device = tensors[0].device if tensors else torch.device("cpu")
            generator = torch.Generator(device).manual_seed(seed)
        with drawing_from(generator):
            return self._run(*inputs)

    def _params(self, params: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if params is None:
            raise TypeError(
                f"{self.info.function} was exported with params='inputs': pass params= "
                f"(the unconstrained values of {', '.join(self.info.param_names)})"
            )
        missing = [name for name in self.info.param_names if name not in params]
        if missing:
            raise KeyError(f"params lacks {', '.join(missing)}")
        return {name: params[name] for name in self.info.param_names}

    def __repr__(self) -> str:
        kind = "AOTInductor" if self.aot else "ExportedProgram"
        return f"<lazyjit.Artifact {self.info.function} ({kind}) from {self.path}>"


def load(path: str | os.PathLike[str], *, aot: bool | None = None) -> Artifact:
    """Loads what :func:`lazyjit.export` saved at ``path``; needs torch, not Pyro.

    Example::

        import lazyjit

        predict = lazyjit.load("predictive.pt2")
        samples = predict(x, seed=0)

    :param aot: run AOTInductor's compiled model (the default where the archive has one)
        or, with ``False``, the ``ExportedProgram`` (``torch.export.load(path).module()``).
    """
    path = os.fspath(path)
    info = read_info(path)
    if aot is None:
        aot = info.aot
    if aot and not info.aot:
        raise LazyJitError(f"{path} holds no AOTInductor model: export it with aot=True")
    run = torch_shim.aoti_load_package(path) if aot else torch.export.load(path).module()
    return Artifact(run, info, path, aot)


def read_info(path: str) -> ArtifactInfo:
    """The :class:`ArtifactInfo` of the archive at ``path``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{META_FILE}")]
            if not names:
                raise LazyJitError(f"{path} is not an artifact of lazyjit.export")
            return ArtifactInfo.from_json(archive.read(names[0]).decode())
    except zipfile.BadZipFile as exc:
        raise LazyJitError(f"{path} is not an artifact of lazyjit.export") from exc


@contextlib.contextmanager
def drawing_from(generator: torch.Generator | None) -> Iterator[None]:
    """Makes the default generator of ``generator``'s device draw from ``generator``
    inside (which advances as if drawn from directly), and puts the global random stream
    back afterwards; with ``None``, changes nothing."""
    if generator is None:
        yield
        return
    device = generator.device
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        default = torch.cuda.default_generators[cuda[0]] if cuda else torch.default_generator
        default.set_state(generator.get_state())
        yield
        generator.set_state(default.get_state())
