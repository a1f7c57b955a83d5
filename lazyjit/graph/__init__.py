"""Graph capture: a function's aten ops recorded as they run (:mod:`.recorder`), rid of
no-ops (:mod:`.simplify`), and the capture entry points with the shims Pyro needs while
it is recorded (:mod:`.capture`)."""
