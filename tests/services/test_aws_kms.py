"""KMS through boto3's ``kms`` client against a real server: keys, aliases, states, tags,
deletion on the clock, and the cryptographic operations."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from test_aws_support import Aws, client, expect_error

ACCOUNT = "123456789012"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def aws(tmp_path, clock):
    a = Aws(str(tmp_path / "store"), clock=clock)
    try:
        yield a
    finally:
        a.stop()


def new_key(aws: Aws, **kw) -> str:
    return str(aws.kms.create_key(**kw)["KeyMetadata"]["KeyId"])


def test_create_describe_list(aws):
    md = aws.kms.create_key(Description="mine", Tags=[{"TagKey": "team", "TagValue": "a"}])[
        "KeyMetadata"]
    kid = md["KeyId"]
    assert uuid.UUID(kid)
    assert md["Arn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{kid}"
    assert (md["KeyState"], md["Enabled"], md["KeyManager"], md["KeySpec"], md["KeyUsage"]) == (
        "Enabled", True, "CUSTOMER", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    assert md["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    for ref in (kid, md["Arn"]):
        assert aws.kms.describe_key(KeyId=ref)["KeyMetadata"]["Description"] == "mine"
    assert aws.kms.list_keys()["Keys"] == [{"KeyId": kid, "KeyArn": md["Arn"]}]
    assert aws.kms_west.list_keys()["Keys"] == []          # keys are regional
    expect_error(aws.kms_west.describe_key, "NotFoundException", 400, KeyId=kid)
    expect_error(aws.kms_west.describe_key, "NotFoundException", 400, KeyId=md["Arn"])
    assert aws.kms.list_resource_tags(KeyId=kid)["Tags"] == [{"TagKey": "team",
                                                               "TagValue": "a"}]
    aws.restart()
    assert aws.kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "mine"


def test_describe_errors_change_nothing(aws):
    new_key(aws)
    with aws.unchanged():
        expect_error(aws.kms.describe_key, "NotFoundException", 400, KeyId=str(uuid.uuid4()))
        expect_error(aws.kms.describe_key, "NotFoundException", 400, KeyId="not-a-key")
        expect_error(aws.kms.describe_key, "NotFoundException", 400, KeyId="alias/nope")
        expect_error(aws.kms.create_key, "UnsupportedOperationException", 400,
                     KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
        expect_error(aws.kms.create_key, "ValidationException", 400,
                     KeySpec="SYMMETRIC_DEFAULT", KeyUsage="GENERATE_VERIFY_MAC")
        expect_error(aws.kms.create_key, "TagException", 400,
                     Tags=[{"TagKey": "aws:x", "TagValue": "y"}])
        expect_error(aws.kms.enable_key, "NotFoundException", 400, KeyId="alias/aws/ebs")


def test_list_keys_pages(aws):
    ids = sorted(new_key(aws) for _ in range(5))
    got, marker = [], None
    while True:
        kw = {"Marker": marker} if marker else {}
        page = aws.kms.list_keys(Limit=2, **kw)
        got += [k["KeyId"] for k in page["Keys"]]
        if not page["Truncated"]:
            break
        marker = page["NextMarker"]
    assert got == ids
    expect_error(aws.kms.list_keys, "InvalidMarkerException", 400, Marker="%%%")


def test_aliases(aws):
    a, b = new_key(aws), new_key(aws)
    aws.kms.create_alias(AliasName="alias/app", TargetKeyId=a)
    assert aws.kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == a
    arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/app"
    assert aws.kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyId"] == a
    with aws.unchanged():
        expect_error(aws.kms.create_alias, "AlreadyExistsException", 400,
                     AliasName="alias/app", TargetKeyId=b)
        expect_error(aws.kms.create_alias, "NotAuthorizedException", 400,
                     AliasName="alias/aws/mine", TargetKeyId=b)
        expect_error(aws.kms.create_alias, "ValidationException", 400,
                     AliasName="app2", TargetKeyId=b)
        expect_error(aws.kms.create_alias, "NotFoundException", 400,
                     AliasName="alias/other", TargetKeyId=str(uuid.uuid4()))
        expect_error(aws.kms.update_alias, "NotFoundException", 400,
                     AliasName="alias/none", TargetKeyId=b)
        expect_error(aws.kms.delete_alias, "NotFoundException", 400, AliasName="alias/none")
    aws.kms.update_alias(AliasName="alias/app", TargetKeyId=b)
    assert aws.kms.describe_key(KeyId="alias/app")["KeyMetadata"]["KeyId"] == b
    names = {x["AliasName"]: x.get("TargetKeyId") for x in aws.kms.list_aliases()["Aliases"]}
    assert names == {"alias/app": b, "alias/aws/ebs": None}  # predefined, not made yet
    assert [x["AliasName"] for x in aws.kms.list_aliases(KeyId=b)["Aliases"]] == ["alias/app"]
    assert aws.kms.list_aliases(KeyId=a)["Aliases"] == []
    expect_error(aws.kms_west.describe_key, "NotFoundException", 400, KeyId="alias/app")
    aws.restart()
    aws.kms.delete_alias(AliasName="alias/app")
    expect_error(aws.kms.describe_key, "NotFoundException", 400, KeyId="alias/app")


def test_aws_managed_ebs_key_per_region(aws):
    with aws.unchanged():  # listing the predefined alias makes nothing
        assert next(x for x in aws.kms.list_aliases()["Aliases"]
                if x["AliasName"] == "alias/aws/ebs").get("TargetKeyId") is None
        assert aws.kms.list_keys()["Keys"] == []
    md = aws.kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]  # first use makes it
    assert md["KeyManager"] == "AWS" and md["KeyState"] == "Enabled"
    assert aws.kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["KeyId"] == md["KeyId"]
    blob = aws.kms_west.encrypt(KeyId="alias/aws/ebs", Plaintext=b"x")
    west = aws.kms_west.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]
    assert west["KeyId"] != md["KeyId"] and west["Arn"].startswith("arn:aws:kms:us-west-2:")
    assert blob["KeyId"] == west["Arn"]
    with aws.unchanged():
        for call in (aws.kms.disable_key, aws.kms.schedule_key_deletion):
            expect_error(call, "AccessDeniedException", 400, KeyId=md["KeyId"])
        expect_error(aws.kms.create_alias, "AccessDeniedException", 400,
                     AliasName="alias/mine", TargetKeyId=md["KeyId"])
        expect_error(aws.kms.delete_alias, "NotAuthorizedException", 400,
                     AliasName="alias/aws/ebs")
    aws.restart()
    assert aws.kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["KeyId"] == md["KeyId"]


@pytest.mark.parametrize("context", [None, {"purpose": "test", "volume": "vol-1"}])
def test_encrypt_decrypt_round_trip(aws, context):
    kid = new_key(aws)
    kw = {"EncryptionContext": context} if context else {}
    out = aws.kms.encrypt(KeyId=kid, Plaintext=b"secret bytes", **kw)
    assert out["KeyId"].endswith(kid) and out["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = out["CiphertextBlob"]
    assert b"secret bytes" not in blob
    got = aws.kms.decrypt(CiphertextBlob=blob, **kw)  # no KeyId: the blob names its key
    assert got["Plaintext"] == b"secret bytes" and got["KeyId"] == out["KeyId"]
    assert aws.kms.decrypt(CiphertextBlob=blob, KeyId=kid, **kw)["Plaintext"] == b"secret bytes"
    # the context must match exactly
    wrong = {"purpose": "other"} if context else {"purpose": "test"}
    expect_error(aws.kms.decrypt, "InvalidCiphertextException", 400, CiphertextBlob=blob,
                 EncryptionContext=wrong)
    if context:
        expect_error(aws.kms.decrypt, "InvalidCiphertextException", 400, CiphertextBlob=blob)
    other = new_key(aws)
    expect_error(aws.kms.decrypt, "IncorrectKeyException", 400, CiphertextBlob=blob,
                 KeyId=other, **kw)
    aws.restart()
    assert aws.kms.decrypt(CiphertextBlob=blob, **kw)["Plaintext"] == b"secret bytes"


def test_tampered_ciphertext(aws):
    kid = new_key(aws)
    blob = bytearray(aws.kms.encrypt(KeyId=kid, Plaintext=b"p" * 100)["CiphertextBlob"])
    for i in (0, 5, 20, 60, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 1
        expect_error(aws.kms.decrypt, "InvalidCiphertextException", 400,
                     CiphertextBlob=bytes(bad))
    expect_error(aws.kms.decrypt, "InvalidCiphertextException", 400, CiphertextBlob=b"short")
    expect_error(aws.kms.decrypt, "InvalidCiphertextException", 400,
                 CiphertextBlob=bytes(blob[:-1]))
    # another region's endpoint does not know the key
    expect_error(aws.kms_west.decrypt, "InvalidCiphertextException", 400,
                 CiphertextBlob=bytes(blob))
    assert aws.kms.decrypt(CiphertextBlob=bytes(blob))["Plaintext"] == b"p" * 100


def test_generate_data_key_and_friends(aws):
    kid = new_key(aws)
    ctx = {"k": "v"}
    dk = aws.kms.generate_data_key(KeyId=kid, KeySpec="AES_256", EncryptionContext=ctx)
    assert len(dk["Plaintext"]) == 32
    assert aws.kms.decrypt(CiphertextBlob=dk["CiphertextBlob"],
                           EncryptionContext=ctx)["Plaintext"] == dk["Plaintext"]
    assert len(aws.kms.generate_data_key(KeyId=kid, NumberOfBytes=7)["Plaintext"]) == 7
    assert len(aws.kms.generate_data_key(KeyId=kid, KeySpec="AES_128")["Plaintext"]) == 16
    np = aws.kms.generate_data_key_without_plaintext(KeyId=kid, KeySpec="AES_256")
    assert "Plaintext" not in np
    assert len(aws.kms.decrypt(CiphertextBlob=np["CiphertextBlob"])["Plaintext"]) == 32
    expect_error(aws.kms.generate_data_key, "ValidationException", 400, KeyId=kid)
    expect_error(aws.kms.generate_data_key, "ValidationException", 400, KeyId=kid,
                 KeySpec="AES_256", NumberOfBytes=32)
    expect_error(aws.kms.generate_data_key, "ValidationException", 400, KeyId=kid,
                 NumberOfBytes=2000)
    # ReEncrypt to another key and context
    dest = new_key(aws)
    re = aws.kms.re_encrypt(CiphertextBlob=dk["CiphertextBlob"], SourceEncryptionContext=ctx,
                            DestinationKeyId=dest, DestinationEncryptionContext={"n": "m"})
    assert re["SourceKeyId"].endswith(kid) and re["KeyId"].endswith(dest)
    assert aws.kms.decrypt(CiphertextBlob=re["CiphertextBlob"],
                           EncryptionContext={"n": "m"})["Plaintext"] == dk["Plaintext"]
    r = aws.kms.generate_random(NumberOfBytes=64)["Plaintext"]
    assert len(r) == 64 and r != aws.kms.generate_random(NumberOfBytes=64)["Plaintext"]
    expect_error(aws.kms.generate_random, "ValidationException", 400, NumberOfBytes=1025)
    expect_error(aws.kms.encrypt, "ValidationException", 400, KeyId=kid, Plaintext=b"x" * 4097)
    expect_error(aws.kms.encrypt, "DryRunOperationException", 412, KeyId=kid, Plaintext=b"x",
                 DryRun=True)


def test_hmac_keys_and_key_usage(aws):
    mac_key = aws.kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")[
        "KeyMetadata"]
    assert mac_key["MacAlgorithms"] == ["HMAC_SHA_256"]
    kid = mac_key["KeyId"]
    mac = aws.kms.generate_mac(KeyId=kid, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    assert aws.kms.verify_mac(KeyId=kid, Message=b"m", Mac=mac,
                              MacAlgorithm="HMAC_SHA_256")["MacValid"]
    expect_error(aws.kms.verify_mac, "KMSInvalidMacException", 400, KeyId=kid, Message=b"n",
                 Mac=mac, MacAlgorithm="HMAC_SHA_256")
    expect_error(aws.kms.encrypt, "InvalidKeyUsageException", 400, KeyId=kid, Plaintext=b"x")
    sym = new_key(aws)
    expect_error(aws.kms.generate_mac, "InvalidKeyUsageException", 400, KeyId=sym,
                 Message=b"m", MacAlgorithm="HMAC_SHA_256")
    expect_error(aws.kms.encrypt, "InvalidKeyUsageException", 400, KeyId=sym, Plaintext=b"x",
                 EncryptionAlgorithm="RSAES_OAEP_SHA_256")


def test_disabled_key_refuses_then_enabled_works(aws):
    kid = new_key(aws)
    blob = aws.kms.encrypt(KeyId=kid, Plaintext=b"data")["CiphertextBlob"]
    aws.kms.disable_key(KeyId=kid)
    aws.kms.disable_key(KeyId=kid)  # already disabled: fine
    md = aws.kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert (md["KeyState"], md["Enabled"]) == ("Disabled", False)
    aws.restart()
    with aws.unchanged():
        expect_error(aws.kms.encrypt, "DisabledException", 400, KeyId=kid, Plaintext=b"x")
        expect_error(aws.kms.decrypt, "DisabledException", 400, CiphertextBlob=blob)
        expect_error(aws.kms.generate_data_key, "DisabledException", 400, KeyId=kid,
                     KeySpec="AES_256")
    aws.kms.enable_key(KeyId=kid)
    assert aws.kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"data"


def test_pending_deletion_cancel_and_deletion_on_the_clock(aws, clock):
    kid = new_key(aws)
    aws.kms.create_alias(AliasName="alias/doomed", TargetKeyId=kid)
    blob = aws.kms.encrypt(KeyId=kid, Plaintext=b"data")["CiphertextBlob"]
    with aws.unchanged():
        for days in (6, 31):
            expect_error(aws.kms.schedule_key_deletion, "ValidationException", 400, KeyId=kid,
                         PendingWindowInDays=days)
        expect_error(aws.kms.cancel_key_deletion, "KMSInvalidStateException", 400, KeyId=kid)
    out = aws.kms.schedule_key_deletion(KeyId=kid)
    assert out["KeyState"] == "PendingDeletion" and out["PendingWindowInDays"] == 30
    assert abs(out["DeletionDate"].timestamp() - (clock.now + 30 * 86400)) < 1
    md = aws.kms.describe_key(KeyId=kid)["KeyMetadata"]
    assert md["KeyState"] == "PendingDeletion" and md["PendingDeletionWindowInDays"] == 30
    with aws.unchanged():
        expect_error(aws.kms.encrypt, "KMSInvalidStateException", 400, KeyId=kid,
                     Plaintext=b"x")
        expect_error(aws.kms.decrypt, "KMSInvalidStateException", 400, CiphertextBlob=blob)
        for call in (aws.kms.enable_key, aws.kms.disable_key, aws.kms.schedule_key_deletion):
            expect_error(call, "KMSInvalidStateException", 400, KeyId=kid)
        expect_error(aws.kms.tag_resource, "KMSInvalidStateException", 400, KeyId=kid,
                     Tags=[{"TagKey": "a", "TagValue": "b"}])
    aws.kms.cancel_key_deletion(KeyId=kid)
    assert aws.kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "Disabled"
    aws.kms.enable_key(KeyId=kid)
    assert aws.kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"data"

    aws.kms.schedule_key_deletion(KeyId=kid, PendingWindowInDays=7)
    clock.now += 7 * 86400 - 60
    aws.restart()
    assert aws.kms.describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    clock.now += 120  # past the deletion date: the key is gone, with its alias
    expect_error(aws.kms.describe_key, "NotFoundException", 400, KeyId=kid)
    expect_error(aws.kms.describe_key, "NotFoundException", 400, KeyId="alias/doomed")
    expect_error(aws.kms.decrypt, "InvalidCiphertextException", 400, CiphertextBlob=blob)
    assert aws.kms.list_keys()["Keys"] == []
    assert "alias/doomed" not in [a["AliasName"] for a in aws.kms.list_aliases()["Aliases"]]
    new_key(aws)  # the next write removes the record
    assert aws.engine.service_get("kms.keys", kid) is None
    assert aws.engine.service_items("kms.aliases") == []


def test_tags(aws):
    kid = new_key(aws)
    aws.kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "a", "TagValue": "1"},
                                          {"TagKey": "b", "TagValue": "2"}])
    aws.kms.tag_resource(KeyId=kid, Tags=[{"TagKey": "a", "TagValue": "3"}])
    aws.kms.untag_resource(KeyId=kid, TagKeys=["b"])
    assert aws.kms.list_resource_tags(KeyId=kid)["Tags"] == [{"TagKey": "a", "TagValue": "3"}]
    with aws.unchanged():
        expect_error(aws.kms.tag_resource, "TagException", 400, KeyId=kid,
                     Tags=[{"TagKey": "aws:x", "TagValue": "1"}])
        expect_error(aws.kms.tag_resource, "TagException", 400, KeyId=kid,
                     Tags=[{"TagKey": f"k{i}", "TagValue": "v"} for i in range(51)])
        expect_error(aws.kms.tag_resource, "NotFoundException", 400, KeyId=str(uuid.uuid4()),
                     Tags=[{"TagKey": "a", "TagValue": "1"}])
    aws.restart()
    assert aws.kms.list_resource_tags(KeyId=kid)["Tags"] == [{"TagKey": "a", "TagValue": "3"}]


def test_update_description_and_rotation_status(aws):
    kid = new_key(aws)
    aws.kms.update_key_description(KeyId=kid, Description="new")
    assert aws.kms.describe_key(KeyId=kid)["KeyMetadata"]["Description"] == "new"
    assert aws.kms.get_key_rotation_status(KeyId=kid)["KeyRotationEnabled"] is False


def test_protocol_errors(aws):
    import urllib.request

    def post(target: str, body: bytes) -> tuple[int, dict]:
        req = urllib.request.Request(aws.url + "/", data=body, method="POST", headers={
            "X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
        try:
            with urllib.request.urlopen(req) as r:
                import json
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            import json
            return e.code, json.loads(e.read())

    status, doc = post("TrentService.Nope", b"{}")
    assert (status, doc["__type"]) == (400, "UnknownOperationException")
    assert post("TrentService.ListKeys", b"not json")[1]["__type"] == "SerializationException"
    assert post("TrentService.Encrypt", b"{}")[1]["__type"] == "ValidationException"
    kid = new_key(aws)
    status, doc = post("TrentService.Encrypt", b'{"KeyId": "%s", "Plaintext": "!!"}' %
                       kid.encode())
    assert (status, doc["__type"]) == (400, "SerializationException")
    status, doc = post("TrentService.Encrypt", b'{"KeyId": "%s", "Plaintext": "%s"}' % (
        kid.encode(), base64.b64encode(b"hi")))
    assert status == 200 and base64.b64decode(doc["CiphertextBlob"])


def test_reset_wipes_keys(tmp_path, clock):
    import json
    import urllib.request

    a = Aws(str(tmp_path / "s"), clock=clock, allow_reset=True)
    try:
        kid = new_key(a)
        a.kms.create_alias(AliasName="alias/x", TargetKeyId=kid)
        a.engine.kms.new_domain(kid, "us-east-1", ACCOUNT)
        req = urllib.request.Request(a.url + "/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req) as r:
            assert json.loads(r.read())["removed"]["kms-key"] == 1
        assert a.kms.list_keys()["Keys"] == []
        assert a.engine.kms.domains() == []
        new_key(a)  # the same master key still serves the store
    finally:
        a.stop()


def test_cli_endpoint_client_factory_region(tmp_path):
    """A client made for another region on the same endpoint sees only that region."""
    a = Aws(str(tmp_path / "s"))
    try:
        eu = client("kms", a.url, "eu-west-1")
        kid = str(eu.create_key()["KeyMetadata"]["Arn"])
        assert kid.startswith("arn:aws:kms:eu-west-1:")
        assert a.kms.list_keys()["Keys"] == []
    finally:
        a.stop()


def test_alias_and_key_names_are_matched_whole(aws):
    """A trailing newline is not part of a valid name (a ``$`` anchor let it through)."""
    kid = new_key(aws)
    aws.kms.create_alias(AliasName="alias/ok", TargetKeyId=kid)
    with aws.unchanged():
        expect_error(aws.kms.create_alias, "ValidationException", 400,
                     AliasName="alias/foo\n", TargetKeyId=kid)
        expect_error(aws.kms.describe_key, "NotFoundException", 400,
                     KeyId=f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/ok\n")
    assert [a["AliasName"] for a in aws.kms.list_aliases(KeyId=kid)["Aliases"]] == ["alias/ok"]


def test_refused_re_encrypt_does_not_make_the_managed_key(aws):
    """ReEncrypt to alias/aws/ebs of a ciphertext that does not open is refused before the
    AWS-managed key is made on first use."""
    kid = new_key(aws)
    blob = bytearray(aws.kms.encrypt(KeyId=kid, Plaintext=b"secret")["CiphertextBlob"])
    blob[-1] ^= 1
    with aws.unchanged():
        expect_error(aws.kms.re_encrypt, "InvalidCiphertextException", 400,
                     CiphertextBlob=bytes(blob), DestinationKeyId="alias/aws/ebs")
    good = aws.kms.encrypt(KeyId=kid, Plaintext=b"secret")["CiphertextBlob"]
    out = aws.kms.re_encrypt(CiphertextBlob=good, DestinationKeyId="alias/aws/ebs")
    assert aws.kms.decrypt(CiphertextBlob=out["CiphertextBlob"])["Plaintext"] == b"secret"
