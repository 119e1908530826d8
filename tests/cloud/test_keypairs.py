"""Key pairs through the library (ebsengine.cloud.keypairs / keyformats): key material that
real tools load, AWS's fingerprints checked against openssl/ssh-keygen/puttygen, the import
encodings, and the refusals (which store nothing)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import keys_support as ks
from ebsengine import Engine
from ebsengine.cloud import Cloud, CloudConfig, Scope, keyformats
from ebsengine.errors import Ec2Error

S = Scope("us-east-1", "123456789012")
WEST = Scope("us-west-2", "123456789012")


@pytest.fixture
def cloud() -> Cloud:
    return Cloud(Engine("memory://"))


def code_of(call, *args, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Ec2Error) as info:
        call(*args, **kw)
    return info.value.code


# --- CreateKeyPair ----------------------------------------------------------------------------


def test_created_rsa_pem_is_pkcs1_with_aws_fingerprint(cloud: Cloud, tmp_path: Path) -> None:
    rec, material = cloud.keypairs.create(S, "deploy")
    assert material.startswith("-----BEGIN RSA PRIVATE KEY-----\n")
    key = ser.load_pem_private_key(material.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    assert rec.key_type == "rsa" and rec.id.startswith("key-")
    assert rec.fingerprint == ks.openssl_created_rsa_fingerprint(material)
    assert len(rec.fingerprint.split(":")) == 20  # SHA-1
    f = tmp_path / "k.pem"
    f.write_text(material)
    assert ks.ssh_keygen_public(f) == " ".join(rec.public_key.split()[:2])
    assert rec.public_key.endswith(" deploy")


def test_created_ed25519_pem_is_openssh_format(cloud: Cloud, tmp_path: Path) -> None:
    rec, material = cloud.keypairs.create(S, "ed", key_type="ed25519")
    assert material.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key = ser.load_ssh_private_key(material.encode(), password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    line = " ".join(rec.public_key.split()[:2])
    assert line == key.public_key().public_bytes(ser.Encoding.OpenSSH,
                                                 ser.PublicFormat.OpenSSH).decode()
    assert rec.fingerprint == ks.cryptography_sha256_fingerprint(line)
    assert rec.fingerprint.endswith("=")  # AWS keeps the padding OpenSSH drops
    assert rec.fingerprint == ks.ssh_keygen_sha256(line, tmp_path)
    f = tmp_path / "k"
    f.write_text(material)
    assert ks.ssh_keygen_public(f) == line


@pytest.mark.parametrize("key_type", ["rsa", "ed25519"])
def test_created_ppk_loads_in_puttygen(cloud: Cloud, tmp_path: Path, key_type: str) -> None:
    rec, material = cloud.keypairs.create(S, "putty", key_type=key_type, key_format="ppk")
    algo = "ssh-rsa" if key_type == "rsa" else "ssh-ed25519"
    assert material.startswith(f"PuTTY-User-Key-File-2: {algo}\nEncryption: none\n"
                               f"Comment: putty\n")
    assert ks.puttygen_load(material, tmp_path) == " ".join(rec.public_key.split()[:2])
    # the MAC covers the header: an edited comment no longer loads
    tampered = material.replace("Comment: putty", "Comment: putts")
    with pytest.raises(Exception, match="returned non-zero"):
        ks.puttygen_load(tampered, tmp_path)


def test_ppk_mac_matches_a_file_puttygen_wrote() -> None:
    # an unencrypted Ed25519 PPK v2 made by PuTTYgen (published as test data by the picky
    # crate): our MAC over its fields must be the one PuTTYgen computed
    pub = base64.b64decode("AAAAC3NzaC1lZDI1NTE5AAAAILMyy5tkHvvUqRtQYHzOzkyR4PYwj1P284HBQXHvrKeh")
    priv = base64.b64decode("AAAAIBwepG2OCCnYICCmTXNuDk6Hl/xdjPbNGY3CQlTLGBo4")
    mac = keyformats.ppk_mac(2, "ssh-ed25519", "none", "ed25519-key-20240418", pub, priv)
    assert mac == "53075221be556e89770351391573dbb7dba661d2"
    # and its private blob is the seed as a string, as ours is
    seed = ed25519.Ed25519PrivateKey.from_private_bytes(priv[4:])
    assert keyformats.public_blob(seed.public_key()) == pub


def test_ppk_v3_loads_in_puttygen(tmp_path: Path) -> None:
    key = ks.new_ed25519()
    text = keyformats.to_ppk(key, "v3", version=3)
    assert text.startswith("PuTTY-User-Key-File-3: ssh-ed25519\n")
    assert len(text.rstrip().rsplit(" ", 1)[1]) == 64  # HMAC-SHA-256
    assert ks.puttygen_load(text, tmp_path) == ks.openssh_pub(key).decode()


def test_material_is_not_stored(cloud: Cloud) -> None:
    rec, material = cloud.keypairs.create(S, "secret")
    body = material.splitlines()[1]
    for _, value in cloud.engine.service_items("ec2.keypair"):
        assert body not in str(value)
    assert cloud.keypairs.describe(S) == [rec]


def test_create_refusals_store_nothing(cloud: Cloud) -> None:
    cloud.keypairs.create(S, "taken")
    assert code_of(cloud.keypairs.create, S, "taken") == "InvalidKeyPair.Duplicate"
    assert code_of(cloud.keypairs.create, S, "x" * 256) == "InvalidParameterValue"
    assert code_of(cloud.keypairs.create, S, "clé") == "InvalidParameterValue"
    assert code_of(cloud.keypairs.create, S, "") == "MissingParameter"
    assert code_of(cloud.keypairs.create, S, "a", key_type="dsa") == "InvalidParameterValue"
    assert code_of(cloud.keypairs.create, S, "a", key_format="der") == "InvalidParameterValue"
    assert code_of(cloud.keypairs.create, S, "a", tag_specifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "k", "Value": "v"}]}]) == \
        "InvalidParameterValue"
    assert [k.name for k in cloud.keypairs.describe(S)] == ["taken"]
    # names are per region, and exactly 255 ASCII characters is fine
    cloud.keypairs.create(WEST, "taken")
    cloud.keypairs.create(S, "x" * 255)


def test_quota_per_region() -> None:
    cloud = Cloud(Engine("memory://"), config=CloudConfig(key_pair_quota=2))
    cloud.keypairs.create(S, "a")
    cloud.keypairs.import_key(S, "b", ks.openssh_pub(ks.new_ed25519()))
    assert code_of(cloud.keypairs.create, S, "c") == "KeyPairLimitExceeded"
    assert code_of(cloud.keypairs.import_key, S, "c", ks.openssh_pub(ks.new_ed25519())) == \
        "KeyPairLimitExceeded"
    cloud.keypairs.create(WEST, "c")  # another region has its own quota
    cloud.keypairs.delete(S, name="a")
    cloud.keypairs.create(S, "c")


def test_tags(cloud: Cloud) -> None:
    rec, _ = cloud.keypairs.create(S, "t", tag_specifications=[
        {"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "ops"}]}])
    assert rec.tags == {"team": "ops"}
    cloud.tags.set(S, [rec.id], {"env": "prod"})
    (got,) = cloud.keypairs.describe(S, ids=[rec.id])
    assert got.tags == {"team": "ops", "env": "prod"}


# --- ImportKeyPair ----------------------------------------------------------------------------


def test_import_rsa_encodings_all_give_the_md5_spki_fingerprint(cloud: Cloud,
                                                                tmp_path: Path) -> None:
    key = ks.new_rsa()
    want = ks.openssl_imported_rsa_fingerprint(ks.spki_pem(key))
    line = ks.openssh_pub(key, "me@host")
    forms = {
        "openssh": line,
        "rfc4716": ks.rfc4716(line, tmp_path),
        "pem": ks.spki_pem(key),
        "pkcs1-pem": key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.PKCS1),
        "der": ks.spki_der(key),
        "b64-der": base64.b64encode(ks.spki_der(key)),
        "crlf-line": line + b"\r\n",
    }
    for name, material in forms.items():
        rec = cloud.keypairs.import_key(S, name, material)
        assert (rec.key_type, rec.fingerprint) == ("rsa", want), name
        assert rec.public_key == f"{ks.openssh_pub(key).decode()} {name}"
    assert len(want.split(":")) == 16  # MD5, not ssh-keygen's SHA256


def test_import_ed25519(cloud: Cloud, tmp_path: Path) -> None:
    key = ks.new_ed25519()
    line = ks.openssh_pub(key, "c")
    want = ks.ssh_keygen_sha256(line.decode(), tmp_path)
    for name, material in {"line": line, "rfc": ks.rfc4716(line, tmp_path),
                           "pem": ks.spki_pem(key)}.items():
        rec = cloud.keypairs.import_key(S, name, material)
        assert (rec.key_type, rec.fingerprint) == ("ed25519", want), name


def test_import_rsa_sizes(cloud: Cloud) -> None:
    for bits in (1024, 4096):
        assert cloud.keypairs.import_key(S, f"k{bits}", ks.openssh_pub(ks.new_rsa(bits)))
    assert code_of(cloud.keypairs.import_key, S, "k3072",
                   ks.openssh_pub(ks.new_rsa(3072))) == "InvalidKeyPair.Format"


@pytest.mark.parametrize("material", [
    b"", b"garbage", b"ssh-rsa", b"ssh-rsa !!!notbase64", b"ssh-rsa AAAAB3NzaC1yc2E=",
    b"ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x05short"),
    b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    b"---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----\n",
    b"\xff\xfe\x00binary",
])
def test_import_garbage(cloud: Cloud, material: bytes) -> None:
    assert code_of(cloud.keypairs.import_key, S, "bad", material) == "InvalidKeyPair.Format"
    assert cloud.keypairs.describe(S) == []


def test_import_refuses_other_key_types_and_mismatched_prefix(cloud: Cloud) -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    for material in (ks.openssh_pub(ecdsa), ks.spki_pem(ecdsa)):  # type: ignore[arg-type]
        assert code_of(cloud.keypairs.import_key, S, "ec", material) == "InvalidKeyPair.Format"
    blob = ks.openssh_pub(ks.new_ed25519()).split()[1]
    assert code_of(cloud.keypairs.import_key, S, "mix", b"ssh-rsa " + blob) == \
        "InvalidKeyPair.Format"


def test_import_duplicate(cloud: Cloud) -> None:
    cloud.keypairs.create(S, "dup")
    assert code_of(cloud.keypairs.import_key, S, "dup", ks.openssh_pub(ks.new_ed25519())) == \
        "InvalidKeyPair.Duplicate"


# --- describe and delete ----------------------------------------------------------------------


def test_describe_and_delete(cloud: Cloud) -> None:
    a, _ = cloud.keypairs.create(S, "a")
    b = cloud.keypairs.import_key(S, "b", ks.openssh_pub(ks.new_ed25519()))
    cloud.keypairs.create(WEST, "w")
    assert [k.name for k in cloud.keypairs.describe(S)] == ["a", "b"]
    assert cloud.keypairs.describe(S, names=["b"]) == [b]
    assert cloud.keypairs.describe(S, ids=[a.id]) == [a]
    assert code_of(cloud.keypairs.describe, S, names=["a", "nope"]) == "InvalidKeyPair.NotFound"
    assert code_of(cloud.keypairs.describe, S, names=["w"]) == "InvalidKeyPair.NotFound"
    assert code_of(cloud.keypairs.describe, S, ids=["key-0123456789abcdef0"]) == \
        "InvalidKeyPair.NotFound"
    assert cloud.keypairs.delete(S, name="nope") is None     # AWS: true, nothing deleted
    assert code_of(cloud.keypairs.delete, S, key_pair_id="key-0123456789abcdef0") == \
        "InvalidKeyPair.NotFound"
    assert code_of(cloud.keypairs.delete, S) == "MissingParameter"
    assert cloud.keypairs.delete(S, name="a") == a.id
    assert cloud.keypairs.delete(S, key_pair_id=b.id) == b.id
    assert cloud.keypairs.describe(S) == []
    assert [k.name for k in cloud.keypairs.describe(WEST)] == ["w"]
    assert cloud.check() == []
