"""Warning and error classes that lazyjit raises, so users can filter them by class."""


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
