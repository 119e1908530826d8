"""Hostile or odd input to the AWS endpoint gets AWS's 4xx errors, never a 500, and changes
nothing; found in review (issue 4)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from test_aws_support import (  # noqa: F401  (aws is a fixture)
    BLOCK,
    Aws,
    aws,
    expect_error,
    put_block,
)


def raw(aws: Aws, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> int:
    req = urllib.request.Request(aws.url + path, data=body, method=method, headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=a/20260101/us-east-1/ec2/aws4_request, "
                         "SignedHeaders=host, Signature=0", **headers})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_control_characters_are_refused_and_describe_keeps_working(aws: Aws) -> None:
    vol = aws.volume()
    with aws.unchanged():
        expect_error(aws.ec2.create_tags, "InvalidParameterValue", 400, Resources=[vol],
                     Tags=[{"Key": "k", "Value": "a\x01b"}])
        expect_error(aws.ec2.create_snapshot, "InvalidParameterValue", 400, VolumeId=vol,
                     Description="x\x00y")
    assert aws.ec2.describe_volumes()["Volumes"][0]["VolumeId"] == vol
    assert aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"] == []


def test_forged_next_tokens_are_invalid_parameters(aws: Aws) -> None:
    for _ in range(6):
        aws.volume()
    for doc in ({"k": "volumes", "a": "x"}, [1], {"k": "volumes", "a": ["x"]}):
        token = base64.b64encode(json.dumps(doc).encode()).decode()
        expect_error(aws.ec2.describe_volumes, "InvalidParameterValue", 400, MaxResults=5,
                     NextToken=token)


def test_huge_starting_block_index_gives_an_empty_page(aws: Aws) -> None:
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_block(aws.ebs, sid, 0, b"\x01" * BLOCK)
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
    out = aws.ebs.list_snapshot_blocks(SnapshotId=sid, StartingBlockIndex=2**31 - 1)
    assert out["Blocks"] == []
    out = aws.ebs.list_changed_blocks(SecondSnapshotId=sid, StartingBlockIndex=2**31 - 1)
    assert out["ChangedBlocks"] == []


def test_get_block_out_of_range_is_invalid_block(aws: Aws) -> None:
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
    resp = expect_error(aws.ebs.get_snapshot_block, "ValidationException", 400, SnapshotId=sid,
                        BlockIndex=4096, BlockToken="x")
    assert resp.get("Reason") == "INVALID_BLOCK" or "beyond" in resp["Error"]["Message"]


def test_malformed_http_bodies_are_client_errors(aws: Aws) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert raw(aws, "/", b"Action=DescribeVolumes&Version=2016-11-15&X=\xff\xfe", form) == 400
    assert raw(aws, "/", b"Action=DescribeVolumes", {**form, "Content-Length": "abc"}) == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    status = raw(aws, "/snapshots", deep, {"Content-Type": "application/json"})
    assert status == 400
    assert aws.ec2.describe_volumes()["Volumes"] == []  # still serving


def test_encrypted_start_snapshot_reports_its_key(aws: Aws) -> None:
    arn = aws.kms.create_key()["KeyMetadata"]["Arn"]
    out: Any = aws.ebs.start_snapshot(VolumeSize=1, Encrypted=True, KmsKeyArn=arn)
    assert out["KmsKeyArn"] == arn and out["SseType"] == "sse-kms"
    # the default key: alias/aws/ebs's key, named by its key ARN
    out = aws.ebs.start_snapshot(VolumeSize=1, Encrypted=True)
    assert out["KmsKeyArn"] == aws.kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]
    assert ":key/" in out["KmsKeyArn"]
    plain = aws.ebs.start_snapshot(VolumeSize=1)
    assert plain["SseType"] == "none" and "KmsKeyArn" not in plain


def test_a_pending_snapshot_without_its_api_record_is_adopted(aws: Aws) -> None:
    """A crash between the engine's commit and the endpoint's record (simulated by deleting
    the record) must not leave a snapshot that can neither be written nor completed."""
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    aws.engine.service_put("aws.direct", sid, None)
    aws.restart()
    put_block(aws.ebs, sid, 2, b"\x02" * BLOCK)
    assert aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)["Status"] == "completed"
    assert [b["BlockIndex"] for b in aws.ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"]] == [2]
