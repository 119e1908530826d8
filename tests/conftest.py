"""Shared fixtures: a fresh engine per test and a digest of a store's whole content."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

import ebsengine
from ceph_support import ceph_cluster, rados_pools  # noqa: F401 - fixtures for every test
from ebsengine import layout as L


@pytest.fixture(autouse=True)
def _master_key_in_tmp(tmp_path_factory, monkeypatch) -> None:
    """No test reads or writes the user's real master key file (~/.config/ebsengine): the
    default master key path is a fresh temporary one per test (subprocesses inherit it)."""
    path = tmp_path_factory.mktemp("master") / "master.key"
    monkeypatch.setenv("EBSENGINE_MASTER_KEY", str(path))


@pytest.fixture
def store_path(tmp_path) -> str:
    return str(tmp_path / "store")


#: "rados" is a store on the test Ceph cluster (tests/ceph_support.py): one pool prefix per test
STORE_KINDS = ["lmdb", "memory", pytest.param("rados", marks=pytest.mark.needs_ceph)]


@pytest.fixture(params=STORE_KINDS)
def any_store_path(request, tmp_path) -> Iterator[str]:
    """A store path on each storage backend: an LMDB directory, a named in-memory store
    (``memory://NAME``: reopenable by the same path, dropped after the test), or a
    ``rados://`` store on the test cluster (its pools dropped after the test). A test
    module runs on all of them by overriding ``store_path`` with it."""
    if request.param == "lmdb":
        yield str(tmp_path / "store")
        return
    if request.param == "rados":
        pools = request.getfixturevalue("rados_pools")
        yield pools.url(workdir=str(tmp_path / "rados-workdir"))
        return
    from ebsengine.storage.memory import forget
    name = f"test-{os.getpid()}-{id(request)}-{request.node.name}"
    yield f"memory://{name}"
    forget(name)


@pytest.fixture
def eng(store_path) -> Iterator[ebsengine.Engine]:
    with ebsengine.Engine(store_path) as e:
        yield e


@pytest.fixture
def engine(tmp_path):
    """The engine the NBD tests serve: the real one, or with EBSENGINE_NBD_FAKE_ENGINE=1 the
    in-memory stand-in of tests/nbd_client.py (to test the protocol layer alone)."""
    import nbd_client
    e = nbd_client.make_engine(tmp_path / "store")
    try:
        yield e
    finally:
        e.close()


def store_digest(e: ebsengine.Engine) -> str:
    """SHA-256 over every key and value of every sub-database: equal digests mean the
    store is exactly as it was (DESIGN invariant 7)."""
    h = hashlib.sha256()
    with e._store.read() as txn:
        for name in L.DBS:
            h.update(name.encode())
            for k, v in txn.cursor(db=e._store.db[name]):
                h.update(len(k).to_bytes(4, "big") + k + len(v).to_bytes(4, "big") + v)
    return h.hexdigest()


def sha_bytes(tag: str, n: int = L.CHUNK_SIZE) -> bytes:
    """``n`` deterministic, incompressible bytes named by ``tag`` (never all zeros)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{tag}/{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def discard_unflushable(e: ebsengine.Engine) -> None:
    """After a refused flush (store full): drop the writes the store cannot take, as a client
    that gives them up would, so closing devices and the engine does not retry them."""
    for cache in list(e._caches.values()):
        with cache.lock:
            cache.dirty.clear()
            cache.dirty_bytes = 0


def pytest_report_header(config) -> str:
    from ebsengine import codec
    return f"ebsengine C core: {'yes' if codec.HAVE_C else 'NO (pure Python)'}; " \
           f"slow mode: {os.environ.get('EBSENGINE_SLOW', '0')}"


# --- tests that need apt-installed or root-only tools, or a Ceph cluster --------------------
# They may skip elsewhere with a clear reason, but in CI (CI=true, or EBSENGINE_REQUIRE_TOOLS=1)
# a skip of a test marked ``needs_tools`` or ``needs_ceph`` is turned into a failure; so is a
# skip of a ``needs_ceph`` test when EBSENGINE_TEST_RADOS=1 says a cluster is there.

REQUIRE_TOOLS = os.environ.get("EBSENGINE_REQUIRE_TOOLS") == "1" or \
    os.environ.get("CI", "").lower() == "true"
REQUIRE_CEPH = REQUIRE_TOOLS or os.environ.get("EBSENGINE_TEST_RADOS") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    if REQUIRE_TOOLS and item.get_closest_marker("needs_tools"):
        what = "needs_tools test skipped in CI (a tool is missing)"
    elif REQUIRE_CEPH and item.get_closest_marker("needs_ceph"):
        what = "needs_ceph test skipped where a Ceph cluster is required (CI, or " \
               "EBSENGINE_TEST_RADOS=1)"
    else:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = f"{what}: {reason}"
