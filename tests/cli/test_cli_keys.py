"""``ebsengine keys ...`` as a user runs it (a subprocess), with ``--master-key``."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys


def run(store: str, mk: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", store,
                        "--master-key", mk, *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"ebsengine {' '.join(args)} -> {p.returncode}\n{p.stderr}")
    return p


def js(store: str, mk: str, *args: str) -> object:
    return json.loads(run(store, mk, *args, "--json").stdout)


def test_keys_lifecycle(tmp_path):
    store, mk = str(tmp_path / "s"), str(tmp_path / "mk" / "master.key")
    assert js(store, mk, "keys", "list") == []
    assert not os.path.exists(mk)
    key = js(store, mk, "keys", "create", "--description", "backups", "--alias", "alias/bk",
             "--tag", "team=ops")
    assert isinstance(key, dict)
    kid = key["KeyId"]
    assert key["Aliases"] == ["alias/bk"] and key["Tags"] == {"team": "ops"}
    assert stat.S_IMODE(os.stat(mk).st_mode) == 0o600
    text = run(store, mk, "keys", "list").stdout
    assert kid in text and "backups" in text and "Enabled" in text
    assert js(store, mk, "keys", "disable", "alias/bk")["KeyState"] == "Disabled"
    assert js(store, mk, "keys", "enable", kid)["KeyState"] == "Enabled"
    out = js(store, mk, "keys", "schedule-deletion", kid, "--days", "7")
    assert out["KeyState"] == "PendingDeletion" and out["PendingDeletionWindowInDays"] == 7
    p = run(store, mk, "keys", "disable", kid, check=False)
    assert p.returncode == 4 and "KMSInvalidStateException" in p.stderr
    assert js(store, mk, "keys", "cancel-deletion", kid)["KeyState"] == "Disabled"
    p = run(store, mk, "keys", "schedule-deletion", kid, "--days", "3", check=False)
    assert p.returncode == 2 and "ValidationException" in p.stderr
    p = run(store, mk, "keys", "show", "alias/none", check=False)
    assert p.returncode == 3 and "NotFoundException" in p.stderr
    p = run(store, mk, "keys", "create", "--alias", "alias/aws/x", check=False)
    assert p.returncode == 4 and "NotAuthorizedException" in p.stderr
    assert [k["KeyId"] for k in js(store, mk, "keys", "list")] == [kid]  # nothing half-made
    assert js(store, mk, "keys", "list", "--region", "eu-west-1") == []


def test_wrong_master_key_is_a_clear_error(tmp_path):
    store, mk = str(tmp_path / "s"), str(tmp_path / "master.key")
    run(store, mk, "keys", "create")
    other = str(tmp_path / "other.key")
    run(str(tmp_path / "s2"), other, "keys", "create")  # a master key of another store
    p = run(store, other, "keys", "list", check=False)
    assert p.returncode == 7 and "is not the master key of this store" in p.stderr
    p = run(store, str(tmp_path / "missing"), "list", check=False)
    assert p.returncode == 7 and "does not exist" in p.stderr
    p = run(store, other, "keys", "list", "--json", check=False)
    assert json.loads(p.stderr)["error"]["code"] == "WrongMasterKey"


def test_create_encrypted_volume_with_a_named_key(tmp_path):
    store, mk = str(tmp_path / "s"), str(tmp_path / "master.key")
    key = js(store, mk, "keys", "create", "--alias", "alias/vols")
    assert isinstance(key, dict)
    # the default key (alias/aws/ebs of the zone's region), then the named one by alias
    plain = js(store, mk, "create", "--size", "1")
    default = js(store, mk, "create", "--size", "1", "--encrypted")
    named = js(store, mk, "create", "--size", "1", "--encrypted", "--kms-key", "alias/vols")
    assert isinstance(plain, dict) and isinstance(default, dict) and isinstance(named, dict)
    assert (plain["encrypted"], plain["kms_key_id"]) == (False, None)
    ebs = js(store, mk, "keys", "show", "alias/aws/ebs")
    assert isinstance(ebs, dict)
    assert (default["encrypted"], default["kms_key_id"]) == (True, ebs["Arn"])
    assert (named["encrypted"], named["kms_key_id"]) == (True, key["Arn"])
    shown = js(store, mk, "show", named["id"])
    assert isinstance(shown, dict) and shown["kms_key_id"] == key["Arn"]
    text = run(store, mk, "list", "--volumes").stdout
    assert "KMS KEY" in text and key["Arn"] in text and ebs["Arn"] in text
    # refusals: a key that does not exist, a disabled key, --kms-key without --encrypted
    p = run(store, mk, "create", "--size", "1", "--encrypted", "--kms-key", "alias/none",
            check=False)
    assert p.returncode == 3 and "NotFoundException" in p.stderr
    run(store, mk, "keys", "disable", "alias/vols")
    p = run(store, mk, "create", "--size", "1", "--encrypted", "--kms-key", "alias/vols",
            check=False)
    assert p.returncode == 4 and "DisabledException" in p.stderr
    p = run(store, mk, "create", "--size", "1", "--kms-key", "alias/vols", check=False)
    assert p.returncode == 2 and "Encrypted" in p.stderr
    vols = js(store, mk, "list", "--volumes")
    assert isinstance(vols, dict) and len(vols["volumes"]) == 3   # nothing half-made
    # restore: a plaintext snapshot's volume encrypted on request; an encrypted one's always
    run(store, mk, "keys", "enable", "alias/vols")
    snap = js(store, mk, "snapshot", plain["id"])
    enc_snap = js(store, mk, "snapshot", named["id"])
    assert isinstance(snap, dict) and isinstance(enc_snap, dict)
    assert enc_snap["kms_key_id"] == key["Arn"]
    back = js(store, mk, "restore", snap["id"], "--encrypted", "--kms-key", "alias/vols")
    again = js(store, mk, "restore", enc_snap["id"])
    assert isinstance(back, dict) and isinstance(again, dict)
    assert (back["encrypted"], back["kms_key_id"]) == (True, key["Arn"])
    assert (again["encrypted"], again["kms_key_id"]) == (True, key["Arn"])
    text = run(store, mk, "list", "--snapshots").stdout
    assert key["Arn"] in text
