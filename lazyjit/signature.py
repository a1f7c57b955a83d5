"""Call signatures: split arguments into tensor leaves and a hashable cache key.

Like equinox's ``filter_jit``, every tensor anywhere in ``(args, kwargs)`` (nested in
lists, tuples, dicts) is a dynamic input, and everything else is static and becomes
part of the key. The key is also the recipe to rebuild the arguments from new leaves,
so no cache entry has to keep the first call's arguments (or their tensors) alive.
"""

from __future__ import annotations

import argparse
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch

from .errors import LazyJitError, LazyJitWarning

try:  # C++ checks of tensor metadata; torch._dynamo itself is not imported
    from torch._C._dynamo.guards import TensorGuards as _TensorGuards
except ImportError:  # pragma: no cover - a torch without it: every call computes its key
    _TensorGuards = None

# Node tags. A key is a tree of tuples whose first item is one of these.
_TENSOR = "tensor"
_CONST = "const"
_IDENT = "ident"
_SEQ = "seq"
_DICT = "dict"
_NAMESPACE = "namespace"

# Static values hashed by value. Anything else with identity hashing (functions,
# modules, models, guides) is keyed by identity through a weak reference.
_VALUE_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


class IdentityRef(int):
    """A key item that compares by object identity and does not keep the object alive.

    An ``int`` (the object's id), so hashing and comparing a key runs no Python code.
    """

    def __new__(cls, obj: Any) -> IdentityRef:
        self = super().__new__(cls, id(obj))
        try:
            self.ref = weakref.ref(obj)
        except TypeError:
            # Not weak-referenceable (rare: some builtins). Holding it is the only
            # way to make sure its id is not reused while the key exists.
            self.ref = lambda obj=obj: obj
        return self

    def __repr__(self) -> str:
        return f"IdentityRef({type(self.ref()).__name__} at {int(self):#x})"


_unhashable_warned: set[type] = set()


def _tensor(obj: torch.Tensor, leaves: list, idents: list) -> tuple:
    leaves.append(obj)
    # Strides too: inductor compiles for a layout and refuses another one.
    return (_TENSOR, obj.shape, obj.stride(), obj.dtype, obj.device, obj.requires_grad)


def _value(obj: Any, leaves: list, idents: list) -> tuple:
    return (_CONST, type(obj), obj)


def _sequence(obj: Any, leaves: list, idents: list) -> tuple:
    return (_SEQ, type(obj), tuple([_HANDLERS[type(x)](x, leaves, idents) for x in obj]))


def _dict(obj: dict, leaves: list, idents: list) -> tuple:
    return (
        _DICT,
        type(obj),
        tuple(obj),
        tuple([_HANDLERS[type(v)](v, leaves, idents) for v in obj.values()]),
    )


def _namespace(obj: argparse.Namespace, leaves: list, idents: list) -> tuple:
    items = vars(obj)
    return (
        _NAMESPACE,
        tuple(items),
        tuple([_HANDLERS[type(v)](v, leaves, idents) for v in items.values()]),
    )


def _set(obj: Any, leaves: list, idents: list) -> tuple:
    if any(isinstance(x, torch.Tensor) for x in obj):
        raise TypeError("lazyjit cannot key a call on a set that contains tensors")
    return (_CONST, type(obj), frozenset(obj))


def _hashable(obj: Any, leaves: list, idents: list) -> tuple:
    try:
        hash(obj)
    except TypeError:  # e.g. a frozen dataclass holding a list
        return _identity(obj, leaves, idents)
    return (_CONST, type(obj), obj)


# id -> the IdentityRef of the live object with that id: a model and a guide are keyed at
# every call, and a new weak reference each time is a noticeable part of an SVI step.
_IDENTITY_REFS: dict[int, IdentityRef] = {}


def _identity(obj: Any, leaves: list, idents: list) -> tuple:
    ref = _IDENTITY_REFS.get(id(obj))
    if ref is None or ref.ref() is not obj:
        ref = IdentityRef(obj)
        if isinstance(ref.ref, weakref.ref):
            _IDENTITY_REFS[id(obj)] = ref
            weakref.finalize(obj, _IDENTITY_REFS.pop, id(obj), None)
    idents.append(ref)
    return (_IDENT, ref)


