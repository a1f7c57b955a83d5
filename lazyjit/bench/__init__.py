"""The benchmark harness: ``python -m lazyjit bench``, ``programs`` and ``demo``, and the
pieces that ``benchmarks/`` scripts share. See ``docs/benchmarks.md``.

- :mod:`lazyjit.examples` (outside this package: the tests use them too): the seed
  models of the Pyro JIT tutorial and their data.
- :mod:`~lazyjit.bench.contenders`: eager Pyro, Pyro's jit, lazyjit and NumPyro on those
  models, each a ``setup()`` returning the step to time.
- :mod:`~lazyjit.bench.timing`: the one timing loop (first call, rounds in turn) and the
  one row class, :class:`~lazyjit.bench.timing.Result`.
- :mod:`~lazyjit.bench.workloads`: ``bench``'s workloads and their contenders.
- :mod:`~lazyjit.bench.workers`: ``bench``'s worker processes, one per contender.
- :mod:`~lazyjit.bench.wholeruns`: ``bench``'s whole runs, a fresh process per run.
- :mod:`~lazyjit.bench.report` and :mod:`~lazyjit.bench.chart`: tables, ``RESULTS.md``,
  ``results.json`` and ``speedups.png``.
- :mod:`~lazyjit.bench.suite`: ``bench`` itself (:func:`~lazyjit.bench.suite.run`).
- :mod:`~lazyjit.bench.programs` and :mod:`~lazyjit.bench.program_models`: ``programs``,
  whole runs of real Pyro programs (:func:`~lazyjit.bench.programs.main`).
- :mod:`~lazyjit.bench.demo`: ``demo`` (:func:`~lazyjit.bench.demo.main`).
"""
