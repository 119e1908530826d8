"""The ``ebsengine`` command line, run as a user runs it (a subprocess)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

GIB = 1 << 30


def run(store: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", store, *args],
                       capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"ebsengine {' '.join(args)} -> {p.returncode}\n{p.stderr}")
    return p


def js(store: str, *args: str) -> dict:
    return json.loads(run(store, *args, "--json").stdout)


def sha(path: str, n: int | None = None) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(n) if n is not None else f.read()).hexdigest()


@pytest.fixture
def image(tmp_path) -> str:
    """A small sparse image: data, a hole, written zeros, text, and an unaligned tail."""
    rng = random.Random(11)
    p = tmp_path / "disk.img"
    with open(p, "wb") as f:
        f.write(rng.randbytes(300_000))
        f.seek(2 << 20)
        f.write(bytes(200_000))
        f.write(b"lorem ipsum dolor sit amet " * 20_000)
        f.seek((5 << 20) + 123)
        f.write(b"tail")
    return str(p)


def test_round_trip_import_snapshot_export_compare(tmp_path, image):
    store = str(tmp_path / "store")
    out = js(store, "import", image, "--snapshot")
    vid, sid = out["volume"]["id"], out["snapshot"]["id"]
    assert out["volume"]["size_gib"] == 1
    exported = str(tmp_path / "out.img")
    res = js(store, "export", sid, exported)
    assert os.path.getsize(exported) == GIB
    size = os.path.getsize(image)
    assert sha(exported, size) == sha(image)
    with open(exported, "rb") as f:
        f.seek(size)
        assert f.read(1 << 20) == bytes(1 << 20)
    # sparse where the source is: far less allocated than the 1 GiB apparent size
    assert os.stat(exported).st_blocks * 512 < 16 << 20
    assert res["data_bytes"] < 2 << 20
    listing = js(store, "list")
    assert [v["id"] for v in listing["volumes"]] == [vid]
    assert [s["id"] for s in listing["snapshots"]] == [sid]
    assert "VOLUMES" in run(store, "list").stdout
    assert js(store, "fsck")["ok"] is True


def test_snapshot_restore_diff_blocks_usage_resize_delete(tmp_path, image):
    store = str(tmp_path / "store")
    vid = js(store, "import", image)["volume"]["id"]
    s1 = js(store, "snapshot", vid, "--description", "first")["id"]
    # change one 512 KiB block through a second import into the same volume
    with open(image, "r+b") as f:
        f.seek(3 * 524288 + 10)
        f.write(b"changed")
    js(store, "import", image, "--volume", vid)
    s2 = js(store, "snapshot", vid)["id"]
    assert js(store, "diff", s1, s2)["changed_blocks"] == [3]
    assert js(store, "diff", "-", s2)["changed_blocks"] == js(store, "blocks", s2)["blocks"]
    assert js(store, "show", s1)["description"] == "first"
    u = js(store, "usage", s2)
    assert 0 < u["stored_bytes"] < 524288 and u["logical_bytes"] == GIB
    clone = js(store, "restore", s1, "--size", "2")
    assert clone["size_gib"] == 2 and clone["snapshot_id"] == s1
    assert js(store, "resize", vid, "--size", "3")["size_gib"] == 3
    exported = str(tmp_path / "s1.img")
    js(store, "export", clone["id"], exported)
    assert os.path.getsize(exported) == 2 * GIB
    run(store, "delete", s1)
    run(store, "delete", clone["id"])
    assert js(store, "fsck")["ok"]


@pytest.mark.parametrize("args,code,needle", [
    (["show", "vol-0123456789abcdef0"], 3, "does not exist"),
    (["show", "banana"], 2, "Invalid id"),
    (["create", "--size", "0"], 2, "out of range"),
    (["create", "--size", "10", "--type", "io1"], 2, "iops"),
    (["export", "snap-0123456789abcdef0", "/tmp/never"], 3, "does not exist"),
])
def test_user_errors_exit_codes_and_no_traceback(tmp_path, args, code, needle):
    p = run(str(tmp_path / "store"), *args, check=False)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1


def test_refused_resize_changes_nothing(tmp_path):
    store = str(tmp_path / "store")
    vid = js(store, "create", "--size", "4")["id"]
    p = run(store, "resize", vid, "--size", "2", check=False)
    assert p.returncode == 2 and "smaller" in p.stderr
    assert js(store, "show", vid)["size_gib"] == 4
    j = run(store, "resize", vid, "--size", "2", "--json", check=False)
    assert json.loads(j.stderr)["error"]["code"] == "InvalidParameterValue"


def test_fsck_exit_code_on_problems(tmp_path, image):
    store = str(tmp_path / "store")
    js(store, "import", image)
    import lmdb
    env = lmdb.open(store, max_dbs=16)
    refs = env.open_db(b"refs")
    with env.begin(write=True) as txn:
        key = next(iter(txn.cursor(db=refs)))[0]
        txn.put(key, (99).to_bytes(8, "big"), db=refs)
    env.close()
    p = run(store, "fsck", check=False)
    assert p.returncode == 6 and "I4" in p.stdout


def test_default_store_from_environment(tmp_path):
    env = {**os.environ, "EBSENGINE_STORE": str(tmp_path / "envstore")}
    p = subprocess.run([sys.executable, "-m", "ebsengine.cli", "create", "--size", "1"],
                       capture_output=True, text=True, env=env, timeout=60, check=True)
    assert p.stdout.startswith("vol-")
    assert os.path.exists(tmp_path / "envstore" / "data.mdb")


def test_bad_tag_argument_exits_2(tmp_path) -> None:
    store = str(tmp_path / "s")
    p = run(store, "create", "--size", "1", "--tag", "foo", check=False)
    assert p.returncode == 2 and "KEY=VALUE" in p.stderr
    assert js(store, "list")["volumes"] == []  # and nothing was created


def test_fsck_verifies_encrypted_data_with_the_master_key_and_says_what_it_cannot(tmp_path):
    import ebsengine
    store = str(tmp_path / "store")
    with ebsengine.Engine(store) as e:
        vol = e.create_volume(1, encrypted=True)
        with e.open_volume(vol.id) as dev:
            dev.pwrite(os.urandom(3 * 65536), 0)
    full = js(store, "fsck")
    assert full["ok"] and full["unverified"] == []
    shallow = js(store, "fsck", "--no-keys")
    assert shallow["ok"] and shallow["stats"]["unverified_values"] == 3
    assert "not verified" in run(store, "fsck", "--no-keys").stdout
