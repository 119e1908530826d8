"""cffi build script for the C core: compiles ``csrc/ebscore.c`` into ``ebsengine._ebscore``.

``setup.py`` names this file in ``cffi_modules`` ("csrc/build_ffi.py:ffi"), so
``pip install .`` and ``pip install -e .`` build the extension out-of-line (API mode).
Run it directly (``python csrc/build_ffi.py``) to compile in place for development; that
leaves ``ebsengine/_ebscore.cpython-*.so``, which Python prefers over the ``.abi3.so``
that pip builds, so delete it before switching back to ``pip install -e .``.

The declarations are not repeated here: they are read from ``csrc/ebscore.h`` with the
preprocessor lines dropped, so the header is the one source of truth for the ABI.

Needs the xxHash header ``xxhash.h`` (Debian/Ubuntu package ``libxxhash-dev``); XXH3 is
compiled inline from it (``XXH_INLINE_ALL``), so nothing is linked at run time.
"""

from __future__ import annotations

import os
import sys

import cffi

_HERE = os.path.dirname(os.path.abspath(__file__))
_HEADER = os.path.join(_HERE, "ebscore.h")

# setuptools wants paths relative to the project root (pip runs setup.py from there);
# fall back to absolute ones when this script runs from elsewhere.
if os.path.abspath(os.getcwd()) == os.path.dirname(_HERE):
    _SRC_DIR = "csrc"
else:
    _SRC_DIR = _HERE


def _cdef_from_header(path: str) -> str:
    """Return the header's text without preprocessor lines, as cffi's cdef wants it."""
    with open(path, encoding="utf-8") as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


def _check_xxhash_header() -> None:
    """Fail early, naming the package to install, when xxhash.h is nowhere to be found.

    Only the usual places are looked at; if the header lives elsewhere (CPATH, a conda
    prefix), the compiler finds it and csrc/ebscore.c's own #error guards the rest.
    """
    dirs = ["/usr/include", "/usr/local/include", os.path.join(sys.prefix, "include")]
    for var in ("CPATH", "C_INCLUDE_PATH"):
        dirs += [d for d in os.environ.get(var, "").split(os.pathsep) if d]
    cflags = os.environ.get("CFLAGS", "") + " " + os.environ.get("CPPFLAGS", "")
    dirs += [flag[2:] for flag in cflags.split() if flag.startswith("-I")]
    if not any(os.path.isfile(os.path.join(d, "xxhash.h")) for d in dirs):
        raise RuntimeError(
            "ebsengine: xxhash.h not found (looked in: " + ", ".join(dirs) + "). "
            "The C core needs the xxHash development header: on Debian/Ubuntu run "
            "'apt-get install libxxhash-dev'."
        )


_check_xxhash_header()

ffi = cffi.FFI()
ffi.cdef(_cdef_from_header(_HEADER))
ffi.set_source(
    "ebsengine._ebscore",
    '#include "ebscore.h"',
    sources=[os.path.join(_SRC_DIR, "ebscore.c")],
    include_dirs=[_SRC_DIR],
    extra_compile_args=["-O3", "-std=c99", "-Wall", "-Wextra", "-fvisibility=hidden"],
)

if __name__ == "__main__":
    # Development build: put the extension next to ebsengine/ in the source tree.
    ffi.compile(tmpdir=os.path.dirname(_HERE), verbose=True)
