"""Requests boto3 cannot produce, sent over real sockets: a malformed chunked body is the
client's error (400, not 500), numbers are ASCII digits as on AWS, and an over-long URL
gets the 414 the server sends (not a reset connection)."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

from test_aws_support import Aws, aws  # noqa: F401  (aws is a fixture)

AUTH = ("AWS4-HMAC-SHA256 Credential=a/20260101/us-east-1/ec2/aws4_request, "
        "SignedHeaders=host, Signature=0")


def address(aws: Aws) -> tuple[str, int]:
    u = urlsplit(aws.url)
    assert u.hostname is not None and u.port is not None
    return u.hostname, u.port


def exchange(aws: Aws, request: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the server closes after it)."""
    with socket.create_connection(address(aws), timeout=30) as s:
        s.sendall(request)
        out = b""
        while True:
            data = s.recv(65536)
            if not data:
                return out
            out += data


def post(aws: Aws, body: str) -> tuple[int, bytes]:
    host, port = address(aws)
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        c.request("POST", "/", body=body.encode(), headers={
            "Content-Type": "application/x-www-form-urlencoded", "Authorization": AUTH})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_a_malformed_chunked_body_is_a_400(aws: Aws) -> None:
    host, port = address(aws)
    head = (f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: {AUTH}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    for body in (b"zz\r\nAction=DescribeVolumes\r\n0\r\n\r\n",  # not a hex size
                 b"-5\r\nAction\r\n0\r\n\r\n"):  # negative size
        answer = exchange(aws, head + body)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"<Code>ValidationException</Code>" in answer
    # a well-formed chunked body still works
    form = b"Action=DescribeVolumes&Version=2016-11-15"
    good = b"%x\r\n%s\r\n0\r\n\r\n" % (len(form), form)
    answer = exchange(aws, head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + good)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_numbers_are_ascii_digits_only(aws: Aws) -> None:
    base = "Action=CreateVolume&Version=2016-11-15&AvailabilityZone=us-east-1a&Size="
    with aws.unchanged():
        for size in ("%D9%A3",  # ARABIC-INDIC DIGIT THREE
                     "%EF%BC%93",  # FULLWIDTH DIGIT THREE
                     "1_0", "%203"):
            status, body = post(aws, base + size)
            assert status == 400, (size, body)
            assert b"<Code>InvalidParameterValue</Code>" in body, body
    status, body = post(aws, base + "3")
    assert status == 200, body
    assert [v["Size"] for v in aws.ec2.describe_volumes()["Volumes"]] == [3]


def test_an_over_long_url_gets_its_414(aws: Aws) -> None:
    # megabytes: more than the socket buffers hold, so the client is still sending when
    # the server answers (a server closing then resets the connection: a broken pipe)
    host, port = address(aws)
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        c.request("GET", "/?Action=DescribeVolumes&Version=2016-11-15&X=" + "a" * 4_000_000)
        r = c.getresponse()
        assert r.status == 414
        r.read()
    finally:
        c.close()
    assert aws.ec2.describe_volumes()["Volumes"] == []  # still serving


def test_an_unavailable_backend_is_a_503_on_both_protocols_never_a_500() -> None:
    from ebsengine import errors as engine_errors
    from ebsengine.aws.errors import ebs_error, ec2_error
    for exc in (engine_errors.BackendUnavailable("the Ceph cluster is unavailable"),
                engine_errors.StoreLocked("another process holds the writer lock")):
        assert ec2_error(exc)[0::2] == ("Unavailable", 503)
        code, _, status, reason = ebs_error(exc)
        assert (code, status, reason) == ("ServiceUnavailableException", 503, None)
