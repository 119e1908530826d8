"""Benchmark: metadata queries at scale (issue 7, "Metadata queries cost what they return").

Run:  python benchmarks/bench_meta.py [--volumes 2000] [--snapshots 10000] [--rounds 3]

Setup (not measured): a store with ``--volumes`` volumes and ``--snapshots`` snapshots spread
over them (5 per volume at the defaults), written as records directly through the engine's
record helpers in a few transactions (what ``create_volume``/``create_snapshot`` would commit,
with the AWS region record each snapshot gets through the endpoint), plus a small store with
10 snapshots (2 volumes of 5). Then, medians over ``--rounds``:

(a) DescribeSnapshots through boto3 against the AWS endpoint (a separate ``serve``-like
    process over the big store): all pages of MaxResults=1000 against one unpaged call.
    Figure: paged / unpaged (goal <= 1.2x). The same for DescribeVolumes.
(b) the per-volume snapshot query, ``Engine.list_snapshots(volume_id)`` in-process, for a
    volume of 5 snapshots, in the big store against the small one (goal <= 2x); and the same
    query through the endpoint (DescribeSnapshots with a ``volume-id`` filter).

The script only uses APIs both the old and the new engine have, so pointing PYTHONPATH at an
older checkout measures the "before" figures with the same code.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from typing import Any

import boto3
import botocore.config

import ebsengine
from ebsengine.model import Snapshot, Volume
from ebsengine.rules import new_id

SERVER = textwrap.dedent('''
    import sys, threading
    import ebsengine
    from ebsengine.aws.server import ApiServer
    eng = ebsengine.Engine(sys.argv[1])
    ApiServer(eng, port=int(sys.argv[2])).start()
    threading.Event().wait()
''')


def populate(path: str, volumes: int, snapshots: int) -> list[str]:
    """``volumes`` volumes with ``snapshots`` snapshots round-robin; returns the volume ids."""
    eng = ebsengine.Engine(path)
    vids: list[str] = []
    per = max(1, snapshots // volumes)
    now = time.time()
    step = 500
    made = 0
    for first in range(0, volumes, step):
        with eng._store.write() as txn:
            for i in range(first, min(volumes, first + step)):
                vid = new_id("vol")
                lin = eng._maps.create(txn, vid, None, 0)
                vol = Volume(id=vid, size_gib=1, volume_type="gp3", state="available",
                             create_time=now + i * 1e-3, availability_zone="us-east-1a",
                             iops=3000, throughput=125, snapshot_id=None, encrypted=False,
                             kms_key_id=None, multi_attach_enabled=False, tags={})
                eng._records.put_vol(txn, {**vol.to_dict(), "lineage": lin.id})
                n = per if i < volumes - 1 else snapshots - made
                for _ in range(n):
                    sid = new_id("snap")
                    gen = lin.head
                    lin.points[gen] = sid
                    lin.head = gen + 1
                    t = now + made * 1e-4
                    snap = Snapshot(id=sid, volume_id=vid, volume_size_gib=1, state="completed",
                                    start_time=t, progress=100, completion_time=t,
                                    description="bench", encrypted=False, kms_key_id=None,
                                    parent_id=None, full_size_bytes=0,
                                    tags={"n": str(made % 7)})
                    eng._records.put_snap(txn, {**snap.to_dict(), "lineage": lin.id, "gen": gen})
                    txn.put(b"aws.snapshot\x00" + sid.encode(), b'{"region": "us-east-1"}',
                            db=eng._store.db["service"])
                    made += 1
                eng._maps.save(txn, lin)
                vids.append(vid)
    report = eng.fsck()
    eng.close()
    if not report.ok:
        raise SystemExit(f"setup produced a bad store: {report.problems[:3]}")
    return vids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(path: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # cwd: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH
    # the server imports the same ebsengine as this script, even from a relative PYTHONPATH
    here = os.path.dirname(os.path.dirname(os.path.abspath(ebsengine.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]))
    proc = subprocess.Popen([sys.executable, "-c", SERVER, path, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=os.path.dirname(path), env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server never listened")


def ec2_client(url: str) -> Any:
    cfg = botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=600)
    return boto3.client("ec2", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="AKIDBENCH", aws_secret_access_key="secret", config=cfg)


def all_pages(call: Callable[..., Any], key: str, **kw: Any) -> int:
    n, token = 0, None
    while True:
        out = call(**kw, **({"NextToken": token} if token else {}))
        n += len(out[key])
        token = out.get("NextToken")
        if not token:
            return n


def median_time(fn: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volumes", type=int, default=2000)
    ap.add_argument("--snapshots", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_meta_") as tmp:
        big, small = os.path.join(tmp, "big"), os.path.join(tmp, "small")
        t0 = time.perf_counter()
        big_vids = populate(big, a.volumes, a.snapshots)
        small_vids = populate(small, 2, 10)
        print(f"setup: {a.volumes} volumes + {a.snapshots} snapshots in "
              f"{time.perf_counter() - t0:.1f} s  (ebsengine from "
              f"{os.path.dirname(ebsengine.__file__)})")

        # (b) per-volume query in-process
        with ebsengine.Engine(big) as e_big, ebsengine.Engine(small) as e_small:
            probe_big, probe_small = big_vids[len(big_vids) // 2], small_vids[0]
            reps = 20
            tb, nb = median_time(lambda: [e_big.list_snapshots(probe_big) for _ in range(reps)],
                                 a.rounds)
            ts, ns = median_time(lambda: [e_small.list_snapshots(probe_small)
                                          for _ in range(reps)], a.rounds)
            assert len(nb[0]) == len(ns[0]) == 5, (len(nb[0]), len(ns[0]))  # type: ignore[index]
        print(f"(b) list_snapshots(volume) of 5: {tb / reps * 1e3:8.3f} ms at {a.snapshots} "
              f"snapshots, {ts / reps * 1e3:8.3f} ms at 10   ratio {tb / ts:7.2f}x (goal <= 2x)")

        procs = []
        try:
            for path in (big, small):
                procs.append(start_server(path))
            ec2_big, ec2_small = ec2_client(procs[0][1]), ec2_client(procs[1][1])
            for c in (ec2_big, ec2_small):  # warm-up (connections, the server's first import)
                c.describe_volumes(MaxResults=5)
            # (a) paged vs unpaged
            tu, nu = median_time(lambda: len(ec2_big.describe_snapshots()["Snapshots"]), a.rounds)
            tp, np_ = median_time(lambda: all_pages(ec2_big.describe_snapshots, "Snapshots",
                                                    MaxResults=1000), a.rounds)
            assert nu == np_ == a.snapshots, (nu, np_)
            print(f"(a) DescribeSnapshots all pages of 1000: {tp:7.2f} s, unpaged {tu:7.2f} s   "
                  f"ratio {tp / tu:5.2f}x (goal <= 1.2x)")
            tu, nu = median_time(lambda: len(ec2_big.describe_volumes()["Volumes"]), a.rounds)
            tp, np_ = median_time(lambda: all_pages(ec2_big.describe_volumes, "Volumes",
                                                    MaxResults=1000), a.rounds)
            assert nu == np_ == a.volumes, (nu, np_)
            print(f"    DescribeVolumes all pages of 1000:   {tp:7.2f} s, unpaged {tu:7.2f} s   "
                  f"ratio {tp / tu:5.2f}x")
            # (b') the volume-id filter through the endpoint
            reps = 5

            def by_volume(c: Any, vid: str) -> int:
                return len(c.describe_snapshots(
                    Filters=[{"Name": "volume-id", "Values": [vid]}])["Snapshots"])

            tb, nb = median_time(lambda: [by_volume(ec2_big, probe_big) for _ in range(reps)],
                                 a.rounds)
            ts, ns = median_time(lambda: [by_volume(ec2_small, probe_small) for _ in range(reps)],
                                 a.rounds)
            assert nb == ns == [5] * reps, (nb, ns)
            print(f"    DescribeSnapshots volume-id filter: {tb / reps * 1e3:8.2f} ms at "
                  f"{a.snapshots}, {ts / reps * 1e3:8.2f} ms at 10   ratio {tb / ts:7.2f}x")
        finally:
            for proc, _ in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
