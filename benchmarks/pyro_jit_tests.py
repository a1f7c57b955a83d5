"""Pyro's own jit tests, run with lazyjit installed in place of Pyro's jit (issue 18).

    python benchmarks/pyro_jit_tests.py PYRO_CHECKOUT [--baseline] [PYTEST_ARGS...]

``PYRO_CHECKOUT`` is a Pyro source tree matching the installed pyro-ppl (its ``tests/``
and ``setup.cfg``; nothing is downloaded). Runs ``tests/infer/test_jit.py`` and
``tests/ops/test_jit.py`` from that tree, so Pyro's ``setup.cfg`` filterwarnings (warnings
as errors) and ``tests/conftest.py`` apply, with a plugin that calls ``lazyjit.install()``
before the test modules import Pyro's names. ``--baseline`` runs them on Pyro's own jit.
Prints pytest's summary and exits with its status; the goal is ``89 passed, 2 xfailed``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TEST_FILES = ["tests/infer/test_jit.py", "tests/ops/test_jit.py"]
PLUGIN = "import lazyjit\n\nlazyjit.install()\n"
REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0].startswith("-"):
        sys.exit(__doc__)
    checkout, rest = Path(args[0]).resolve(), args[1:]
    if not (checkout / TEST_FILES[0]).is_file():
        sys.exit(f"{checkout} has no {TEST_FILES[0]}: pass a Pyro source checkout")
    baseline = "--baseline" in rest
    rest = [a for a in rest if a != "--baseline"]
    with tempfile.TemporaryDirectory() as plugin_dir:
        (Path(plugin_dir) / "lazyjit_plugin.py").write_text(PLUGIN)
        path = [plugin_dir, str(REPO), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
        plugin = [] if baseline else ["-p", "lazyjit_plugin"]
        command = [sys.executable, "-m", "pytest", *plugin, *TEST_FILES, "-q", "-rfEx"]
        command += ["-p", "no:cacheprovider", *rest]
        print(f"{'Pyro jit' if baseline else 'lazyjit'}: {' '.join(command)}", flush=True)
        return subprocess.run(command, cwd=checkout, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
