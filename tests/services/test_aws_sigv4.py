"""``serve --auth sigv4``: every request's Signature Version 4 is verified (issue 11).

boto3/botocore clients (and hand-built requests signed by botocore's signer) against a
real server; refusals carry each protocol's AWS error and change nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from unittest import mock

import boto3
import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ebsengine.aws.sigv4 import CredentialsError, SigV4Verifier, load_credentials
from ebsengine.cloud.scope import REGIONS
from serve_support import free_port, wait_ready
from test_aws_support import BLOCK, Aws, expect_error, put_block

ALICE = ("AKIAALICE000000001", "alice-secret/with+chars", "111111111111")
ALEX = ("AKIAALEX0000000002", "alex-secret", "111111111111")      # alice's account too
BOB = ("AKIABOB00000000003", "bob-secret", "222222222222")

CREDENTIALS = f"""\
[alice]
aws_access_key_id = {ALICE[0]}
aws_secret_access_key = {ALICE[1]}
account_id = {ALICE[2]}

[alex]
aws_access_key_id = {ALEX[0]}
aws_secret_access_key = {ALEX[1]}
account_id = {ALEX[2]}

[bob]
aws_access_key_id = {BOB[0]}
aws_secret_access_key = {BOB[1]}
account_id = {BOB[2]}
"""
_CONFIG = botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"})


class Clock:
    """The verifier's wall clock, movable by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        import time

        return time.time() + self.offset


class Signed(Aws):
    """A server with ``--auth sigv4`` over :data:`CREDENTIALS`."""

    def __init__(self, path: str, creds: str, clock: Clock) -> None:
        self.creds = creds
        self.verifier_clock = clock
        super().__init__(path, authenticator=SigV4Verifier(
            load_credentials(creds), regions=REGIONS, clock=clock))

    def client(self, service: str, user: tuple[str, str, str], region: str = "us-east-1",
               **kw: Any) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=region,
                            aws_access_key_id=user[0], aws_secret_access_key=user[1],
                            config=kw.pop("config", _CONFIG), **kw)


@pytest.fixture
def signed(tmp_path: Any) -> Iterator[Signed]:
    creds = tmp_path / "credentials"
    creds.write_text(CREDENTIALS)
    a = Signed(str(tmp_path / "store"), str(creds), Clock())
    try:
        yield a
    finally:
        a.stop()


