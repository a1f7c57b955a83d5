"""lazyjit's logger (``logging.getLogger("lazyjit")``) and the timing of compile events."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger("lazyjit")


class Stopwatch:
    """Times one compile event, from its creation to :meth:`done`."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """The seconds since the start."""
        return time.perf_counter() - self.start

    def done(self, add: Callable[[float], None], message: str, *args: object) -> float:
        """The seconds since the start, passed to ``add`` (a total of compile seconds)
        and logged at INFO as ``message % (*args, seconds)``."""
        seconds = self.elapsed()
        add(seconds)
        logger.info(message, *args, seconds)
        return seconds
