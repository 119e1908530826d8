"""The model-driven wire layer alone: botocore's own serializer and parser on the other side.

Every request boto3 can build parses back to the same parameters, and every response we
render parses in boto3 to the same dict, so names, types and nesting match by construction.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import botocore.parsers
import botocore.serialize
import pytest

from ebsengine.aws.errors import ApiError
from ebsengine.aws.shapes import (
    Ec2Protocol,
    RestJsonProtocol,
    RestRequest,
    iso8601,
    parse_timestamp,
    service_model,
)

EC2 = Ec2Protocol()
EBS = RestJsonProtocol("ebs")


def _ec2_roundtrip(action: str, params: dict[str, Any]) -> dict[str, Any]:
    model = service_model("ec2")
    req = botocore.serialize.create_serializer("ec2").serialize_to_request(params, model.operation_model(action))
    form = dict(req["body"])
    assert form.pop("Action") == action
    return EC2.parse(action, form)


@pytest.mark.parametrize("action, params", [
    ("DescribeVolumes", {"VolumeIds": ["vol-1", "vol-2"], "MaxResults": 5, "NextToken": "t",
                         "Filters": [{"Name": "status", "Values": ["available", "in-use"]},
                                     {"Name": "tag:env", "Values": ["prod"]}]}),
    ("CreateVolume", {"AvailabilityZone": "us-east-1a", "Size": 10, "VolumeType": "gp3", "Iops": 4000,
                      "Encrypted": False, "ClientToken": "abc", "DryRun": True,
                      "TagSpecifications": [{"ResourceType": "volume", "Tags": [{"Key": "Name", "Value": "d"}]}]}),
    ("CreateTags", {"Resources": ["vol-1"], "Tags": [{"Key": "a", "Value": "b"}, {"Key": "c", "Value": ""}]}),
    ("DeleteTags", {"Resources": ["vol-1", "snap-2"], "Tags": [{"Key": "a"}]}),
    ("CreateSnapshots", {"InstanceSpecification": {"InstanceId": "i-1", "ExcludeBootVolume": True,
                                                   "ExcludeDataVolumeIds": ["vol-2", "vol-3"]}}),
    ("ModifySnapshotAttribute", {"SnapshotId": "snap-1", "CreateVolumePermission": {
        "Add": [{"Group": "all"}, {"UserId": "111122223333"}]}, "UserIds": ["1"], "OperationType": "add"}),
])
def test_ec2_requests_parse_back_to_boto3_params(action: str, params: dict[str, Any]) -> None:
    assert _ec2_roundtrip(action, params) == params


def test_ec2_parse_errors() -> None:
    with pytest.raises(ApiError) as e:
        EC2.parse("DeleteVolume", {})
    assert e.value.code == "MissingParameter" and "VolumeId" in e.value.message
    with pytest.raises(ApiError) as e:
        EC2.parse("CreateVolume", {"Size": "ten"})
    assert e.value.code == "InvalidParameterValue"
    with pytest.raises(ApiError) as e:
        EC2.parse("CreateVolume", {"VolumeType": "gp9"})
    assert e.value.code == "InvalidParameterValue"
    with pytest.raises(ApiError):
        EC2.parse("CreateVolume", {"Encrypted": "yes"})


def _ec2_parse_response(action: str, body: bytes, status: int = 200) -> dict[str, Any]:
    parser = botocore.parsers.create_parser("ec2")
    shape = service_model("ec2").operation_model(action).output_shape
    return parser.parse({"body": body, "headers": {}, "status_code": status}, shape)  # type: ignore[no-any-return]


def test_ec2_rendered_responses_parse_in_boto3() -> None:
    t = dt.datetime(2025, 1, 15, 9, 30, tzinfo=dt.timezone.utc)
    result = {
        "Volumes": [{
            "VolumeId": "vol-0a1b2c3d4e5f60718", "Size": 10, "SnapshotId": "", "AvailabilityZone": "us-east-1a",
            "State": "in-use", "CreateTime": t, "VolumeType": "gp3", "Iops": 4000, "Throughput": 125,
            "Encrypted": False, "MultiAttachEnabled": True,
            "Attachments": [{"VolumeId": "vol-0a1b2c3d4e5f60718", "InstanceId": "i-1", "Device": "/dev/sdf",
                             "State": "attached", "AttachTime": t, "DeleteOnTermination": False}],
            "Tags": [{"Key": "Name", "Value": "<&>"}],
        }],
        "NextToken": "next",
    }
    parsed = _ec2_parse_response("DescribeVolumes", EC2.render("DescribeVolumes", result, "req-1"))
    assert parsed["ResponseMetadata"]["RequestId"] == "req-1"
    del parsed["ResponseMetadata"]
    assert parsed == result
    empty = _ec2_parse_response("DescribeVolumes", EC2.render("DescribeVolumes", {"Volumes": []}, "r"))
    assert empty["Volumes"] == []
    assert b"<return>true</return>" in EC2.render("DeleteVolume", None, "r")


def test_ec2_error_document_parses_in_boto3() -> None:
    body = EC2.render_error("InvalidVolume.NotFound", "The volume 'vol-1' does not exist.", "req-9")
    parsed = _ec2_parse_response("DescribeVolumes", body, 400)
    assert parsed["Error"] == {"Code": "InvalidVolume.NotFound", "Message": "The volume 'vol-1' does not exist."}
    assert parsed["ResponseMetadata"]["RequestId"] == "req-9"


def _ebs_request(operation: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    model = service_model("ebs")
    req = botocore.serialize.create_serializer("rest-json").serialize_to_request(
        params, model.operation_model(operation))
    split = urlsplit(req["url_path"])
    query = dict(req["query_string"]) if isinstance(req["query_string"], dict) else dict(parse_qsl(split.query))
    found = EBS.route(req["method"], split.path)
    assert found is not None
    name, uri = found
    headers = {k.lower(): v for k, v in req["headers"].items()}
    body = req["body"] if req["body"] else None
    return name, EBS.parse(name, uri, RestRequest(req["method"], split.path, query, headers, body))


@pytest.mark.parametrize("operation, params", [
    ("StartSnapshot", {"VolumeSize": 8, "ParentSnapshotId": "snap-0123", "Tags": [{"Key": "a", "Value": "b"}],
                       "Description": "d", "ClientToken": "tok", "Timeout": 60}),
    ("PutSnapshotBlock", {"SnapshotId": "snap-0123", "BlockIndex": 7, "BlockData": b"x" * 16, "DataLength": 16,
                          "Checksum": "abc=", "ChecksumAlgorithm": "SHA256", "Progress": 50}),
    ("CompleteSnapshot", {"SnapshotId": "snap-0123", "ChangedBlocksCount": 3, "Checksum": "abc=",
                          "ChecksumAlgorithm": "SHA256", "ChecksumAggregationMethod": "LINEAR"}),
    ("ListSnapshotBlocks", {"SnapshotId": "snap-0123", "MaxResults": 100, "NextToken": "abc=",
                            "StartingBlockIndex": 5}),
    ("ListChangedBlocks", {"FirstSnapshotId": "snap-01", "SecondSnapshotId": "snap-02", "MaxResults": 100}),
    ("GetSnapshotBlock", {"SnapshotId": "snap-0123", "BlockIndex": 9, "BlockToken": "tok="}),
])
def test_ebs_requests_route_and_parse_back(operation: str, params: dict[str, Any]) -> None:
    name, parsed = _ebs_request(operation, params)
    assert name == operation
    assert parsed == params


def test_ebs_rendered_responses_parse_in_boto3() -> None:
    parser = botocore.parsers.create_parser("rest-json")
    model = service_model("ebs")
    result = {"Blocks": [{"BlockIndex": 1, "BlockToken": "t"}], "ExpiryTime": 1700000000.0, "VolumeSize": 1,
              "BlockSize": 524288, "NextToken": "n"}
    status, headers, chunks = EBS.render("ListSnapshotBlocks", result)
    parsed = parser.parse({"body": b"".join(chunks), "headers": dict(headers), "status_code": status},
                          model.operation_model("ListSnapshotBlocks").output_shape)
    assert parsed["Blocks"] == result["Blocks"] and parsed["ExpiryTime"].timestamp() == 1700000000.0
    status, headers, chunks = EBS.render("PutSnapshotBlock", {"Checksum": "c=", "ChecksumAlgorithm": "SHA256"})
    assert status == 201 and ("x-amz-Checksum", "c=") in headers
    status, headers, chunks = EBS.render("GetSnapshotBlock", {"BlockData": b"abc", "DataLength": 3,
                                                              "Checksum": "c=", "ChecksumAlgorithm": "SHA256"})
    assert status == 200 and chunks == [b"abc"] and ("x-amz-Data-Length", "3") in headers
    status, headers, chunks = EBS.render_error("ValidationException", "bad", 400, "INVALID_BLOCK")
    assert ("x-amzn-ErrorType", "ValidationException") in headers
    assert json.loads(b"".join(chunks))["Reason"] == "INVALID_BLOCK"


def test_ebs_parse_validation() -> None:
    with pytest.raises(ApiError) as e:
        EBS.parse("StartSnapshot", {}, RestRequest("POST", "/snapshots", {}, {}, b"{}"))
    assert e.value.code == "ValidationException"
    with pytest.raises(ApiError):
        EBS.parse("StartSnapshot", {}, RestRequest("POST", "/snapshots", {}, {}, b'{"VolumeSize": "big"}'))
    with pytest.raises(ApiError):
        EBS.parse("StartSnapshot", {}, RestRequest("POST", "/snapshots", {}, {}, b'{"VolumeSize": 1, "Timeout": 1}'))
    assert EBS.route("DELETE", "/snapshots") is None
    assert EBS.route("POST", "/snapshots/completion/snap-1") == ("CompleteSnapshot", {"snapshotId": "snap-1"})


def test_timestamps() -> None:
    assert iso8601(1736933400.0) == "2025-01-15T09:30:00.000Z"
    assert iso8601(1736933400.9996) == "2025-01-15T09:30:01.000Z"
    assert parse_timestamp("2025-01-15T09:30:00.000Z") == 1736933400.0
    assert parse_timestamp("2025-01-15T10:30:00+01:00") == 1736933400.0
    assert parse_timestamp("1736933400") == 1736933400.0
