"""Key pair actions through boto3 against a real server: CreateKeyPair (each type and
format, material loadable by real tools), ImportKeyPair, DescribeKeyPairs (filters,
IncludePublicKey), DeleteKeyPair; state survives a restart, refusals change nothing."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization as ser

import keys_support as ks
from test_aws_support import Aws, aws, expect_error  # noqa: F401  (fixture)


def tag_spec(**tags: str) -> list[dict]:  # type: ignore[type-arg]
    return [{"ResourceType": "key-pair", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


@pytest.mark.parametrize("key_type, key_format, header", [
    ("rsa", "pem", "-----BEGIN RSA PRIVATE KEY-----"),
    ("ed25519", "pem", "-----BEGIN OPENSSH PRIVATE KEY-----"),
    ("rsa", "ppk", "PuTTY-User-Key-File-2: ssh-rsa"),
    ("ed25519", "ppk", "PuTTY-User-Key-File-2: ssh-ed25519"),
])
def test_create_key_pair(aws: Aws, tmp_path: Path, key_type: str, key_format: str,
                         header: str) -> None:
    out = aws.ec2.create_key_pair(KeyName="k1", KeyType=key_type, KeyFormat=key_format,
                                  TagSpecifications=tag_spec(team="ops"))
    material = out["KeyMaterial"]
    assert material.startswith(header)
    assert out["KeyPairId"].startswith("key-") and out["KeyName"] == "k1"
    assert out["Tags"] == [{"Key": "team", "Value": "ops"}]
    aws.restart()
    (kp,) = aws.ec2.describe_key_pairs(KeyNames=["k1"], IncludePublicKey=True)["KeyPairs"]
    assert kp["KeyPairId"] == out["KeyPairId"] and kp["KeyType"] == key_type
    assert kp["KeyFingerprint"] == out["KeyFingerprint"]
    assert "KeyMaterial" not in kp
    line = " ".join(kp["PublicKey"].split()[:2])
    # the private key really is the public key's
    if key_format == "ppk":
        assert ks.puttygen_load(material, tmp_path) == line
    else:
        f = tmp_path / "key"
        f.write_text(material)
        assert ks.ssh_keygen_public(f) == line
        if key_type == "rsa":
            ser.load_pem_private_key(material.encode(), password=None)
            assert out["KeyFingerprint"] == ks.openssl_created_rsa_fingerprint(material)
        else:
            ser.load_ssh_private_key(material.encode(), password=None)
    if key_type == "ed25519":
        assert out["KeyFingerprint"] == ks.ssh_keygen_sha256(line, tmp_path)
    assert kp["CreateTime"].year >= 2024


def test_create_defaults_to_rsa_pem(aws: Aws) -> None:
    out = aws.ec2.create_key_pair(KeyName="plain")
    assert out["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert "Tags" not in out or out["Tags"] == []


def test_create_refusals_change_nothing(aws: Aws) -> None:
    aws.ec2.create_key_pair(KeyName="taken")
    with aws.unchanged():
        expect_error(aws.ec2.create_key_pair, "InvalidKeyPair.Duplicate", 400, KeyName="taken")
        expect_error(aws.ec2.create_key_pair, "InvalidParameterValue", 400, KeyName="x" * 256)
        expect_error(aws.ec2.create_key_pair, "InvalidParameterValue", 400, KeyName="a",
                     KeyType="dsa")
        expect_error(aws.ec2.create_key_pair, "InvalidParameterValue", 400, KeyName="a",
                     TagSpecifications=[{"ResourceType": "volume",
                                         "Tags": [{"Key": "a", "Value": "b"}]}])
        expect_error(aws.ec2.create_key_pair, "DryRunOperation", 412, KeyName="a", DryRun=True)
    # the same name in another region is another key
    aws.ec2_west.create_key_pair(KeyName="taken")


def test_import_key_pair_each_format(aws: Aws, tmp_path: Path) -> None:
    rsa_key, ed_key = ks.new_rsa(), ks.new_ed25519()
    rsa_fp = ks.openssl_imported_rsa_fingerprint(ks.spki_pem(rsa_key))
    ed_line = ks.openssh_pub(ed_key, "me")
    ed_fp = ks.ssh_keygen_sha256(ed_line.decode(), tmp_path)
    cases = {
        "rsa-line": (ks.openssh_pub(rsa_key, "me@host"), rsa_fp),
        "rsa-rfc4716": (ks.rfc4716(ks.openssh_pub(rsa_key), tmp_path), rsa_fp),
        "rsa-pem": (ks.spki_pem(rsa_key), rsa_fp),
        "rsa-b64-der": (base64.b64encode(ks.spki_der(rsa_key)), rsa_fp),
        "ed-line": (ed_line, ed_fp),
        "ed-rfc4716": (ks.rfc4716(ed_line, tmp_path), ed_fp),
    }
    for name, (material, fp) in cases.items():
        out = aws.ec2.import_key_pair(KeyName=name, PublicKeyMaterial=material,
                                      TagSpecifications=tag_spec(src=name))
        assert out["KeyFingerprint"] == fp, name
        assert out["Tags"] == [{"Key": "src", "Value": name}]
    aws.restart()
    got = {k["KeyName"]: k for k in aws.ec2.describe_key_pairs(IncludePublicKey=True)["KeyPairs"]}
    assert set(got) == set(cases)
    assert got["rsa-pem"]["PublicKey"] == ks.openssh_pub(rsa_key).decode() + " rsa-pem"
    assert got["ed-line"]["KeyType"] == "ed25519" and got["rsa-line"]["KeyType"] == "rsa"


def test_import_refusals_change_nothing(aws: Aws) -> None:
    aws.ec2.import_key_pair(KeyName="have", PublicKeyMaterial=ks.openssh_pub(ks.new_ed25519()))
    with aws.unchanged():
        for material in (b"garbage", b"ssh-rsa AAAA", ks.openssh_pub(ks.new_rsa(3072))):
            expect_error(aws.ec2.import_key_pair, "InvalidKeyPair.Format", 400, KeyName="bad",
                         PublicKeyMaterial=material)
        expect_error(aws.ec2.import_key_pair, "InvalidKeyPair.Duplicate", 400, KeyName="have",
                     PublicKeyMaterial=ks.openssh_pub(ks.new_ed25519()))


def test_describe_filters_and_not_found(aws: Aws) -> None:
    a = aws.ec2.create_key_pair(KeyName="alpha", TagSpecifications=tag_spec(env="prod"))
    b = aws.ec2.create_key_pair(KeyName="beta", KeyType="ed25519")
    aws.ec2.create_tags(Resources=[b["KeyPairId"]], Tags=[{"Key": "env", "Value": "dev"}])
    aws.ec2_west.create_key_pair(KeyName="west")

    def names(**kw):  # type: ignore[no-untyped-def]
        return [k["KeyName"] for k in aws.ec2.describe_key_pairs(**kw)["KeyPairs"]]

    with aws.unchanged():
        assert names() == ["alpha", "beta"]
        assert "PublicKey" not in aws.ec2.describe_key_pairs()["KeyPairs"][0]
        f = lambda n, *v: [{"Name": n, "Values": list(v)}]  # noqa: E731
        assert names(Filters=f("key-name", "al*")) == ["alpha"]
        assert names(Filters=f("key-pair-id", b["KeyPairId"])) == ["beta"]
        assert names(Filters=f("fingerprint", a["KeyFingerprint"])) == ["alpha"]
        assert names(Filters=f("key-type", "ed25519")) == ["beta"]
        assert names(Filters=f("tag:env", "prod")) == ["alpha"]
        assert names(Filters=f("tag-key", "env")) == ["alpha", "beta"]
        assert names(KeyNames=["beta"], Filters=f("key-type", "rsa")) == []
        assert names(KeyPairIds=[a["KeyPairId"]]) == ["alpha"]
        expect_error(aws.ec2.describe_key_pairs, "InvalidKeyPair.NotFound", 400,
                     KeyNames=["alpha", "west"])
        expect_error(aws.ec2.describe_key_pairs, "InvalidKeyPair.NotFound", 400,
                     KeyPairIds=["key-0123456789abcdef0"])
        expect_error(aws.ec2.describe_key_pairs, "InvalidParameterValue", 400,
                     Filters=f("color", "red"))
    tags = aws.ec2.describe_tags(Filters=[{"Name": "resource-type", "Values": ["key-pair"]}])
    assert {t["ResourceId"] for t in tags["Tags"]} == {a["KeyPairId"], b["KeyPairId"]}


def test_delete_key_pair(aws: Aws) -> None:
    a = aws.ec2.create_key_pair(KeyName="a")
    b = aws.ec2.create_key_pair(KeyName="b")
    out = aws.ec2.delete_key_pair(KeyName="a")
    assert out["Return"] is True and out["KeyPairId"] == a["KeyPairId"]
    aws.restart()
    out = aws.ec2.delete_key_pair(KeyPairId=b["KeyPairId"])
    assert out["Return"] is True and out["KeyPairId"] == b["KeyPairId"]
    with aws.unchanged():
        out = aws.ec2.delete_key_pair(KeyName="never-was")  # AWS: true, nothing deleted
        assert out["Return"] is True and "KeyPairId" not in out
        expect_error(aws.ec2.delete_key_pair, "InvalidKeyPair.NotFound", 400,
                     KeyPairId="key-0123456789abcdef0")
    assert aws.ec2.describe_key_pairs()["KeyPairs"] == []
    # the name is free again
    aws.ec2.create_key_pair(KeyName="a")
