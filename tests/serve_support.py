"""Starting ``ebsengine serve`` as a user does (a subprocess), for the tests that need the
real command line: wait until it says it serves, free ports."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[str]) -> list[str]:
    """The lines ``serve`` printed up to its ``ebsengine: store ...`` line (all of them,
    if it exited first)."""
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ebsengine: store"):
            break
    return lines


def start_serve(store: Path | str, *args: str, **popen: Any
                ) -> tuple[subprocess.Popen[str], list[str]]:
    """``ebsengine --store STORE serve ARGS``, with stdout and stderr merged; ``popen`` goes
    to :class:`subprocess.Popen` (``env``, ``umask``...)."""
    proc = subprocess.Popen([sys.executable, "-m", "ebsengine.cli", "--store", str(store),
                             "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)
    return proc, wait_ready(proc)
