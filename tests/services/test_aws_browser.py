"""No browser-borne requests: an Origin or Referer of another site, or a Host that is not
the server's own address (DNS rebinding), is refused with 403 in each protocol's error
shape, and changes nothing; ``allow_origins`` / ``allow_hosts`` (``serve --allow-origin`` /
``--allow-host``) let named ones in. A GET never changes state: mutating EC2 Query actions
must be POSTs. boto3 (which sends none of these headers) keeps working."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from serve_support import wait_ready
from test_aws_support import Aws, aws  # noqa: F401  (aws is a fixture)

AUTH = ("AWS4-HMAC-SHA256 Credential=a/20260101/us-east-1/ec2/aws4_request, "
        "SignedHeaders=host, Signature=0")
FORM = "Action=CreateVolume&Version=2016-11-15&AvailabilityZone=us-east-1a&Size=1"


LAST_HEADERS: dict[str, str] = {}


def send(aws: Aws, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    u = urlsplit(aws.url)
    assert u.hostname is not None
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        # skip_host: the test's own Host header, or http.client's (the endpoint's)
        hdrs = dict(headers or {})
        c.putrequest(method, path, skip_host="Host" in hdrs, skip_accept_encoding=True)
        for k, v in {"Authorization": AUTH, **hdrs}.items():
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        LAST_HEADERS.clear()
        LAST_HEADERS.update({k.lower(): v for k, v in r.getheaders()})
        return r.status, r.read()
    finally:
        c.close()


def post_form(aws: Aws, form: str = FORM, **headers: str) -> tuple[int, bytes]:
    return send(aws, "POST", "/", form.encode(),
                {"Content-Type": "application/x-www-form-urlencoded", **headers})


def port(aws: Aws) -> int:
    p = urlsplit(aws.url).port
    assert p is not None
    return p


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # sandboxed iframe, file:// page
    {"Referer": "http://evil.example/page.html"},
    {"Origin": "http://127.0.0.1:1"},  # another local service's page
    {"Host": "evil.example"},  # DNS rebinding: the attacker's name resolving to 127.0.0.1
    {"Host": "evil.example:PORT"},
    {"Host": "127.0.0.1:1"},
])
def test_browser_borne_ec2_requests_are_refused_unchanged(aws: Aws, headers) -> None:
    headers = {k: v.replace("PORT", str(port(aws))) for k, v in headers.items()}
    with aws.unchanged():
        status, body = post_form(aws, **headers)
    assert status == 403, body
    assert b"<Code>UnauthorizedOperation</Code>" in body
    assert b"--allow-" in body  # says how to allow it


def test_the_servers_own_addresses_are_accepted(aws: Aws) -> None:
    p = port(aws)
    for headers in ({"Host": f"127.0.0.1:{p}"}, {"Host": f"localhost:{p}"},
                    {"Origin": f"http://localhost:{p}", "Referer": f"http://127.0.0.1:{p}/x"}):
        status, body = post_form(aws, "Action=DescribeVolumes&Version=2016-11-15", **headers)
        assert status == 200, (headers, body)


def test_every_protocol_refuses_in_its_own_shape(aws: Aws) -> None:
    evil = {"Origin": "http://evil.example"}
    with aws.unchanged():
        status, body = send(aws, "POST", "/snapshots", b'{"VolumeSize": 1}',
                            {"Content-Type": "application/json", **evil})
        assert status == 403, body  # EBS direct APIs: rest-json
        assert LAST_HEADERS["x-amzn-errortype"].startswith("AccessDeniedException")
        assert "another site" in json.loads(body)["message"]
        status, body = send(aws, "POST", "/", b'{"Description": "x"}', {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "TrentService.CreateKey", **evil})
        assert status == 403, body
        assert "AccessDeniedException" in json.loads(body)["__type"]
        status, body = send(aws, "POST", "/policies", b"{}",
                            {"Content-Type": "application/json", **evil})
        assert status == 403, body  # DLM
        assert LAST_HEADERS["x-amzn-errortype"].startswith("InvalidRequestException")
        status, body = send(aws, "POST", "/moto-api/reset", b"", evil)
        assert status == 403 and b"another site" in body


def test_boto3_keeps_working(aws: Aws) -> None:
    vid = aws.volume()
    assert [v["VolumeId"] for v in aws.ec2.describe_volumes()["Volumes"]] == [vid]
    assert aws.kms.list_keys()["Keys"] == []


def test_mutating_ec2_actions_are_refused_as_get(aws: Aws) -> None:
    with aws.unchanged():
        status, body = send(aws, "GET", "/?" + FORM)
    assert status == 400, body
    assert b"<Code>InvalidRequest</Code>" in body and b"POST" in body
    status, body = send(aws, "GET", "/?Action=DescribeVolumes&Version=2016-11-15")
    assert status == 200, body
    status, body = post_form(aws)  # the same action as a POST works
    assert status == 200, body


@pytest.fixture
def allowing(tmp_path) -> Iterator[Aws]:
    a = Aws(str(tmp_path / "store"), allow_origins=["http://app.example:3000"],
            allow_hosts=["ebs.test"])
    try:
        yield a
    finally:
        a.stop()


def test_allowed_origins_and_hosts_pass(allowing: Aws) -> None:
    ok = "Action=DescribeVolumes&Version=2016-11-15"
    assert post_form(allowing, ok, Origin="http://app.example:3000")[0] == 200
    assert post_form(allowing, ok, Referer="http://app.example:3000/ui/")[0] == 200
    assert post_form(allowing, ok, Host="ebs.test")[0] == 200
    assert post_form(allowing, ok, Host=f"ebs.test:{port(allowing)}")[0] == 200
    assert post_form(allowing, ok, Origin="http://app.example:3001")[0] == 403
    assert post_form(allowing, ok, Host="other.test")[0] == 403


def test_serve_options_allow_origins_and_hosts(tmp_path) -> None:
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ebsengine.cli", "--store", str(tmp_path / "store"), "serve",
         "--nbd-port", "0", "--nbd-socket", "none", "--http-port", str(p),
         "--allow-origin", "http://app.example", "--allow-host", "ebs.test"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(proc)

        class Url:
            url = f"http://127.0.0.1:{p}"

        ok = "Action=DescribeVolumes&Version=2016-11-15"
        srv: Aws = Url()  # type: ignore[assignment]
        assert post_form(srv, ok, Origin="http://app.example")[0] == 200
        assert post_form(srv, ok, Host=f"ebs.test:{p}")[0] == 200
        assert post_form(srv, ok, Origin="http://evil.example")[0] == 403
        assert post_form(srv, ok, Host=f"evil.test:{p}")[0] == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
