"""The key service through the library: data-key domains (envelope encryption as EBS does
it), the master key file, and what the store holds (never a plaintext key)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest

import ebsengine
from conftest import store_digest
from ebsengine.errors import KmsError, MasterKeyError, WrongMasterKey
from ebsengine.kms.crypto import unseal

R, A = "us-east-1", "123456789012"


@pytest.fixture
def mk(tmp_path) -> str:
    return str(tmp_path / "keys" / "master.key")


def store_files(path: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()
                    and p.name != "lock.mdb")


def material(eng: ebsengine.Engine, key_id: str) -> bytes:
    """A KMS key's material, unsealed the way the service does (test only)."""
    rec = eng.service_get("kms.keys", key_id)
    master = eng.kms.master.load(create=False)
    return unseal(master, base64.b64decode(rec["sealed"]), b"kms-key\x00" + key_id.encode())


def test_new_domain_and_domain_key(tmp_path, mk):
    path = str(tmp_path / "s")
    with ebsengine.Engine(path, master_key=mk) as eng:
        kid = eng.kms.create_key(R, A).id
        dom, arn = eng.kms.new_domain(kid, R, A)
        assert arn == f"arn:aws:kms:{R}:{A}:key/{kid}"
        key = eng.kms.domain_key(dom)
        assert len(key) == 32 and eng.kms.domain_key_arn(dom) == arn
        other, _ = eng.kms.new_domain(kid, R, A)
        assert eng.kms.domain_key(other) != key  # each lineage its own data key
        default, default_arn = eng.kms.new_domain(None, R, A)  # alias/aws/ebs, made now
        assert eng.kms.describe_key("alias/aws/ebs", R, A).arn == default_arn
        assert eng.kms.describe_key("alias/aws/ebs", R, A).manager == "AWS"
        _west, west_arn = eng.kms.new_domain(None, "us-west-2", A)
        assert west_arn.startswith("arn:aws:kms:us-west-2:") and west_arn != default_arn
    with ebsengine.Engine(path, master_key=mk) as eng:  # survives a restart
        assert eng.kms.domain_key(dom) == key
        assert eng.kms.domain_key_arn(default) == default_arn


def test_new_domain_in_a_unit_commits_with_it(mk):
    with ebsengine.Engine("memory://", master_key=mk) as eng:
        kid = eng.kms.create_key(R, A).id
        with pytest.raises(RuntimeError), eng.transaction() as tx:
            dom, _ = eng.kms.new_domain(kid, R, A, tx)
            assert len(eng.kms.domain_key(dom, tx)) == 32  # the unit sees its own domain
            raise RuntimeError("abort")
        assert eng.kms.domains() == []
        with eng.transaction() as tx:
            vol = eng.create_volume(1, tx=tx)
            dom, _ = eng.kms.new_domain(kid, R, A, tx)
            eng.service_put("test", vol.id, dom, tx=tx)
        assert eng.kms.domains() == [dom]


def test_disabled_or_pending_key_refuses_then_same_key_back(mk):
    with ebsengine.Engine("memory://", master_key=mk) as eng:
        kid = eng.kms.create_key(R, A).id
        dom, _ = eng.kms.new_domain(kid, R, A)
        key = eng.kms.domain_key(dom)
        eng.kms.disable_key(kid, R, A)
        with pytest.raises(KmsError) as info:
            eng.kms.domain_key(dom)
        assert info.value.code == "DisabledException" and dom in str(info.value)
        with pytest.raises(KmsError) as info:
            eng.kms.new_domain(kid, R, A)
        assert info.value.code == "DisabledException"
        eng.kms.enable_key(kid, R, A)
        assert eng.kms.domain_key(dom) == key
        eng.kms.schedule_key_deletion(kid, R, A, 7)
        with pytest.raises(KmsError) as info:
            eng.kms.domain_key(dom)
        assert info.value.code == "KMSInvalidStateException"
        eng.kms.cancel_key_deletion(kid, R, A)
        eng.kms.enable_key(kid, R, A)
        assert eng.kms.domain_key(dom) == key


def test_deleted_key_on_the_clock(mk):
    now = [1_000_000.0]
    with ebsengine.Engine("memory://", master_key=mk) as eng:
        kms = eng.kms.bind(lambda: now[0])
        kid = kms.create_key(R, A).id
        dom, _ = kms.new_domain(kid, R, A)
        kms.schedule_key_deletion(kid, R, A, 7)
        now[0] += 7 * 86400 + 1
        with pytest.raises(KmsError) as info:
            kms.domain_key(dom)
        assert info.value.code == "NotFoundException"
        with pytest.raises(KmsError):
            kms.domain_key("dom-nope")


