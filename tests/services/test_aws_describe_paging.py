"""DescribeSnapshots/DescribeVolumes page with the engine's cursor (issue 7): every item once,
in id order, across pages; filters applied while paging; tokens signed and bound to their
action and region."""

from __future__ import annotations

import base64
from typing import Any

from test_aws_support import Aws, aws, expect_error  # noqa: F401  (aws is a fixture)


def all_pages(call: Any, **kw: Any) -> tuple[list[str], list[int]]:
    """Every id of every page (MaxResults/NextToken by hand) and the page sizes."""
    ids: list[str] = []
    sizes: list[int] = []
    token = None
    while True:
        out = call(**kw, **({"NextToken": token} if token else {}))
        items = out["Snapshots"] if "Snapshots" in out else out["Volumes"]
        ids += [i.get("SnapshotId") or i["VolumeId"] for i in items]
        sizes.append(len(items))
        token = out.get("NextToken")
        if not token:
            return ids, sizes


def test_snapshot_pages_with_filters_and_volume_index(aws: Aws) -> None:
    v1, v2 = aws.volume(1), aws.volume(2)
    s1 = [aws.ec2.create_snapshot(VolumeId=v1)["SnapshotId"] for _ in range(7)]
    s2 = [aws.ec2.create_snapshot(VolumeId=v2, TagSpecifications=[
        {"ResourceType": "snapshot", "Tags": [{"Key": "n", "Value": str(i % 2)}]}])["SnapshotId"]
        for i in range(6)]
    west = aws.ec2_west.copy_snapshot(SourceRegion="us-east-1", SourceSnapshotId=s1[0])["SnapshotId"]
    ids, sizes = all_pages(aws.ec2.describe_snapshots, MaxResults=5)
    assert ids == sorted(s1 + s2) and sizes == [5, 5, 3]  # the west copy is not listed
    assert west not in ids
    # the volume-id filter (read from the engine's per-volume index), paged
    ids, sizes = all_pages(aws.ec2.describe_snapshots, MaxResults=5,
                           Filters=[{"Name": "volume-id", "Values": [v1]}])
    assert ids == sorted(s1) and sizes == [5, 2]
    # a filter tested while scanning; an exactly full last page has no token
    ids, sizes = all_pages(aws.ec2.describe_snapshots, MaxResults=5,
                           Filters=[{"Name": "tag:n", "Values": ["1"]}])
    assert ids == sorted(s2[1::2]) and sizes == [3]
    ids, sizes = all_pages(aws.ec2.describe_snapshots, MaxResults=6,
                           Filters=[{"Name": "volume-id", "Values": [v2]}])
    assert ids == sorted(s2) and sizes == [6]
    # exact snapshot ids as a filter: looked up, unknown ones simply do not match
    got = aws.ec2.describe_snapshots(Filters=[{"Name": "snapshot-id", "Values": [
        s2[0], s1[3], "snap-0000000000000dead", west]}])["Snapshots"]
    assert [s["SnapshotId"] for s in got] == sorted([s2[0], s1[3]])
    # wildcard volume-id: scanned, same answer
    got = aws.ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [v1[:-2] + "*"]}])
    assert [s["SnapshotId"] for s in got["Snapshots"]] == sorted(s1)


def test_page_tokens_are_bound_and_unforgeable(aws: Aws) -> None:
    vols = [aws.volume(1) for _ in range(6)]
    snaps = [aws.ec2.create_snapshot(VolumeId=vols[0])["SnapshotId"] for _ in range(6)]
    vtok = aws.ec2.describe_volumes(MaxResults=5)["NextToken"]
    stok = aws.ec2.describe_snapshots(MaxResults=5)["NextToken"]
    with aws.unchanged():
        # a volumes token does not page snapshots, nor an east token the west
        expect_error(aws.ec2.describe_snapshots, "InvalidParameterValue", 400, MaxResults=5,
                     NextToken=vtok)
        expect_error(aws.ec2_west.describe_snapshots, "InvalidParameterValue", 400,
                     MaxResults=5, NextToken=stok)
        # a token naming another id, with the old signature, is refused
        _, mac = base64.b64decode(stok).decode().rsplit("|", 1)
        forged = base64.b64encode(f"{min(snaps)}|{mac}".encode()).decode()
        assert forged != stok
        expect_error(aws.ec2.describe_snapshots, "InvalidParameterValue", 400, MaxResults=5,
                     NextToken=forged)
    rest = aws.ec2.describe_snapshots(MaxResults=5, NextToken=stok)
    assert [s["SnapshotId"] for s in rest["Snapshots"]] == sorted(snaps)[5:]
    assert "NextToken" not in rest
    # a token survives a restart (it is signed with the store's persistent key)
    aws.restart()
    rest = aws.ec2.describe_volumes(MaxResults=5, NextToken=vtok)
    assert [v["VolumeId"] for v in rest["Volumes"]] == sorted(vols)[5:]
