"""ebsengine.storage.rados_io: store URLs and error translation (no cluster needed), and the
object operations against a real Ceph cluster (``needs_ceph``: tests/ceph_support.py), down
to a cluster that is gone (a clean BackendUnavailable within the timeout, never a hang)."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ceph_support import (  # noqa: F401
    ceph_cluster,
    rados_pools,
    resume,
    start_private_cluster,
    stop_cluster,
)
from ebsengine.errors import BackendUnavailable, CorruptStore, EbsError, InvalidParameter, StoreFull
from ebsengine.storage import rados_io
from ebsengine.storage.memory import MemoryBackend
from ebsengine.storage.rados_io import READ_HINT, parse_url
from ebsengine.storage.store import Store

# --- store URLs ---------------------------------------------------------------------------


def test_url_defaults_name_two_pools_after_the_prefix():
    u = parse_url("rados://vols")
    assert (u.prefix, u.conf, u.id, u.keyring, u.timeout) == ("vols", None, "admin", None, 30.0)
    assert (u.meta_pool, u.data_pool) == ("vols.meta", "vols.data")


def test_url_options_and_pool_overrides():
    u = parse_url("rados://p-1?conf=/etc/ceph/c%20d.conf&id=ebs&keyring=/k/ring&timeout=2.5"
                  "&meta=fastmeta&data=ecdata")
    assert (u.conf, u.id, u.keyring, u.timeout) == ("/etc/ceph/c d.conf", "ebs", "/k/ring", 2.5)
    assert (u.meta_pool, u.data_pool) == ("fastmeta", "ecdata")
    assert rados_io.is_rados_url("rados://x") and not rados_io.is_rados_url("/var/ebs")


@pytest.mark.parametrize("url, match", [
    ("rados://", "prefix"),
    ("rados://a/b", "prefix"),
    ("rados://has space", "prefix"),
    ("rados://p?colour=red", "unknown option"),
    ("rados://p?id=a&id=b", "exactly one"),
    ("rados://p?id=", "exactly one"),
    ("rados://p?timeout=0", "timeout"),
    ("rados://p?timeout=soon", "timeout"),
    ("rados://p?meta=same&data=same", "must differ"),
    ("rados://p?data=no/slash", "pool name"),
    ("/var/lib/ebs", "not a rados"),
])
def test_bad_urls_are_refused_with_a_reason(url, match):
    with pytest.raises(InvalidParameter, match=match):
        parse_url(url)


# --- error translation --------------------------------------------------------------------


@pytest.mark.parametrize("n, cls", [
    (errno.ENOSPC, StoreFull), (errno.EDQUOT, StoreFull),
    (errno.ETIMEDOUT, BackendUnavailable), (errno.ESHUTDOWN, BackendUnavailable),
    (errno.ENOTCONN, BackendUnavailable), (errno.EACCES, BackendUnavailable),
    (errno.EIO, CorruptStore),
])
def test_errno_translation(n, cls):
    err = rados_io.translate_errno(n, "writing p/obj")
    assert type(err) is cls and "writing p/obj" in str(err)


def test_unexpected_errors_are_named_not_hidden():
    err = rados_io.translate_errno(errno.EINVAL, "writing p/obj", "detail")
    assert type(err) is EbsError and "EINVAL" in str(err) and "detail" in str(err)


def test_backend_unavailable_has_its_own_exit_code_and_http_code():
    from ebsengine.aws.errors import ec2_error
    err = rados_io.translate_errno(errno.ETIMEDOUT, "reading p/o")
    assert err.exit_code == 9 and "nothing stored was lost" in str(err)
    assert ec2_error(err)[2] == 503


def test_the_package_imports_without_the_binding():
    code = ("import sys; sys.modules['rados'] = None\n"
            "import ebsengine, ebsengine.storage.rados_io as r, ebsengine.storage.rados_chunks\n"
            "from ebsengine.errors import BackendUnavailable\n"
            "try:\n    r.connect('rados://p')\n"
            "except BackendUnavailable as e:\n    print('refused:', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "refused:" in p.stdout and "python3-rados" in p.stdout


# --- against a cluster ----------------------------------------------------------------------


@pytest.fixture
def conn(rados_pools):
    c = rados_io.connect(rados_pools.url(timeout=20))
    yield c
    c.close()


def blob(tag: str, n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{tag}/{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


@pytest.mark.needs_ceph
def test_connect_creates_both_pools(conn, rados_pools):
    pools = conn.cluster.list_pools()
    assert f"{rados_pools.prefix}.meta" in pools and f"{rados_pools.prefix}.data" in pools
    assert (conn.meta.name, conn.data.name) == (f"{rados_pools.prefix}.meta",
                                                 f"{rados_pools.prefix}.data")
    again = rados_io.connect(rados_pools.url(timeout=20))  # existing pools are opened as is
    again.close()
    with pytest.raises(BackendUnavailable, match="does not exist"):
        rados_io.connect(rados_pools.url(timeout=20, meta="absent-pool-x"), create=False)


@pytest.mark.needs_ceph
def test_batched_put_read_stat_remove(conn):
    sizes = [0, 1, 4096, READ_HINT - 1, READ_HINT, READ_HINT + 1, 3 * 1024 * 1024 + 7]
    items = [(f"o{i}", blob(f"o{i}", n)) for i, n in enumerate(sizes)]
    items += [(f"s{i}", blob(f"s{i}", 100)) for i in range(100)]
    before = time.time()
    conn.data.put_many(items, window=8)
    names = [n for n, _ in items] + ["missing"]
    assert conn.data.read_many(names) == [d for _, d in items] + [None]
    assert conn.data.read("o6") == items[6][1] and conn.data.read("missing") is None
    stats = conn.data.stat_many(["o3", "missing"])
    assert stats[0].size == READ_HINT - 1 and stats[1] is None
    assert before - 2 <= stats[0].mtime <= time.time() + 1
    assert conn.data.remove_many(["o0", "o1", "missing"]) == 2
    assert conn.data.read_many(["o0", "o1", "o2"]) == [None, None, items[2][1]]
    assert sorted(conn.data.list_objects("o")) == [f"o{i}" for i in range(2, 7)]
    assert sum(1 for _ in conn.data.list_objects()) == 105


@pytest.mark.needs_ceph
def test_compare_and_swap_with_omap(conn):
    m = conn.meta
    assert m.read_versioned("root") == (None, 0)
    assert m.cas_write("root", None, b"v1", omap_set={"a": b"1", "b": b"2"})
    assert not m.cas_write("root", None, b"again")  # create-only: it exists now
    data, v1 = m.read_versioned("root")
    assert data == b"v1" and v1 > 0
    v2 = m.cas_write_version("root", v1, b"v2", omap_set={"c": b"3"}, omap_rm=["a"])
    assert v2 is not None and v2 > v1
    assert not m.cas_write("root", v1, b"stale", omap_set={"x": b"lost"})  # the version moved
    assert m.read_versioned("root") == (b"v2", v2)
    assert m.omap_get("root") == [("b", b"2"), ("c", b"3")]
    assert m.cas_write("root", v2, None, omap_set={"b": b"22"})  # omap only: data kept
    assert m.read("root") == b"v2"
    assert m.omap_get_keys("root", ["b", "zz"]) == {"b": b"22"}
    assert m.omap_get("nothing") == [] and m.omap_get_keys("nothing", ["a"]) == {}
    assert not m.cas_write("gone", 5, b"x")  # a version asserted on a missing object


@pytest.mark.needs_ceph
def test_omap_ranges_page_in_key_order(conn):
    keys = [f"k{i:04d}" for i in range(2500)]
    for i in range(0, len(keys), 1000):
        part = keys[i:i + 1000]
        _, v = conn.meta.read_versioned("map")
        assert conn.meta.cas_write("map", v, None, omap_set={k: k.encode() for k in part})
    got, after = [], ""
    while True:
        page = conn.meta.omap_get("map", start_after=after, max_return=700)
        if not page:
            break
        got += page
        after = page[-1][0]
    assert [k for k, _ in got] == keys and all(v == k.encode() for k, v in got)
    assert [k for k, _ in conn.meta.omap_get("map", prefix="k02", max_return=5000)] == \
        keys[200:300]


@pytest.mark.needs_ceph
def test_concurrent_compare_and_swap_loses_no_update(conn):
    conn.meta.cas_write("counter", None, b"0")

    def bump(times: int) -> None:
        done = 0
        while done < times:
            data, v = conn.meta.read_versioned("counter")
            if conn.meta.cas_write("counter", v, str(int(data) + 1).encode()):
                done += 1

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert conn.meta.read("counter") == b"100"


def test_versions_are_the_objects_own_while_other_threads_run_lock_and_omap_calls(conn):
    """An ioctx reports the version of its last synchronous operation, whichever thread ran
    it: a lease renewal or an omap read on another thread must not become the version a
    swap returns (a wrong one makes the next swap fail, and a too-high one would stick)."""
    pool = conn.meta
    for _ in range(200):  # the other object's version well above ours
        pool.try_lock("lease.other", "lease", "c", 30.0)
    stop = threading.Event()

    def other_calls() -> None:
        while not stop.is_set():
            pool.try_lock("lease.other", "lease", "c", 30.0)
            pool.omap_get("lease.other")

    t = threading.Thread(target=other_calls, daemon=True)
    t.start()
    try:
        v = pool.cas_write_version("mine", None, b"0")
        for i in range(1, 1500):
            assert v is not None
            got = pool.cas_write_version("mine", v, b"%d" % i)
            assert got is not None, f"swap {i}: the version returned before was not ours"
            _, real = pool.read_versioned("mine")
            assert real == got
            v = got
    finally:
        stop.set()
        t.join(30)


@pytest.mark.needs_ceph
def test_exclusive_locks_renew_expire_and_release(conn):
    m = conn.meta
    assert m.try_lock("vol.1", "attach", "front-a", 30)
    assert m.try_lock("vol.1", "attach", "front-a", 30)  # its own lock: renewed
    assert not m.try_lock("vol.1", "attach", "front-b", 30)
    assert m.renew_lock("vol.1", "attach", "front-a", 30)
    assert not m.renew_lock("vol.1", "attach", "front-b", 30)
    assert not m.unlock("vol.1", "attach", "front-b")  # not the holder: nothing happens
    assert m.unlock("vol.1", "attach", "front-a")
    assert not m.unlock("vol.1", "attach", "front-a")  # not held any more
    t0 = time.monotonic()
    assert m.try_lock("vol.1", "attach", "front-b", 1.5)
    # front-b's lease runs out when it said, to a few hundredths of a second: then a takeover
    # succeeds, never before, and b cannot renew
    while not m.try_lock("vol.1", "attach", "front-a", 30):
        assert time.monotonic() - t0 < 3
        time.sleep(0.02)
    assert time.monotonic() - t0 >= 1.4
    assert not m.renew_lock("vol.1", "attach", "front-b", 30)
    with pytest.raises(InvalidParameter):
        m.try_lock("vol.1", "attach", "front-a", 0)


# --- a cluster that is not there -------------------------------------------------------------


@pytest.mark.needs_ceph
def test_a_dead_monitor_fails_cleanly_within_the_timeout(ceph_cluster, tmp_path):
    conf = tmp_path / "dead.conf"
    conf.write_text("[global]\nmon host = [v2:127.0.0.1:9]\nauth client required = none\n")
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unavailable"):
        rados_io.connect(f"rados://p?conf={conf}&timeout=2")
    assert time.monotonic() - t0 < 15


def chunk_put(c, store) -> None:
    from ebsengine.storage.rados_chunks import RadosChunks
    rc = RadosChunks(c, store, store.backend.open_db(b"chunk_index"),
                     store.backend.open_db(b"chunk_gc"))
    with store.write() as txn:
        txn.put(b"volume", b"refers to the chunk", db=store.db["service"])
        rc.put_many(txn, [(bytes(20), b"chunk")])


def store_content(store) -> list:
    with store.read() as txn:
        return [(name, list(txn.cursor(db=store.backend.open_db(name.encode()))))
                for name in ("service", "chunk_index", "chunk_gc")]


@pytest.mark.needs_ceph
def test_a_cluster_that_stops_answering_gives_backend_unavailable_not_a_hang(ceph_cluster):
    cluster = start_private_cluster()
    try:
        c = rados_io.connect(cluster.url("down", timeout=2))
        c.data.put_many([("a", b"A"), ("b", b"B")])
        c.meta.cas_write("root", None, b"r")
        store = Store(backend=MemoryBackend())
        before = store_content(store)
        osd = int(Path(f"{cluster.dir}/run/osd.0.pid").read_text())
        os.kill(osd, signal.SIGSTOP)  # the OSD hangs (as a lost host does): nothing answers
        try:
            ops = {"put": lambda: c.data.put_many([("c", b"C")]),
                   "read": lambda: c.data.read_many(["a", "b"]),
                   "cas": lambda: c.meta.cas_write("root", 999, b"x"),  # can never apply
                   "chunk put": lambda: chunk_put(c, store)}
            for name, op in ops.items():
                t0 = time.monotonic()
                try:
                    got = op()
                except BackendUnavailable as exc:
                    assert "nothing stored was lost" in str(exc)
                else:
                    pytest.fail(f"{name} returned {got!r} from a stopped OSD")
                assert time.monotonic() - t0 < 15, name
        finally:
            # thawed, then re-peered: a one-OSD PG frozen past its read lease otherwise parks
            # reads as "waiting for readable" (a Ceph limitation, see ceph_support.resume)
            os.kill(osd, signal.SIGCONT)
            resume(cluster, repeer=True)
        # back: work resumes (once the OSD has caught up), nothing was lost
        deadline = time.monotonic() + 120
        while True:
            try:
                assert c.data.read_many(["a", "b"]) == [b"A", b"B"]
                break
            except BackendUnavailable:
                log = Path(f"{cluster.dir}/log/osd.0.log").read_text().splitlines()[-20:]
                assert time.monotonic() < deadline, "the cluster did not come back:\n" + \
                    "\n".join(log)
        assert c.meta.read("root") == b"r"
        assert store_content(store) == before  # the chunk put's transaction committed nothing
        c.close()
        stop_cluster(cluster)
        t0 = time.monotonic()  # the whole cluster gone: connecting fails too, and soon
        with pytest.raises(BackendUnavailable):
            rados_io.connect(cluster.url("down", timeout=2))
        assert time.monotonic() - t0 < 15
    finally:
        stop_cluster(cluster)


@pytest.mark.needs_ceph
def test_a_full_cluster_refuses_writes_at_once_and_deletes_free_it(ceph_cluster):
    cluster = start_private_cluster(CEPH_OSD_MB="64")
    try:
        c = rados_io.connect(cluster.url("full", timeout=20))
        # The OSD tells the monitor it is full in its periodic reports, so fill it at a pace
        # that lets a report through (on a loaded machine 400 MiB at once can outrun it).
        deadline = time.monotonic() + 120
        refused = None
        for i in range(400):
            t0 = time.monotonic()
            try:
                c.data.put_many([(f"o{i}.{j}", os.urandom(1 << 20)) for j in range(4)])
            except StoreFull as exc:
                assert "full" in str(exc)
                refused = time.monotonic() - t0
                break
            assert time.monotonic() < deadline, "the cluster never reported itself full"
            time.sleep(0.1)
        assert refused is not None, "the cluster never refused a write"
        assert refused < 20  # refused, not held until the timeout
        names = list(c.data.list_objects())
        assert names and c.data.remove_many(names) == len(names)  # deletes still work
        deadline = time.monotonic() + 60
        while True:  # and once the OSD reports the room, writes work again
            try:
                c.data.put_many([("after", b"x")])
                break
            except StoreFull:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert c.data.read("after") == b"x"
        c.close()
    finally:
        stop_cluster(cluster)


def test_only_rados_io_imports_the_binding():
    import ast

    import ebsengine
    root = Path(ebsengine.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "rados" or n.startswith("rados.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers == {"storage/rados_io.py"}
