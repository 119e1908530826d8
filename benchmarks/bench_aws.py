"""Benchmark: the AWS endpoint against moto's own server, in one run, through boto3.

Run:  python benchmarks/bench_aws.py [--image-mib 256] [--rounds 3] [--threads 8] [--pairs 300]

What is measured (each server a separate process on its own free loopback port, the client
in this process, boto3 with ``--threads`` threads and a connection pool as large):

* PutSnapshotBlock throughput: StartSnapshot, then every non-zero 512 KiB block of the
  corpus image put concurrently (as coldsnap does: zero blocks skipped), CompleteSnapshot.
* GetSnapshotBlock throughput: ListSnapshotBlocks, then every listed block read
  concurrently (body fully read; the bytes of every block compared with the image).
* CreateVolume + DescribeVolumes(VolumeIds=[id]) pairs, concurrently: requests per second.

Corpus: ``../shared/bench/gen_image.py --size-mib N --seed 20240601`` (holes, written zeros,
text-like and random extents), the image every ebsengine benchmark uses, cut into 512 KiB
blocks. Baselines: ``moto_server`` (moto's Flask/werkzeug server, data kept in memory) and a
null server (werkzeug, canned replies: the client + HTTP ceiling on this machine, since
boto3 itself costs CPU). Also the engine alone, called in-process by the same number of
threads with no HTTP at all: the ceiling of any endpoint over it. Each server gets a small unmeasured warm-up first. Figures: medians
over ``--rounds`` rounds, wall time and the CPU time of the client and of the server process.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import hashlib
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

BLOCK = 524288
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN_IMAGE = os.path.join(ROOT, "..", "shared", "bench", "gen_image.py")
if not os.path.exists(GEN_IMAGE):
    GEN_IMAGE = "/work/shared/bench/gen_image.py"

NULL_SERVER = textwrap.dedent('''
    import json, sys
    from werkzeug.serving import make_server, WSGIRequestHandler
    BLOCK = bytes(range(256)) * 2048
    class Quiet(WSGIRequestHandler):
        def log_request(self, *a): pass
    def app(env, start):
        n = int(env.get("CONTENT_LENGTH") or 0)
        if n:
            env["wsgi.input"].read(n)
        path, method = env["PATH_INFO"], env["REQUEST_METHOD"]
        if method == "GET" and "/blocks/" in path:
            start("200 OK", [("Content-Length", str(len(BLOCK))), ("x-amz-Data-Length", str(len(BLOCK))),
                             ("x-amz-Checksum", "x"), ("x-amz-Checksum-Algorithm", "SHA256")])
            return [BLOCK]
        body = json.dumps({"SnapshotId": "snap-0123456789abcdef0", "Status": "completed", "Blocks": [],
                           "BlockSize": 524288, "VolumeSize": 1}).encode()
        start("201 Created", [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                              ("x-amz-Checksum", "x"), ("x-amz-Checksum-Algorithm", "SHA256")])
        return [body]
    s = make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True, request_handler=Quiet)
    s.serve_forever()
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} never opened")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.proc = subprocess.Popen([*argv, str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_port(self.port, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def clients(url: str, threads: int) -> tuple[Any, Any]:
    cfg = botocore.config.Config(max_pool_connections=threads, retries={"total_max_attempts": 1})
    kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "AKIDBENCH",
          "aws_secret_access_key": "secret", "config": cfg}
    return boto3.client("ebs", **kw), boto3.client("ec2", **kw)


def timed(fn: Callable[[], int], server: Server) -> tuple[float, float, float, int]:
    """(wall s, client cpu s, server cpu s, items) of one call."""
    s0, c0, t0 = server.cpu(), time.process_time(), time.perf_counter()
    n = fn()
    t1, c1, s1 = time.perf_counter(), time.process_time(), server.cpu()
    return t1 - t0, c1 - c0, s1 - s0, n


def load_corpus(image_mib: int) -> list[tuple[int, bytes]]:
    path = os.path.join(tempfile.gettempdir(), f"ebsengine-bench-image-{image_mib}.img")
    if not os.path.exists(path):
        subprocess.run([sys.executable, GEN_IMAGE, path, "--size-mib", str(image_mib), "--seed", "20240601"],
                       check=True)
    blocks = []
    with open(path, "rb") as f:
        i = 0
        while True:
            data = f.read(BLOCK)
            if not data:
                break
            data = data.ljust(BLOCK, b"\0")
            if data.count(0) != BLOCK:
                blocks.append((i, data))
            i += 1
    return blocks


def run_put(ebs: Any, corpus: list[tuple[int, bytes]], sums: list[str], threads: int, size_gib: int,
            null: bool) -> tuple[Callable[[], int], list[str]]:
    out: list[str] = []

    def go() -> int:
        sid = ebs.start_snapshot(VolumeSize=size_gib)["SnapshotId"]
        out.append(sid)

        def put(k: int) -> None:
            idx, data = corpus[k]
            ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=idx, BlockData=data, DataLength=BLOCK,
                                   Checksum=sums[k], ChecksumAlgorithm="SHA256")

        with cf.ThreadPoolExecutor(threads) as ex:
            list(ex.map(put, range(len(corpus))))
        if not null:
            ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(corpus))
        return len(corpus)

    return go, out


def run_get(ebs: Any, sid: str, corpus: dict[int, bytes], threads: int, null: bool) -> Callable[[], int]:
    def go() -> int:
        if null:
            blocks = [{"BlockIndex": i, "BlockToken": "t"} for i in corpus]
        else:
            blocks = []
            kw: dict[str, Any] = {"SnapshotId": sid}
            while True:
                page = ebs.list_snapshot_blocks(**kw)
                blocks += page["Blocks"]
                if not page.get("NextToken"):
                    break
                kw["NextToken"] = page["NextToken"]
            assert len(blocks) == len(corpus), (len(blocks), len(corpus))

        def get(b: dict[str, Any]) -> None:
            out = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
            data = out["BlockData"].read()
            assert len(data) == BLOCK
            if not null:
                assert data == corpus[b["BlockIndex"]]

        with cf.ThreadPoolExecutor(threads) as ex:
            list(ex.map(get, blocks))
        return len(blocks)

    return go


def run_volumes(ec2: Any, pairs: int, threads: int) -> Callable[[], int]:
    def go() -> int:
        def pair(_: int) -> None:
            vid = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
            got = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
            assert got[0]["VolumeId"] == vid

        with cf.ThreadPoolExecutor(threads) as ex:
            list(ex.map(pair, range(pairs)))
        return 2 * pairs

    return go


def engine_alone(corpus: list[tuple[int, bytes]], threads: int, size_gib: int) -> tuple[float, float]:
    """(put MiB/s, get MiB/s) of the engine called in-process by ``threads`` threads, no HTTP:
    the ceiling any endpoint over this engine can reach."""
    sys.path.insert(0, ROOT)
    import ebsengine

    mib = len(corpus) * BLOCK / 2**20
    with tempfile.TemporaryDirectory(prefix="ebsengine-bench-engine-") as d, ebsengine.Engine(d) as eng:
        snap = eng.start_snapshot(size_gib)
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda b: eng.put_snapshot_block(snap.id, b[0], b[1]), corpus))
        put = mib / (time.perf_counter() - t0)
        eng.complete_snapshot(snap.id)
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda b: eng.read_snapshot_block(snap.id, b[0]), corpus))
        get = mib / (time.perf_counter() - t0)
    return put, get


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=300)
    args = ap.parse_args()

    corpus = load_corpus(args.image_mib)
    sums = [base64.b64encode(hashlib.sha256(d).digest()).decode() for _, d in corpus]
    by_index = dict(corpus)
    size_gib = max(1, (args.image_mib + 1023) // 1024)
    print(f"corpus: gen_image.py --size-mib {args.image_mib} --seed 20240601: {len(corpus)} non-zero blocks "
          f"of 512 KiB ({len(corpus) * BLOCK / 2**20:.0f} MiB); {args.threads} client threads; "
          f"{args.rounds} rounds, medians; {os.cpu_count()} CPUs")

    store = tempfile.mkdtemp(prefix="ebsengine-bench-aws-")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    servers = {
        "ebsengine": Server("ebsengine", [sys.executable, "-m", "ebsengine.aws.server", "--store", store,
                                          "--port"], env),
        "moto": Server("moto", ["moto_server", "-H", "127.0.0.1", "-p"]),
        "null": Server("null", [sys.executable, "-c", NULL_SERVER]),
    }
    results: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    try:
        for name, server in servers.items():
            ebs, ec2 = clients(server.url, args.threads)
            null = name == "null"
            res: dict[str, list[tuple[float, float, float, int]]] = {"put": [], "get": [], "vol": []}
            # warm-up (not measured): first requests pay imports and lazy set-up on every server
            go, sids = run_put(ebs, corpus[:16], sums[:16], args.threads, size_gib, null)
            go()
            run_get(ebs, sids[0] if not null else "snap-0123456789abcdef0", dict(corpus[:16]), args.threads,
                    null)()
            if not null:
                run_volumes(ec2, 20, args.threads)()
            for _ in range(args.rounds):
                go, sids = run_put(ebs, corpus, sums, args.threads, size_gib, null)
                res["put"].append(timed(go, server))
                sid = sids[0] if not null else "snap-0123456789abcdef0"
                res["get"].append(timed(run_get(ebs, sid, by_index, args.threads, null), server))
                if not null:
                    res["vol"].append(timed(run_volumes(ec2, args.pairs, args.threads), server))
            results[name] = {}
            for kind, rows in res.items():
                if not rows:
                    continue
                wall = statistics.median(r[0] for r in rows)
                n = rows[0][3]
                results[name][kind] = (wall, statistics.median(r[1] for r in rows),
                                       statistics.median(r[2] for r in rows), n / wall)
    finally:
        for server in servers.values():
            server.stop()

    mib = len(corpus) * BLOCK / 2**20
    alone = [engine_alone(corpus, args.threads, size_gib) for _ in range(args.rounds)]
    print()
    print(f"{'server':<10} {'operation':<28} {'wall s':>8} {'client cpu':>11} {'server cpu':>11} {'rate':>16}")
    for name, kinds in results.items():
        for kind, (wall, ccpu, scpu, rate) in kinds.items():
            label = {"put": "PutSnapshotBlock", "get": "GetSnapshotBlock",
                     "vol": "CreateVolume+DescribeVolumes"}[kind]
            unit = f"{mib / wall:8.1f} MiB/s" if kind != "vol" else f"{rate:8.1f} req/s"
            print(f"{name:<10} {label:<28} {wall:8.2f} {ccpu:11.2f} {scpu:11.2f} {unit:>16}")
    print(f"{'engine':<10} {'put_snapshot_block, no HTTP':<28} {'':>8} {'':>11} {'':>11} "
          f"{statistics.median(a[0] for a in alone):8.1f} MiB/s")
    print(f"{'engine':<10} {'read_snapshot_block, no HTTP':<28} {'':>8} {'':>11} {'':>11} "
          f"{statistics.median(a[1] for a in alone):8.1f} MiB/s")
    print()
    for kind, label in (("put", "PutSnapshotBlock"), ("get", "GetSnapshotBlock"), ("vol", "CreateVolume+Describe")):
        ours, moto = results["ebsengine"][kind][3], results["moto"][kind][3]
        line = f"ratio ebsengine/moto {label:<22} {ours / moto:5.2f}x"
        if kind in results["null"]:
            line += f"   (null-server ceiling/moto {results['null'][kind][3] / moto:5.2f}x)"
        print(line)


if __name__ == "__main__":
    main()
