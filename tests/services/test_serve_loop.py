"""The one serve loop (``ebsengine.serve.run_services``): services start in order, stop in
reverse on SIGTERM/SIGINT or a stop event, a failed start or stop stops every other service,
and the signal handlers are given back. Then its entry points as users run them: the
standalone AWS endpoint (``python -m ebsengine.aws.server``) and ``ebsengine serve`` with
every service disabled."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from ebsengine.serve import run_services

ROOT = Path(__file__).resolve().parents[2]


class FakeService:
    """Records what the loop did to it, in one log shared by all of them."""

    def __init__(self, name: str, log: list[str], *, fail_start: bool = False,
                 fail_stop: bool = False) -> None:
        self.label = name
        self.log = log
        self.fail_start = fail_start
        self.fail_stop = fail_stop

    def start(self) -> None:
        if self.fail_start:
            raise OSError(98, f"{self.label}: address in use")
        self.log.append(f"start {self.label}")

    def stop(self) -> None:
        self.log.append(f"stop {self.label}")
        if self.fail_stop:
            raise RuntimeError(f"{self.label}: stop failed")

    def addresses(self) -> list[str]:
        return [f"{self.label}-addr"]


def kill_self_soon(sig: int) -> threading.Timer:
    t = threading.Timer(0.2, os.kill, (os.getpid(), sig))
    t.start()
    return t


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_services_in_reverse_order_and_restores_handlers(sig: int) -> None:
    log: list[str] = []
    lines: list[str] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    kill_self_soon(sig)
    rc = run_services([FakeService("a", log), FakeService("b", log)], store="/some/store",
                      announce=lines.append)
    assert rc == 0
    assert log == ["start a", "start b", "stop b", "stop a"]
    assert lines == ["ebsengine: serving a on a-addr", "ebsengine: serving b on b-addr",
                     "ebsengine: store /some/store; stop with Ctrl-C or SIGTERM",
                     "ebsengine: stopped"]
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_failed_start_stops_the_services_already_started() -> None:
    log: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    services = [FakeService("a", log), FakeService("b", log),
                FakeService("c", log, fail_start=True), FakeService("d", log)]
    with pytest.raises(OSError, match="c: address in use"):
        run_services(services, announce=lambda line: None)
    assert log == ["start a", "start b", "stop b", "stop a"]  # d was never started
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_failed_stop_still_stops_the_others_then_raises() -> None:
    log: list[str] = []
    stop = threading.Event()
    stop.set()  # already asked to stop: start, then stop at once
    services = [FakeService("a", log), FakeService("b", log, fail_stop=True), FakeService("c", log)]
    with pytest.raises(RuntimeError, match="b: stop failed"):
        run_services(services, stop=stop, announce=lambda line: None)
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_off_the_main_thread_a_stop_event_ends_the_loop() -> None:
    log: list[str] = []
    stop = threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(
        run_services([FakeService("a", log)], stop=stop, announce=lambda line: None)))
    t.start()
    while "start a" not in log:
        t.join(0.01)
        assert t.is_alive()
    stop.set()
    t.join(10)
    assert not t.is_alive() and result == [0]
    assert log == ["start a", "stop a"]


def test_off_the_main_thread_without_a_stop_event_is_refused() -> None:
    errors: list[RuntimeError] = []

    def target() -> None:
        try:
            run_services([FakeService("a", [])], announce=lambda line: None)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join(10)
    assert len(errors) == 1
    assert "stop event" in str(errors[0])


def test_nothing_to_serve_returns_2() -> None:
    lines: list[str] = []
    assert run_services([], announce=lines.append) == 2
    assert lines == ["ebsengine: nothing to serve (every service is disabled)"]


# --- the entry points, as processes ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_cli_serve_with_every_service_disabled_exits_2(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "ebsengine.cli", "--store", str(tmp_path / "s"),
                        "serve", "--nbd-socket", "none", "--nbd-port", "0", "--http-port", "0"],
                       capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 2, p.stderr
    assert "nothing to serve" in p.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_standalone_aws_endpoint_serves_until_signal(tmp_path: Path, sig: int) -> None:
    port = free_port()
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-m", "ebsengine.aws.server", "--store", str(store),
                             "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("ebsengine: store"):
                break
        assert f"ebsengine: serving the AWS API on http://127.0.0.1:{port}\n" in lines, lines
        ec2 = boto3.client("ec2", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                           aws_access_key_id="any", aws_secret_access_key="any",
                           config=Config(retries={"max_attempts": 1}))
        vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=1)["VolumeId"]
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "ebsengine: stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    import ebsengine
    with ebsengine.Engine(store) as eng:  # the engine was closed cleanly with the volume in it
        assert [v.id for v in eng.list_volumes()] == [vol]
        assert eng.fsck().ok