def test_no_plaintext_key_in_the_store_files(tmp_path, mk):
    path = str(tmp_path / "s")
    with ebsengine.Engine(path, master_key=mk) as eng:
        kid = eng.kms.create_key(R, A).id
        dom, _ = eng.kms.new_domain(kid, R, A)
        dom2, _ = eng.kms.new_domain(None, R, A)
        secrets = [eng.kms.domain_key(dom), eng.kms.domain_key(dom2), material(eng, kid),
                   material(eng, eng.kms.describe_key("alias/aws/ebs", R, A).id),
                   eng.kms.master.load(create=False)]
    raw = store_files(path)
    assert len(raw) > 0
    for s in secrets:
        assert len(s) == 32
        for form in (s, base64.b64encode(s), s.hex().encode()):
            assert form not in raw


def test_master_key_file_created_0600_in_0700_dir(tmp_path, mk):
    with ebsengine.Engine(str(tmp_path / "s"), master_key=mk) as eng:
        assert not os.path.exists(mk)  # a store that never uses keys needs no master key
        eng.list_volumes()
        assert not os.path.exists(mk)
        eng.kms.list_keys(R, A)
        assert not os.path.exists(mk)
        eng.kms.create_key(R, A)
    assert stat.S_IMODE(os.stat(mk).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(mk)).st_mode) == 0o700


def test_default_master_key_path_is_the_environment(tmp_path, monkeypatch):
    target = tmp_path / "env" / "mk"
    monkeypatch.setenv("EBSENGINE_MASTER_KEY", str(target))
    with ebsengine.Engine(str(tmp_path / "s")) as eng:
        eng.kms.create_key(R, A)
    assert target.exists()
    monkeypatch.delenv("EBSENGINE_MASTER_KEY")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    from ebsengine.kms import default_master_key_path
    assert default_master_key_path() == str(tmp_path / "cfg" / "ebsengine" / "master.key")


def test_wrong_or_missing_master_key_at_open_changes_nothing(tmp_path, mk):
    path = str(tmp_path / "s")
    with ebsengine.Engine(path, master_key=mk) as eng:
        kid = eng.kms.create_key(R, A).id
        dom, _ = eng.kms.new_domain(kid, R, A)
        key = eng.kms.domain_key(dom)
        digest = store_digest(eng)
    before = hashlib.sha256(store_files(path)).hexdigest()
    other = str(tmp_path / "other.key")
    ebsengine.kms.MasterKey(other).load(create=True)
    with pytest.raises(WrongMasterKey) as info:
        ebsengine.Engine(path, master_key=other)
    assert other in str(info.value) and "nothing was changed" in str(info.value)
    with pytest.raises(MasterKeyError) as info2:
        ebsengine.Engine(path, master_key=str(tmp_path / "missing.key"))
    assert "does not exist" in str(info2.value)
    assert not os.path.exists(tmp_path / "missing.key")  # never created for a keyed store
    os.chmod(mk, 0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        ebsengine.Engine(path, master_key=mk)
    os.chmod(mk, 0o600)
    Path(tmp_path / "garbage.key").write_text("not a key\n")
    os.chmod(tmp_path / "garbage.key", 0o600)
    with pytest.raises(MasterKeyError, match="not an ebsengine master key"):
        ebsengine.Engine(path, master_key=str(tmp_path / "garbage.key"))
    assert hashlib.sha256(store_files(path)).hexdigest() == before
    with ebsengine.Engine(path, master_key=mk) as eng:
        assert store_digest(eng) == digest
        assert eng.kms.domain_key(dom) == key


def test_ciphertext_bound_to_context_and_key(mk):
    with ebsengine.Engine("memory://", master_key=mk) as eng:
        k = eng.kms.create_key(R, A)
        blob, _ = eng.kms.encrypt(k.id, b"x" * 32, R, A, context={"a": "1"})
        assert eng.kms.decrypt(blob, R, A, context={"a": "1"})[0] == b"x" * 32
        for ctx in (None, {"a": "2"}, {"a": "1", "b": "2"}):
            with pytest.raises(KmsError) as info:
                eng.kms.decrypt(blob, R, A, context=ctx)
            assert info.value.code == "InvalidCiphertextException"
        # two encryptions of one plaintext differ (a fresh salt each)
        assert eng.kms.encrypt(k.id, b"same", R, A)[0] != eng.kms.encrypt(k.id, b"same", R, A)[0]


def test_master_key_creation_survives_a_stale_temporary_file(tmp_path, mk):
    """A crash between writing the temporary file and linking it leaves the file behind; a
    later process with the same pid (a container's pid 1 at every start) must still create
    the key (the temporary name was the pid alone: O_EXCL then failed forever)."""
    from ebsengine.kms.crypto import MasterKey

    os.makedirs(os.path.dirname(mk), mode=0o700)
    stale = os.path.join(os.path.dirname(mk), f".master.key.{os.getpid()}.tmp")
    Path(stale).write_text("half a key")
    key = MasterKey(mk).load(create=True)
    assert len(key) == 32 and MasterKey(mk).load(create=False) == key
    assert stat.S_IMODE(os.stat(mk).st_mode) == 0o600
