"""The static checks, run by the README's one test command (so they run in CI): ruff over the
package, the tests, the benchmarks and the scripts, mypy over the package, and the import-layer contract (import-linter,
``[tool.importlinter]`` in pyproject.toml: a lower layer never imports a higher one).

Each tool is configured in pyproject.toml and installed by the ``test`` extra
(``bash scripts/setup.sh --test``). Where one is missing the test skips with the reason; the
tests are marked ``needs_tools``, so in CI (``CI=true`` / ``EBSENGINE_REQUIRE_TOOLS=1``)
that skip is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.needs_tools


def run_tool(module: str, name: str, argv: list[str]) -> None:
    """Run ``argv`` (the command line of the tool ``name``) in the repository root; fail with
    its output unless it exits 0. Skips when the tool's ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (bash scripts/setup.sh --test installs it)")
    # this checkout's package first, whatever else is installed
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"{name} exited {p.returncode}:\n{p.stdout}{p.stderr}", pytrace=False)


def test_ruff() -> None:
    run_tool("ruff", "ruff check ebsengine tests benchmarks scripts",
             [sys.executable, "-m", "ruff", "check", "--no-cache", "ebsengine", "tests",
              "benchmarks", "scripts"])


def test_mypy() -> None:
    # the files and options are in [tool.mypy]
    run_tool("mypy", "mypy ebsengine", [sys.executable, "-m", "mypy", "ebsengine"])


def test_import_layers() -> None:
    # lint-imports, run with this interpreter (its console script may belong to another one)
    run_tool("importlinter", "lint-imports",
             [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
              "--no-cache"])