def _unhashable(obj: Any, leaves: list, idents: list) -> tuple:
    cls = type(obj)
    if cls not in _unhashable_warned:
        _unhashable_warned.add(cls)
        warnings.warn(
            f"lazyjit keys unhashable {cls.__name__} arguments by identity: a mutated "
            "object reuses the entry compiled for its old contents. Pass a tensor or a "
            "hashable value instead if it changes between calls.",
            LazyJitWarning,
            stacklevel=4,
        )
    return _identity(obj, leaves, idents)


def _iterator(obj: Any, leaves: list, idents: list) -> tuple:
    # The first call consumes it while looking for params; the compiler would see it empty.
    raise LazyJitError(
        f"lazyjit cannot compile a call with a {type(obj).__name__} argument (an iterator "
        "is consumed by the first run); pass a list or a tuple instead"
    )


def _handler_for(cls: type) -> Callable:
    if issubclass(cls, torch.Tensor):
        return _tensor
    if cls is tuple or cls is list or (issubclass(cls, tuple) and hasattr(cls, "_fields")):
        return _sequence
    if issubclass(cls, dict):
        return _dict
    if issubclass(cls, argparse.Namespace):
        return _namespace
    if issubclass(cls, (set, frozenset)):
        return _set
    if issubclass(cls, Iterator):
        return _iterator
    hash_fn = getattr(cls, "__hash__", None)
    if hash_fn is None:
        return _unhashable
    if hash_fn is object.__hash__:
        return _identity
    return _hashable


class _Handlers(dict):
    """``{type: handler}``, filled on first sight of a type. The lookup runs for every
    argument of every call, right after a compiled program has left the CPU caches cold:
    a plain subscript keeps it in C."""

    def __missing__(self, cls: type) -> Callable:
        handler = self[cls] = _handler_for(cls)
        return handler


_HANDLERS = _Handlers(dict.fromkeys(_VALUE_TYPES, _value))


def signature(args: tuple, kwargs: dict) -> tuple[tuple, list[torch.Tensor], list[IdentityRef]]:
    """Returns ``(key, tensor_leaves, identity_refs)`` for a call ``fn(*args, **kwargs)``."""
    leaves: list[torch.Tensor] = []
    idents: list[IdentityRef] = []
    key = (
        tuple([_HANDLERS[type(a)](a, leaves, idents) for a in args]),
        tuple(kwargs),
        tuple([_HANDLERS[type(v)](v, leaves, idents) for v in kwargs.values()]) if kwargs else (),
        torch.is_grad_enabled(),
    )
    return key, leaves, idents


class CallGuard:
    """Whether a call has the signature of an earlier one, told without computing it.

    A compiled call site mostly repeats one signature (an SVI step, a NUTS leaf), and
    :func:`signature` runs Python code for every argument. The guard compares what the key
    took from each top-level argument instead: an identity-keyed object or a value by
    ``is``, the tensors in one C++ check of their sizes, strides, dtypes, devices and
    grad requirements (dynamo's ``TensorGuards``). Built only for calls without
    keyword arguments whose arguments are all of these kinds (see :meth:`of`).
    """

    def __init__(self, key: tuple, objects: tuple, positions: tuple[int, ...], tensors: Any):
        self.key = key
        self._num_args = len(key[0])
        # (position, the object, or the IdentityRef whose .ref() is the object)
        self._objects = objects
        self._positions = positions
        self._tensors = tensors

    @classmethod
    def of(cls, args: tuple, kwargs: dict, key: tuple) -> CallGuard | None:
        """The guard of a call with signature ``key``, or ``None`` where none applies."""
        if kwargs or _TensorGuards is None:
            return None
        objects, positions, tensors = [], [], []
        for i, (arg, node) in enumerate(zip(args, key[0])):
            tag = node[0]
            if tag == _TENSOR:
                positions.append(i)
                tensors.append(arg)
            elif tag == _IDENT or (tag == _CONST and type(arg) in _VALUE_TYPES):
                objects.append((i, node[1] if tag == _IDENT else arg, tag == _IDENT))
            else:  # a container's contents could change behind the same object
                return None
        guards = _TensorGuards(
            *tensors,
            dynamic_dims_sizes=[list(t.shape) for t in tensors],
            dynamic_dims_strides=[list(t.stride()) for t in tensors],
        )
        return cls(key, tuple(objects), tuple(positions), guards)

    def leaves(self, args: tuple) -> list[torch.Tensor] | None:
        """The tensor leaves of ``fn(*args)`` if it has the guarded signature, else None."""
        if len(args) != self._num_args or torch.is_grad_enabled() is not self.key[3]:
            return None
        for i, obj, weak in self._objects:
            if weak:
                obj = obj.ref()
                if obj is None:  # a dead object: its id may be anyone's now
                    return None
            if args[i] is not obj:
                return None
        leaves = [args[i] for i in self._positions]
        return leaves if self._tensors.check(*leaves) else None


