"""Warning and error classes that lazyjit raises, so users can filter them by class, and
the one way lazyjit warns."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable


class LazyJitWarning(UserWarning):
    """Something lazyjit did on the user's behalf that they should know about."""


class StructureWarning(LazyJitWarning):
    """A compiled function's structure depends on tensor values; lazyjit runs it eagerly."""


class LazyJitError(RuntimeError):
    """A call lazyjit cannot compile correctly and will not run silently wrong."""


class StructureError(LazyJitError):
    """Raised by a backend when a traced function branched on a tensor value.

    ``site`` is ``"file:line"`` of the offending statement.
    """

    def __init__(self, message: str, site: str):
        super().__init__(f"{message} (at {site})")
        self.site = site


LAZYJIT_DIR = os.path.dirname(__file__) + os.sep


def warn_once(
    warned: set, what: object, message: str, category: type[Warning] = LazyJitWarning
) -> None:
    """Warns (a :class:`LazyJitWarning` unless told) at the user's line, the first time
    ``what`` is seen in ``warned``: a loop of thousands of calls warns once."""
    if what not in warned:
        warned.add(what)
        warnings.warn(message, category, stacklevel=caller_stacklevel())


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside lazyjit."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(LAZYJIT_DIR):
        frame, level = frame.f_back, level + 1
    return level


def error_site(error: BaseException, passed_over: Callable[[str], bool]) -> str:
    """``file:line`` of the innermost frame of ``error``'s traceback whose file
    ``passed_over`` does not pass over (torch's, say): the statement that caused it."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not passed_over(f.filename)]
    if not frames:
        return "unknown site"
    return f"{frames[-1].filename}:{frames[-1].lineno}"