def send(url: str, method: str = "POST", body: bytes = b"", headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body if method != "GET" else None, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def sign(url: str, body: bytes, user: tuple[str, str, str], *, service: str = "ec2",
         region: str = "us-east-1", method: str = "POST", headers: dict[str, str] | None = None,
         when: dt.datetime | None = None) -> AWSRequest:
    """A request signed by botocore's SigV4 signer (at ``when``, else now)."""
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    signer = SigV4Auth(Credentials(user[0], user[1]), service, region)
    if when is None:
        signer.add_auth(req)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(req)
    return req


def send_signed(req: AWSRequest) -> tuple[int, dict[str, str], bytes]:
    return send(req.url, req.method, req.body or b"", dict(req.headers))


def ec2_code(body: bytes) -> str:
    import xml.etree.ElementTree as ET

    code = ET.fromstring(body).find("./Errors/Error/Code")
    assert code is not None, body
    return str(code.text)


FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
DESCRIBE = b"Action=DescribeVolumes&Version=2016-11-15"


# --- the credentials file ----------------------------------------------------------------


def test_credentials_file_is_read(tmp_path: Any) -> None:
    path = tmp_path / "c"
    path.write_text(CREDENTIALS)
    users = load_credentials(str(path))
    assert {u.name: u.account_id for u in users.values()} == {
        "alice": "111111111111", "alex": "111111111111", "bob": "222222222222"}
    assert users[ALICE[0]].secret_key == ALICE[1]


@pytest.mark.parametrize("text, message", [
    ("", "no users"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\n", "account_id is missing"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\naccount_id = 12345\n",
     "is not 12 digits"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\naccount_id = "
     + "\u0661" * 12 + "\n",
     "is not 12 digits"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = \naccount_id = 111111111111\n",
     "aws_secret_access_key is missing"),
    ("[a]\naws_access_key_id = AK/IA\naws_secret_access_key = s\naccount_id = 111111111111\n",
     "is not an access key id"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\naccount_id = 111111111111\n"
     "acount = 1\n", "unknown key 'acount'"),
    ("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\naccount_id = 111111111111\n"
     "[b]\naws_access_key_id = AKIA1\naws_secret_access_key = t\naccount_id = 222222222222\n",
     "also the key of [a]"),
    ("[a]\naws_access_key_id = AKIA1\n[a]\n", "already exists"),
    ("aws_access_key_id = AKIA1\n", "no section headers"),
])
def test_bad_credentials_file_is_refused(tmp_path: Any, text: str, message: str) -> None:
    path = tmp_path / "c"
    path.write_text(text)
    with pytest.raises(CredentialsError, match=re.escape(message)):
        load_credentials(str(path))


def test_serve_refuses_a_bad_credentials_file(tmp_path: Any) -> None:
    base = [sys.executable, "-m", "ebsengine.cli", "--store", str(tmp_path / "s"), "serve",
            "--nbd-socket", "none", "--nbd-port", "0", "--http-port", "0"]
    bad = tmp_path / "bad"
    bad.write_text("[a]\naws_access_key_id = AKIA1\naws_secret_access_key = s\n")
    for extra, message in (
            (["--auth", "sigv4"], "needs --credentials"),
            (["--auth", "sigv4", "--credentials", str(bad)], "[a]: account_id is missing"),
            (["--auth", "sigv4", "--credentials", str(tmp_path / "none")], "No such file"),
            (["--credentials", str(bad)], "account_id is missing")):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr
    assert not (tmp_path / "s").exists()  # refused before the store was opened


def test_serve_with_sigv4_verifies_and_scopes(tmp_path: Any) -> None:
    """``ebsengine serve --auth sigv4 --credentials FILE`` as a user starts it."""
    creds = tmp_path / "credentials"
    creds.write_text(CREDENTIALS)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebsengine.cli", "--store", str(tmp_path / "s"), "serve",
         "--nbd-socket", "none", "--nbd-port", "0", "--http-port", str(port),
         "--auth", "sigv4", "--credentials", str(creds)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(proc)
        url = f"http://127.0.0.1:{port}"
        kw: dict[str, Any] = {"endpoint_url": url, "region_name": "us-east-1", "config": _CONFIG}
        alice = boto3.client("ec2", aws_access_key_id=ALICE[0], aws_secret_access_key=ALICE[1],
                             **kw)
        bob = boto3.client("ec2", aws_access_key_id=BOB[0], aws_secret_access_key=BOB[1], **kw)
        vid = alice.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        assert [v["VolumeId"] for v in alice.describe_volumes()["Volumes"]] == [vid]
        assert bob.describe_volumes()["Volumes"] == []
        wrong = boto3.client("ec2", aws_access_key_id=ALICE[0], aws_secret_access_key="x", **kw)
        expect_error(wrong.describe_volumes, "SignatureDoesNotMatch", 403)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


# --- good signatures ----------------------------------------------------------------------


def test_good_signatures_of_every_protocol(signed: Signed) -> None:
    ec2 = signed.client("ec2", ALICE)
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    assert [v["VolumeId"] for v in ec2.describe_volumes()["Volumes"]] == [vid]
    # EBS direct: rest-json JSON bodies, and PutSnapshotBlock's UNSIGNED-PAYLOAD
    ebs = signed.client("ebs", ALICE)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = b"signed block" * (BLOCK // 12) + b"\0" * (BLOCK % 12)
    put_block(ebs, sid, 0, data)
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
    assert ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"][0]["BlockIndex"] == 0
    # JSON services and DLM
    kms = signed.client("kms", ALICE)
    key = kms.create_key()["KeyMetadata"]
    assert key["Arn"].startswith("arn:aws:kms:us-east-1:111111111111:key/")
    assert signed.client("dlm", ALICE).get_lifecycle_policies()["Policies"] == []
    signed.client("ce", ALICE).get_cost_and_usage(
        TimePeriod={"Start": "2026-01-01", "End": "2026-01-02"}, Granularity="DAILY",
        Metrics=["UnblendedCost"])
    # a request the client signed with the Date header instead of X-Amz-Date
    now = dt.datetime.now(dt.timezone.utc)
    req = sign(signed.url + "/", DESCRIBE, ALICE,
               headers={**FORM, "Date": now.strftime("%a, %d %b %Y %H:%M:%S GMT")})
    assert "X-Amz-Date" not in req.headers
    status, _, body = send_signed(req)
    assert status == 200, body


def test_a_signed_x_amz_content_sha256_is_checked(signed: Signed) -> None:
    import hashlib

    digest = hashlib.sha256(DESCRIBE).hexdigest()
    req = sign(signed.url + "/", DESCRIBE, ALICE, headers={**FORM, "X-Amz-Content-SHA256": digest})
    assert send_signed(req)[0] == 200
    # the header is signed, the body is not the one it names
    req = sign(signed.url + "/", DESCRIBE, ALICE, headers={**FORM, "X-Amz-Content-SHA256": digest})
    status, _, body = send(req.url, "POST", DESCRIBE + b"&MaxResults=5", dict(req.headers))
    assert (status, ec2_code(body)) == (403, "SignatureDoesNotMatch")
    # UNSIGNED-PAYLOAD is PutSnapshotBlock's alone
    req = sign(signed.url + "/", b"Action=CreateVolume&Version=2016-11-15&Size=1"
               b"&AvailabilityZone=us-east-1a", ALICE,
               headers={**FORM, "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    with signed.unchanged():
        status, _, body = send_signed(req)
    assert (status, ec2_code(body)) == (403, "SignatureDoesNotMatch")
    assert b"UNSIGNED-PAYLOAD" in body


# --- refusals -------------------------------------------------------------------------------


def test_wrong_secret_is_refused_per_protocol(signed: Signed) -> None:
    bad = (ALICE[0], "not-alices-secret", "")
    with signed.unchanged():
        expect_error(signed.client("ec2", bad).create_volume, "SignatureDoesNotMatch", 403,
                     AvailabilityZone="us-east-1a", Size=1)
        expect_error(signed.client("kms", bad).create_key, "InvalidSignatureException", 400)
        expect_error(signed.client("ebs", bad).start_snapshot, "InvalidSignatureException", 403,
                     VolumeSize=1)
        expect_error(signed.client("dlm", bad).get_lifecycle_policies,
                     "InvalidSignatureException", 403)
        expect_error(signed.client("ce", bad).get_cost_and_usage, "InvalidSignatureException",
                     400, TimePeriod={"Start": "2026-01-01", "End": "2026-01-02"},
                     Granularity="DAILY", Metrics=["UnblendedCost"])


def test_unknown_access_key_is_refused_per_protocol(signed: Signed) -> None:
    nobody = ("AKIANOBODY00000000", "whatever", "")
    with signed.unchanged():
        resp = expect_error(signed.client("ec2", nobody).create_volume, "AuthFailure", 401,
                            AvailabilityZone="us-east-1a", Size=1)
        assert resp["Error"]["Message"] == ("AWS was not able to validate the provided "
                                            "access credentials")
        expect_error(signed.client("kms", nobody).list_keys, "UnrecognizedClientException", 400)
        expect_error(signed.client("ebs", nobody).start_snapshot, "UnrecognizedClientException",
                     403, VolumeSize=1)
        expect_error(signed.client("dlm", nobody).get_lifecycle_policies,
                     "UnrecognizedClientException", 403)
        # a known key with a session token: no temporary credentials are issued here
        temp = signed.client("ec2", ALICE, aws_session_token="FwoGZXIvYXdzEXAMPLE")
        expect_error(temp.describe_volumes, "AuthFailure", 401)


def test_wrong_region_scope_is_refused(signed: Signed) -> None:
    # signed for us-west-2, the Credential then claims us-east-1
    req = sign(signed.url + "/", DESCRIBE, ALICE, region="us-west-2", headers=FORM)
    headers = dict(req.headers)
    headers["Authorization"] = headers["Authorization"].replace("/us-west-2/", "/us-east-1/")
    status, _, body = send(req.url, "POST", DESCRIBE, headers)
    assert (status, ec2_code(body)) == (403, "SignatureDoesNotMatch")
    # a region that does not exist
    expect_error(signed.client("ec2", ALICE, region="xx-nowhere-1").describe_volumes,
                 "SignatureDoesNotMatch", 403)
    # a well-signed request for us-west-2 acts there
    west = signed.client("ec2", ALICE, region="us-west-2")
    west.create_volume(AvailabilityZone="us-west-2a", Size=1)
    assert signed.client("ec2", ALICE).describe_volumes()["Volumes"] == []


def test_wrong_service_scope_is_refused(signed: Signed) -> None:
    # an EC2 request signed for another service
    req = sign(signed.url + "/", DESCRIBE, ALICE, service="s3", headers=FORM)
    status, _, body = send_signed(req)
    assert (status, ec2_code(body)) == (403, "SignatureDoesNotMatch")
    assert b"correct service: 'ec2'" in body
    # a KMS request signed as EC2
    kms_body = b"{}"
    req = sign(signed.url + "/", kms_body, ALICE, service="ec2",
               headers={"X-Amz-Target": "TrentService.ListKeys",
                        "Content-Type": "application/x-amz-json-1.1"})
    status, headers, body = send_signed(req)
    assert status == 400 and json.loads(body)["__type"] == "InvalidSignatureException"
    # an EBS request signed as KMS
    req = sign(signed.url + "/snapshots", b'{"VolumeSize": 1}', ALICE, service="kms",
               headers={"Content-Type": "application/json"})
    status, headers, _ = send_signed(req)
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")


def test_stale_and_future_dates_are_refused(signed: Signed) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    for skew, ok in ((-14, True), (14, True), (-16, False), (16, False)):
        when = now + dt.timedelta(minutes=skew)
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            ec2 = signed.client("ec2", ALICE)
            ebs = signed.client("ebs", ALICE)
            kms = signed.client("kms", ALICE)
            if ok:
                ec2.describe_volumes()
                kms.list_keys()
                continue
            with signed.unchanged():
                resp = expect_error(ec2.create_volume, "RequestExpired", 400,
                                    AvailabilityZone="us-east-1a", Size=1)
                assert "15 min" in resp["Error"]["Message"]
                expect_error(kms.create_key, "InvalidSignatureException", 400)
                expect_error(ebs.start_snapshot, "InvalidSignatureException", 403, VolumeSize=1)
    # the server's clock decides: a fresh signature is stale to a server 20 minutes ahead
    signed.verifier_clock.offset = 20 * 60
    expect_error(signed.client("ec2", ALICE).describe_volumes, "RequestExpired", 400)


def test_tampered_body_is_refused(signed: Signed) -> None:
    body = b"Action=CreateVolume&Version=2016-11-15&Size=1&AvailabilityZone=us-east-1a"
    req = sign(signed.url + "/", body, ALICE, headers=FORM)
    with signed.unchanged():
        status, _, out = send(req.url, "POST", body.replace(b"Size=1", b"Size=9"),
                              dict(req.headers, **{"Content-Length": str(len(body))}))
    assert (status, ec2_code(out)) == (403, "SignatureDoesNotMatch")
    # a tampered JSON body of the EBS direct API
    jbody = json.dumps({"VolumeSize": 1}).encode()
    req = sign(signed.url + "/snapshots", jbody, ALICE, service="ebs",
               headers={"Content-Type": "application/json"})
    with signed.unchanged():
        status, headers, _ = send(req.url, "POST", json.dumps({"VolumeSize": 2}).encode(),
                                  dict(req.headers))
    assert (status, headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
    # a tampered header that was signed
    req = sign(signed.url + "/", DESCRIBE, ALICE, headers={**FORM, "X-Custom": "a"})
    status, _, out = send(req.url, "POST", DESCRIBE, dict(req.headers, **{"X-Custom": "b"}))
    assert (status, ec2_code(out)) == (403, "SignatureDoesNotMatch")


def test_unsigned_and_incomplete_requests_are_refused(signed: Signed) -> None:
    with signed.unchanged():
        status, _, body = send(signed.url + "/", "POST", DESCRIBE, FORM)
        assert (status, ec2_code(body)) == (403, "MissingAuthenticationToken")
        status, _, body = send(signed.url + "/?Action=DescribeVolumes&Version=2016-11-15", "GET")
        assert (status, ec2_code(body)) == (403, "MissingAuthenticationToken")
        anon = botocore.config.Config(signature_version=UNSIGNED,
                                      retries={"total_max_attempts": 1, "mode": "standard"})
        expect_error(signed.client("ec2", ALICE, config=anon).create_volume,
                     "MissingAuthenticationToken", 403, AvailabilityZone="us-east-1a", Size=1)
        expect_error(signed.client("kms", ALICE, config=anon).create_key,
                     "MissingAuthenticationTokenException", 400)
        expect_error(signed.client("ebs", ALICE, config=anon).start_snapshot,
                     "MissingAuthenticationTokenException", 403, VolumeSize=1)
        # the reset and clock controls are not signed: off in sigv4 mode
        assert send(signed.url + "/moto-api/reset", "POST")[0] == 403
        # an Authorization header without its Signature
        req = sign(signed.url + "/", DESCRIBE, ALICE, headers=FORM)
        headers = dict(req.headers)
        headers["Authorization"] = headers["Authorization"].split(", Signature=")[0]
        status, _, body = send(req.url, "POST", DESCRIBE, headers)
        assert (status, ec2_code(body)) == (400, "IncompleteSignature")
        # another algorithm (SigV2-style header)
        status, _, body = send(req.url, "POST", DESCRIBE,
                               dict(req.headers, Authorization=f"AWS {ALICE[0]}:c2ln"))
        assert (status, ec2_code(body)) == (400, "IncompleteSignature")
        # an extra Credential part (the region the server acts in is the one signed)
        req = sign(signed.url + "/", DESCRIBE, ALICE, headers=FORM)
        auth = req.headers["Authorization"]
        forged = auth.replace("AWS4-HMAC-SHA256 ", "AWS4-HMAC-SHA256 X=Credential="
                              f"{ALICE[0]}/20260101/eu-west-1/ec2/aws4_request, ")
        status, _, body = send(req.url, "POST", DESCRIBE, dict(req.headers, Authorization=forged))
        assert (status, ec2_code(body)) == (400, "IncompleteSignature")
        # host left out of the signed headers
        req = sign(signed.url + "/", DESCRIBE, ALICE, headers=FORM)
        headers = dict(req.headers)
        headers["Authorization"] = headers["Authorization"].replace("host;", "")
        status, _, body = send(req.url, "POST", DESCRIBE, headers)
        assert (status, ec2_code(body)) == (400, "IncompleteSignature")


def test_presigned_query_form(signed: Signed) -> None:
    ec2 = signed.client("ec2", ALICE)
    vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
    url = ec2.generate_presigned_url("describe_volumes", Params={"VolumeIds": [vid]},
                                     ExpiresIn=600, HttpMethod="GET")
    assert "X-Amz-Signature=" in url and "Authorization" not in url
    status, _, body = send(url, "GET")
    assert status == 200 and vid.encode() in body
    # another volume id in the signed query
    status, _, body = send(url.replace(vid, "vol-0123456789abcdef0"), "GET")
    assert (status, ec2_code(body)) == (403, "SignatureDoesNotMatch")
    # past X-Amz-Expires
    signed.verifier_clock.offset = 601
    status, _, body = send(url, "GET")
    assert (status, ec2_code(body)) == (400, "RequestExpired")
    signed.verifier_clock.offset = 0
    # a presigned state change (POST, the parameters in the query)
    url = ec2.generate_presigned_url("create_volume", Params={
        "AvailabilityZone": "us-east-1a", "Size": 1}, ExpiresIn=60)
    status, _, body = send(url, "POST")
    assert status == 200, body
    assert len(ec2.describe_volumes()["Volumes"]) == 2
    # a presigned URL does not cover a body
    with signed.unchanged():
        status, _, body = send(url, "POST", b"Size=5", FORM)
    assert (status, ec2_code(body)) == (403, "SignatureDoesNotMatch")
    # a bad X-Amz-Expires
    status, _, body = send(url.replace("X-Amz-Expires=60", "X-Amz-Expires=999999"), "POST")
    assert (status, ec2_code(body)) == (400, "IncompleteSignature")


def test_users_of_one_account_share_its_resources(signed: Signed) -> None:
    vid = signed.client("ec2", ALICE).create_volume(AvailabilityZone="us-east-1a",
                                                    Size=1)["VolumeId"]
    alex = signed.client("ec2", ALEX)
    assert [v["VolumeId"] for v in alex.describe_volumes()["Volumes"]] == [vid]
    alex.delete_volume(VolumeId=vid)


@pytest.mark.skipif(shutil.which("aws") is None, reason="aws-cli not installed")
def test_aws_cli_with_a_profile(signed: Signed, tmp_path: Any) -> None:
    def cli(profile: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
               "AWS_SHARED_CREDENTIALS_FILE": signed.creds,
               "AWS_CONFIG_FILE": str(tmp_path / "no-config"), "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_MAX_ATTEMPTS": "1", "AWS_PAGER": "", "PYTHONWARNINGS": "ignore"}
        return subprocess.run(["aws", "--endpoint-url", signed.url, "--output", "json",
                               "--profile", profile, *args],
                              capture_output=True, text=True, env=env, timeout=120)

    made = cli("alice", "ec2", "create-volume", "--availability-zone", "us-east-1a", "--size", "1")
    assert made.returncode == 0, made.stderr
    vid = json.loads(made.stdout)["VolumeId"]
    listed = cli("alex", "ec2", "describe-volumes")
    assert [v["VolumeId"] for v in json.loads(listed.stdout)["Volumes"]] == [vid]
    other = cli("bob", "ec2", "describe-volumes", "--volume-ids", vid)
    assert other.returncode != 0 and "InvalidVolume.NotFound" in other.stderr
    snaps = cli("alice", "ebs", "start-snapshot", "--volume-size", "1")
    assert snaps.returncode == 0, snaps.stderr
    # a profile whose secret is not the server's
    bad = tmp_path / "bad-credentials"
    bad.write_text(f"[mallory]\naws_access_key_id = {ALICE[0]}\naws_secret_access_key = guess\n")
    env_file, signed.creds = signed.creds, str(bad)
    try:
        refused = cli("mallory", "ec2", "describe-volumes")
    finally:
        signed.creds = env_file
    assert refused.returncode != 0 and "SignatureDoesNotMatch" in refused.stderr


def test_clock_control_is_refused_with_sigv4(tmp_path: Any) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(CREDENTIALS)
    a = Aws(str(tmp_path / "s"), simulated="2025-01-01T00:00:00Z",
            authenticator=SigV4Verifier(load_credentials(str(creds)), regions=REGIONS))
    try:
        status, doc = a.clock(advance=3600)
        assert status == 403 and "--auth sigv4" in doc["Error"]
        assert a.clock() == (200, {"now": "2025-01-01T00:00:00.000Z"})
    finally:
        a.stop()