def _rebuild(node: tuple, leaves: Iterator[Any]) -> Any:
    tag = node[0]
    if tag == _TENSOR:
        return next(leaves)
    if tag == _CONST:
        return node[2]
    if tag == _IDENT:
        obj = node[1].ref()
        if obj is None:
            raise ReferenceError("an argument of this compiled call was garbage collected")
        return obj
    if tag == _SEQ:
        items = [_rebuild(child, leaves) for child in node[2]]
        cls = node[1]
        if cls is list:
            return items
        return cls(*items) if hasattr(cls, "_fields") else cls(items)
    if tag == _DICT:
        cls = node[1]
        return cls(zip(node[2], (_rebuild(child, leaves) for child in node[3])))
    if tag == _NAMESPACE:
        return argparse.Namespace(**dict(zip(node[1], (_rebuild(c, leaves) for c in node[2]))))
    raise AssertionError(f"unknown key node {tag!r}")


def rebuild(key: tuple, leaves: list[Any]) -> tuple[tuple, dict]:
    """Inverse of :func:`signature`: ``(args, kwargs)`` with ``leaves`` in place of tensors."""
    it = iter(leaves)
    args = tuple(_rebuild(node, it) for node in key[0])
    kwargs = dict(zip(key[1], (_rebuild(node, it) for node in key[2])))
    return args, kwargs


class LRUCache:
    """A bounded mapping that evicts the least recently used entry.

    Entries whose key holds an :class:`IdentityRef` are dropped as soon as that object
    is garbage collected, so a dead object's id can never select a stale entry.
    """

    def __init__(self, max_size: int):
        if max_size < 1:
            raise ValueError(f"cache_size must be at least 1, got {max_size}")
        self.max_size = max_size
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._watch: list[weakref.ref] = []

    def get(self, key: Hashable) -> Any:
        data = self._data
        value = data.get(key)
        if value is not None:
            try:
                data.move_to_end(key)
            except KeyError:  # evicted by another thread in between
                pass
        return value

    def put(self, key: Hashable, value: Any, idents: list[IdentityRef]) -> list[Any]:
        """Stores ``value``; returns the values evicted to make room."""
        evicted = []
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                evicted.append(self._data.popitem(last=False)[1])
        self_ref = weakref.ref(self)
        for ident in idents:
            obj = ident.ref()
            try:
                # _drop bound now: an object freed while the interpreter shuts down calls
                # back after the module's globals are gone.
                callback = lambda _, k=key, drop=_drop: drop(self_ref, k)  # noqa: E731
                self._watch.append(weakref.ref(obj, callback))
            except TypeError:
                pass
        self._watch = [w for w in self._watch if w() is not None]
        return evicted

    def pop(self, key: Hashable) -> Any:
        with self._lock:
            return self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def items(self):
        return list(self._data.items())


def _drop(cache_ref: Callable[[], LRUCache | None], key: Hashable) -> None:
    cache = cache_ref()
    if cache is not None:
        cache.pop(key)
