"""EBS direct APIs through boto3 against a real server, with the data checked both ways (issue 4)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.request
from typing import Any

from test_aws_support import (  # noqa: F401  (aws is a fixture)
    BLOCK,
    Aws,
    all_blocks,
    aws,
    expect_error,
    linear_checksum,
    put_block,
    read_block,
    sha_b64,
)

AZ = "us-east-1a"


def _block(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)


def _direct_snapshot(aws: Aws, blocks: dict[int, bytes], size: int = 1, **kw: Any) -> str:
    sid = aws.ebs.start_snapshot(VolumeSize=size, **kw)["SnapshotId"]
    for i, data in blocks.items():
        put_block(aws.ebs, sid, i, data)
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks))
    return str(sid)


def test_library_writes_come_back_through_get_snapshot_block(aws: Aws) -> None:
    vid = aws.volume(1)
    with aws.engine.open_volume(vid) as dev:
        dev.pwrite(b"A" * 4096, 0)                         # block 0
        dev.pwrite(b"B" * 100_000, 3 * BLOCK - 50_000)     # straddles blocks 2 and 3, unaligned
        dev.pwrite(os.urandom(BLOCK), 2047 * BLOCK)        # last block, full
        dev.flush()
        expected = {i: dev.pread(BLOCK, i * BLOCK) for i in (0, 2, 3, 2047)}
    sid = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    aws.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid])
    listed = aws.ebs.list_snapshot_blocks(SnapshotId=sid)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [0, 2, 3, 2047]
    assert listed["VolumeSize"] == 1 and listed["BlockSize"] == BLOCK and "NextToken" not in listed
    assert listed["ExpiryTime"].timestamp() > time.time() + 6 * 86400
    assert all_blocks(aws.ebs, sid) == expected
    # later writes to the volume do not show in the snapshot (point in time)
    aws.write(vid, 0, b"Z" * 10)
    assert read_block(aws.ebs, sid, 0) == expected[0]


def test_put_complete_then_restore_into_a_volume(aws: Aws) -> None:
    blocks = {0: _block(0), 7: os.urandom(BLOCK), 2047: _block(2)}
    start = aws.ebs.start_snapshot(VolumeSize=1, Description="upload", Tags=[{"Key": "src", "Value": "put"}],
                                   Timeout=60)
    sid = start["SnapshotId"]
    assert (start["Status"], start["BlockSize"], start["VolumeSize"], start["OwnerId"]) == (
        "pending", BLOCK, 1, "123456789012")
    assert start["Tags"] == [{"Key": "src", "Value": "put"}]
    for i, data in blocks.items():
        out = put_block(aws.ebs, sid, i, data, Progress=30)
        assert out["Checksum"] == sha_b64(data) and out["ChecksumAlgorithm"] == "SHA256"
    pending = aws.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    assert pending["State"] == "pending" and pending["Progress"] == "30%"
    expect_error(aws.ebs.list_snapshot_blocks, "ValidationException", 400, SnapshotId=sid)  # not readable yet
    done = aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3, Checksum=linear_checksum(blocks),
                                     ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert done["Status"] == "completed"
    aws.ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[sid])
    assert all_blocks(aws.ebs, sid) == blocks
    vid = aws.ec2.create_volume(AvailabilityZone=AZ, SnapshotId=sid)["VolumeId"]
    (vol,) = aws.ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert vol["Size"] == 1 and vol["SnapshotId"] == sid
    with aws.engine.open_volume(vid) as dev:
        for i, data in blocks.items():
            assert dev.pread(BLOCK, i * BLOCK) == data
        assert dev.pread(BLOCK, 1 * BLOCK) == bytes(BLOCK)
    expect_error(aws.ec2.create_volume, "InvalidParameterValue", 400, AvailabilityZone=AZ, SnapshotId=sid, Size=0)


def test_put_snapshot_block_refusals_change_nothing(aws: Aws) -> None:
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = _block(1)
    put = aws.ebs.put_snapshot_block
    with aws.unchanged():
        r = expect_error(put, "ValidationException", 400, SnapshotId=sid, BlockIndex=0, BlockData=data,
                         DataLength=BLOCK, Checksum=sha_b64(b"other"), ChecksumAlgorithm="SHA256")
        assert r["Reason"] == "INVALID_PARAMETER_VALUE"
        expect_error(put, "ValidationException", 400, SnapshotId=sid, BlockIndex=0, BlockData=data[:1000],
                     DataLength=1000, Checksum=sha_b64(data[:1000]), ChecksumAlgorithm="SHA256")
        r = expect_error(put, "ValidationException", 400, SnapshotId=sid, BlockIndex=2048, BlockData=data,
                         DataLength=BLOCK, Checksum=sha_b64(data), ChecksumAlgorithm="SHA256")
        assert r["Reason"] == "INVALID_BLOCK"
        r = expect_error(put, "ResourceNotFoundException", 404, SnapshotId="snap-0000000000000dead", BlockIndex=0,
                         BlockData=data, DataLength=BLOCK, Checksum=sha_b64(data), ChecksumAlgorithm="SHA256")
        assert r["Reason"] == "SNAPSHOT_NOT_FOUND"
    done = _direct_snapshot(aws, {0: data})
    with aws.unchanged():
        r = expect_error(put, "ValidationException", 400, SnapshotId=done, BlockIndex=1, BlockData=data,
                         DataLength=BLOCK, Checksum=sha_b64(data), ChecksumAlgorithm="SHA256")
        assert r["Reason"] == "INVALID_SNAPSHOT_ID"


def test_complete_snapshot_checks_count_and_aggregate(aws: Aws) -> None:
    blocks = {5: _block(5), 1: _block(1)}
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    for i, d in blocks.items():
        put_block(aws.ebs, sid, i, d)
    put_block(aws.ebs, sid, 5, blocks[5])                      # re-put overwrites, still one block
    with aws.unchanged():
        expect_error(aws.ebs.complete_snapshot, "ValidationException", 400, SnapshotId=sid, ChangedBlocksCount=3)
        expect_error(aws.ebs.complete_snapshot, "ValidationException", 400, SnapshotId=sid, ChangedBlocksCount=2,
                     Checksum=sha_b64(b"wrong"), ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
        expect_error(aws.ebs.complete_snapshot, "ResourceNotFoundException", 404,
                     SnapshotId="snap-0000000000000dead", ChangedBlocksCount=0)
    assert aws.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "pending"
    # the text form of the aggregate (concatenated base64 strings) is accepted too
    text = base64.b64encode(hashlib.sha256("".join(sha_b64(blocks[i]) for i in sorted(blocks)).encode()
                                           ).digest()).decode()
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2, Checksum=text, ChecksumAlgorithm="SHA256",
                              ChecksumAggregationMethod="LINEAR")
    assert all_blocks(aws.ebs, sid) == blocks
    expect_error(aws.ebs.complete_snapshot, "ValidationException", 400, SnapshotId=sid, ChangedBlocksCount=2)


def test_parent_snapshot_changed_blocks_and_tokens(aws: Aws) -> None:
    a_blocks = {0: _block(0), 1: _block(1), 9: _block(9)}
    a = _direct_snapshot(aws, a_blocks)
    b = aws.ebs.start_snapshot(VolumeSize=2, ParentSnapshotId=a)
    assert b["ParentSnapshotId"] == a and b["VolumeSize"] == 2
    bid = b["SnapshotId"]
    put_block(aws.ebs, bid, 1, _block(100))                    # changed
    put_block(aws.ebs, bid, 3000, _block(3000))                # new, beyond the parent's size
    aws.ebs.complete_snapshot(SnapshotId=bid, ChangedBlocksCount=2)
    assert all_blocks(aws.ebs, bid) == {0: a_blocks[0], 1: _block(100), 9: a_blocks[9], 3000: _block(3000)}
    assert all_blocks(aws.ebs, a) == a_blocks
    changed = aws.ebs.list_changed_blocks(FirstSnapshotId=a, SecondSnapshotId=bid)
    rows = {c["BlockIndex"]: c for c in changed["ChangedBlocks"]}
    assert sorted(rows) == [1, 3000] and changed["VolumeSize"] == 2
    assert "FirstBlockToken" in rows[1] and "FirstBlockToken" not in rows[3000]
    first = aws.ebs.get_snapshot_block(SnapshotId=a, BlockIndex=1, BlockToken=rows[1]["FirstBlockToken"])
    second = aws.ebs.get_snapshot_block(SnapshotId=bid, BlockIndex=1, BlockToken=rows[1]["SecondBlockToken"])
    assert first["BlockData"].read() == a_blocks[1] and second["BlockData"].read() == _block(100)
    # without FirstSnapshotId: every block of the second
    whole = aws.ebs.list_changed_blocks(SecondSnapshotId=bid)["ChangedBlocks"]
    assert [c["BlockIndex"] for c in whole] == [0, 1, 9, 3000]
    # tokens are bound to their snapshot and index
    r = expect_error(aws.ebs.get_snapshot_block, "ValidationException", 400, SnapshotId=bid, BlockIndex=1,
                     BlockToken=rows[1]["FirstBlockToken"])
    assert r["Reason"] == "INVALID_BLOCK_TOKEN"
    expect_error(aws.ebs.get_snapshot_block, "ValidationException", 400, SnapshotId=a, BlockIndex=0,
                 BlockToken=rows[1]["FirstBlockToken"])
    expect_error(aws.ebs.get_snapshot_block, "ValidationException", 400, SnapshotId=a, BlockIndex=0,
                 BlockToken=base64.b64encode(b"forged|token").decode())
    other = _direct_snapshot(aws, {0: _block(7)})
    r = expect_error(aws.ebs.list_changed_blocks, "ValidationException", 400, FirstSnapshotId=a,
                     SecondSnapshotId=other)
    assert r["Reason"] == "UNRELATED_SNAPSHOTS"


def test_start_snapshot_refusals_and_client_token(aws: Aws) -> None:
    parent = _direct_snapshot(aws, {0: _block(0)}, size=4)
    with aws.unchanged():
        expect_error(aws.ebs.start_snapshot, "ResourceNotFoundException", 404, VolumeSize=1,
                     ParentSnapshotId="snap-0000000000000dead")
        r = expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=2, ParentSnapshotId=parent)
        assert r["Reason"] == "INVALID_VOLUME_SIZE"
        expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=4, ParentSnapshotId=parent,
                     Encrypted=True)
        expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=70000)
        r = expect_error(aws.ebs.start_snapshot, "ValidationException", 400, VolumeSize=1,
                         Tags=[{"Key": "aws:x", "Value": "y"}])
        assert r["Reason"] == "INVALID_TAG"
    one = aws.ebs.start_snapshot(VolumeSize=1, ClientToken="same")
    two = aws.ebs.start_snapshot(VolumeSize=1, ClientToken="same")
    assert one["SnapshotId"] == two["SnapshotId"]
    with aws.unchanged():
        expect_error(aws.ebs.start_snapshot, "ConflictException", 409, VolumeSize=2, ClientToken="same")


def test_list_paging_and_page_tokens(aws: Aws) -> None:
    vid = aws.volume(1)
    with aws.engine.open_volume(vid) as dev:
        for i in range(0, 500, 2):                       # 250 blocks with data
            dev.pwrite((i + 1).to_bytes(4, "big"), i * BLOCK)
        dev.flush()
    sid = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    got: list[int] = []
    sizes = []
    kw: dict[str, Any] = {"SnapshotId": sid, "MaxResults": 100}
    while True:
        page = aws.ebs.list_snapshot_blocks(**kw)
        sizes.append(len(page["Blocks"]))
        got += [b["BlockIndex"] for b in page["Blocks"]]
        if "NextToken" not in page:
            break
        kw["NextToken"] = page["NextToken"]
    assert sizes == [100, 100, 50] and got == list(range(0, 500, 2))
    start = aws.ebs.list_snapshot_blocks(SnapshotId=sid, StartingBlockIndex=401)["Blocks"]
    assert [b["BlockIndex"] for b in start] == list(range(402, 500, 2))
    first = aws.ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    beats = aws.ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100, NextToken=first["NextToken"],
                                         StartingBlockIndex=480)
    assert beats["Blocks"][0]["BlockIndex"] == 200                 # NextToken wins over StartingBlockIndex
    other = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    for bad in (first["NextToken"][:-4] + "AAA=", base64.b64encode(b"1|x").decode()):
        r = expect_error(aws.ebs.list_snapshot_blocks, "ValidationException", 400, SnapshotId=sid, NextToken=bad)
        assert r["Reason"] == "INVALID_PAGE_TOKEN"
    expect_error(aws.ebs.list_snapshot_blocks, "ValidationException", 400, SnapshotId=other,
                 NextToken=first["NextToken"])
    # ListChangedBlocks pages the same way
    aws.write(vid, 1 * BLOCK, b"new")
    aws.write(vid, 3 * BLOCK, b"new")
    third = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    def pages(**kw: Any) -> list[list[int]]:
        out = []
        while True:
            page = aws.ebs.list_changed_blocks(MaxResults=100, **kw)
            out.append([c["BlockIndex"] for c in page["ChangedBlocks"]])
            if "NextToken" not in page:
                return out
            kw["NextToken"] = page["NextToken"]

    assert pages(FirstSnapshotId=sid, SecondSnapshotId=third) == [[1, 3]]
    assert [len(p) for p in pages(SecondSnapshotId=third)] == [100, 100, 52]
    r = expect_error(aws.ebs.list_changed_blocks, "ValidationException", 400, SecondSnapshotId=third,
                     NextToken=first["NextToken"])                 # a ListSnapshotBlocks token of another snapshot
    assert r["Reason"] == "INVALID_PAGE_TOKEN"

def test_deleting_a_middle_snapshot_keeps_later_blocks(aws: Aws) -> None:
    vid = aws.volume(1)
    for i in range(6):
        aws.write(vid, i * BLOCK, _block(i))
    s1 = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    for i in (1, 2, 8):
        aws.write(vid, i * BLOCK + 100, b"second" * 1000)
    s2 = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    aws.write(vid, 2 * BLOCK, b"third" * 5000)
    with aws.engine.open_volume(vid) as dev:
        dev.trim(4 * BLOCK, BLOCK)
        dev.flush()
    s3 = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    before = {s: all_blocks(aws.ebs, s) for s in (s1, s3)}
    changed_before = [c["BlockIndex"] for c in aws.ebs.list_changed_blocks(
        FirstSnapshotId=s1, SecondSnapshotId=s3)["ChangedBlocks"]]
    assert changed_before == [1, 2, 4, 8]
    aws.ec2.delete_snapshot(SnapshotId=s2)
    assert {s: all_blocks(aws.ebs, s) for s in (s1, s3)} == before
    assert [c["BlockIndex"] for c in aws.ebs.list_changed_blocks(
        FirstSnapshotId=s1, SecondSnapshotId=s3)["ChangedBlocks"]] == changed_before
    expect_error(aws.ebs.list_snapshot_blocks, "ResourceNotFoundException", 404, SnapshotId=s2)
    assert aws.engine.fsck().ok


class _Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_idle_pending_snapshot_times_out(tmp_path: Any) -> None:
    clock = _Clock()
    a = Aws(str(tmp_path / "s"), clock=clock)
    try:
        sid = a.ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
        put_block(a.ebs, sid, 0, _block(0))
        clock.now += 9 * 60
        put_block(a.ebs, sid, 1, _block(1))                 # activity resets the timer
        clock.now += 9 * 60
        put_block(a.ebs, sid, 2, _block(2))
        clock.now += 11 * 60
        r = expect_error(a.ebs.complete_snapshot, "ValidationException", 400, SnapshotId=sid, ChangedBlocksCount=3)
        assert r["Reason"] == "WRITE_REQUEST_TIMEOUT"
        assert a.ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "error"
        assert a.engine.fsck().ok
    finally:
        a.stop()


def test_pending_upload_survives_restart(aws: Aws) -> None:
    blocks = {0: _block(0), 4: _block(4), 6: _block(6)}
    sid = aws.ebs.start_snapshot(VolumeSize=1, ClientToken="resume")["SnapshotId"]
    put_block(aws.ebs, sid, 0, blocks[0])
    put_block(aws.ebs, sid, 4, blocks[4])
    aws.restart()
    assert aws.ebs.start_snapshot(VolumeSize=1, ClientToken="resume")["SnapshotId"] == sid
    put_block(aws.ebs, sid, 6, blocks[6])
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3, Checksum=linear_checksum(blocks),
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    aws.restart()
    assert all_blocks(aws.ebs, sid) == blocks


def test_rest_json_error_shape(aws: Aws) -> None:
    req = urllib.request.Request(aws.url + "/snapshots/snap-0000000000000dead/blocks")
    try:
        urllib.request.urlopen(req)
        raise AssertionError("expected an HTTP error")
    except urllib.error.HTTPError as err:
        with err:
            assert err.code == 404
            assert err.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
            body = json.loads(err.read())
    assert body["Reason"] == "SNAPSHOT_NOT_FOUND" and "snap-0000000000000dead" in body["Message"]
    req = urllib.request.Request(aws.url + "/snapshots", data=b"{not json", method="POST")
    try:
        urllib.request.urlopen(req)
        raise AssertionError("expected an HTTP error")
    except urllib.error.HTTPError as err:
        with err:
            assert err.code == 400 and err.headers["x-amzn-ErrorType"] == "ValidationException"


def test_nbd_writes_and_reads_meet_the_direct_apis(aws: Aws) -> None:
    """NBD -> CreateSnapshot -> GetSnapshotBlock, and PutSnapshotBlock -> CreateVolume -> NBD read."""
    from ebsengine.nbd.server import NbdServer
    from nbd_client import CMD_FLUSH, NbdClient

    nbd = NbdServer(aws.engine, None, ("127.0.0.1", 0), background_flush=False)
    nbd.start()
    try:
        assert nbd.tcp_address is not None
        vid = aws.volume(1)
        written = {2: _block(22), 9: os.urandom(BLOCK)}
        with NbdClient(tuple(nbd.tcp_address)) as c:  # type: ignore[arg-type]
            c.go(vid)
            for i, data in written.items():
                c.pwrite(i * BLOCK, data)
            c.pwrite(5 * BLOCK + 512, b"unaligned" * 7)
            assert c.cmd(CMD_FLUSH).error == 0
            expected5 = c.pread(5 * BLOCK, BLOCK)
        sid = aws.ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        assert all_blocks(aws.ebs, sid) == {**written, 5: expected5}

        upload = {0: _block(1), 2047: os.urandom(BLOCK)}
        up = _direct_snapshot(aws, upload)
        restored = aws.ec2.create_volume(AvailabilityZone=AZ, SnapshotId=up)["VolumeId"]
        with NbdClient(tuple(nbd.tcp_address)) as c:  # type: ignore[arg-type]
            c.go(restored)
            for i, data in upload.items():
                assert c.pread(i * BLOCK, BLOCK) == data
            assert c.pread(BLOCK, BLOCK) == bytes(BLOCK)
    finally:
        nbd.stop()


def test_concurrent_puts_share_commits_and_complete(aws: Aws) -> None:
    """8 threads upload at once (checksum records group-committed); the aggregate still matches."""
    import concurrent.futures as cf

    blocks = {i * 3: _block(1000 + i) for i in range(48)}
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    with cf.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda item: put_block(aws.ebs, sid, item[0], item[1]), blocks.items()))
    assert len(aws.engine.snapshot_block_checksums(sid)) == len(blocks)  # every put's checksum kept
    aws.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks), Checksum=linear_checksum(blocks),
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert all_blocks(aws.ebs, sid) == blocks
    assert aws.engine.snapshot_block_checksums(sid) == {}               # and dropped once completed
    assert aws.engine.service_get("aws.direct", sid) is None


def test_oversized_body_is_refused(aws: Aws) -> None:
    sid = aws.ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = b"x" * (4 * BLOCK)
    req = urllib.request.Request(f"{aws.url}/snapshots/{sid}/blocks/0", data=data, method="PUT",
                                 headers={"x-amz-Data-Length": str(len(data)), "x-amz-Checksum": sha_b64(data),
                                          "x-amz-Checksum-Algorithm": "SHA256"})
    with aws.unchanged():
        try:
            urllib.request.urlopen(req)
            raise AssertionError("expected an HTTP error")
        except urllib.error.HTTPError as err:
            with err:
                assert err.code == 413 and err.headers["x-amzn-ErrorType"] == "ValidationException"
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server may close before the client finished sending
