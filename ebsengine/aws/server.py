"""The AWS-compatible HTTP endpoint: one port speaking EC2 Query and the EBS direct APIs.

Layers, each with one job:

* :class:`AwsApp` (WSGI): routes a request to a protocol (``/snapshots...`` is EBS
  rest-json, a POST with ``X-Amz-Target: TrentService.*`` is KMS's JSON protocol
  (:mod:`.kms`), everything else is the EC2 Query protocol), takes the region from the SigV4
  credential scope, parses with :mod:`.shapes`, calls the model (:mod:`.ec2`, :mod:`.ebs`)
  and renders the result or the error. No AWS rule lives here.
* :class:`ApiServer`: werkzeug's threaded WSGI server on a thread of its own, so it runs
  beside the NBD server in ``ebsengine serve``.

Signatures are checked by an :class:`Authenticator`: :class:`AcceptAll` in open mode (the
default: one account), :class:`~.sigv4.SigV4Verifier` with ``serve --auth sigv4`` (the
signer's account is the request's).
"""

from __future__ import annotations

import argparse
import dataclasses
import http
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from ebsengine import errors as engine_errors
from ebsengine.cloud import Cloud, CloudConfig, Scope
from ebsengine.cloud.clock import SimulatedClock, WallClock, format_instant
from ebsengine.serve.control import OWN_WAIT

from .ce import CeModel
from .dlm import DlmModel, dlm_error
from .ebs import BLOCK_SIZE, EbsModel
from .ec2 import Ec2Model, ModificationRules
from .errors import ApiError, AuthFailed, auth_error, ebs_error, ec2_error
from .jsonproto import CONTENT_TYPE as JSON_CONTENT_TYPE
from .jsonproto import JsonModel, JsonProtocol
from .kms import KmsModel, kms_error
from .shapes import Ec2Protocol, RestJsonProtocol, RestRequest
from .store import AwsStore, Context

log = logging.getLogger("ebsengine.aws")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8788
DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"
#: largest request body read (PutSnapshotBlock is exactly one block; JSON/form bodies are small)
MAX_BODY = 2 * BLOCK_SIZE
#: after an early refusal (414...), how much of the rest of the request is read and thrown
#: away before the connection closes (see ``_QuietHandler._drain``)
LINGER_BYTES = 8 * 1024 * 1024
LINGER_SECONDS = 5.0
#: moto's state reset (see :meth:`AwsApp._reset`)
RESET_PATH = "/moto-api/reset"
#: the simulated clock's control (``serve --clock simulated``; 404 on the wall clock)
CLOCK_PATH = "/_ebsengine/clock"

#: names that always reach a loopback server (with its port); plus the bound address itself
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
#: EC2 Query actions that only read: the ones a GET may carry (a browser sends a GET, with
#: no Origin and perhaps no Referer, from any page's <img>: it must never change state)
READ_ONLY_PREFIXES = ("Describe", "Get", "List")
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})

_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")

StartResponse = Callable[..., Any]


class Authenticator(Protocol):
    """Checks a request's SigV4 signature and says whose it is; raises
    :class:`~.errors.AuthFailed` to refuse it (the server answers with the protocol's code).

    ``environ`` carries the method, path, query and headers (``HTTP_AUTHORIZATION``,
    ``HTTP_X_AMZ_DATE``, ``HTTP_X_AMZ_CONTENT_SHA256``); ``service`` is the signing name the
    credential scope must name; ``payload`` is the request body as read (the form of an EC2
    request, the JSON of an EBS call), or None when there was none; ``unsigned_payload``: the
    operation may sign ``UNSIGNED-PAYLOAD`` instead of its body (PutSnapshotBlock). Returns
    the caller's account id (None: the server's default account).
    """

    #: whether requests must be signed (False: open mode)
    requires_signature: bool

    def verify(self, environ: dict[str, Any], service: str, region: str, payload: Any, *,
               unsigned_payload: bool = False) -> str | None: ...


class AcceptAll:
    """Open mode: signatures are not checked, every caller is the server's one account; the
    credential scope still selects the region."""

    requires_signature = False

    def verify(self, environ: dict[str, Any], service: str, region: str, payload: Any, *,
               unsigned_payload: bool = False) -> str | None:
        return None


def _origin_key(value: str) -> str:
    """``scheme://host[:port]`` of an origin or URL, lowercase (``null`` and ``*`` as
    they are)."""
    value = value.strip()
    if value in ("*", "null"):
        return value
    try:
        u = urlsplit(value)
    except ValueError:
        return value.lower()
    return f"{u.scheme}://{u.netloc}".lower()


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _status(code: int) -> str:
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Error"


#: an exception -> ``(code, message, HTTP status)`` of a JSON-protocol service
ErrorTable = Callable[[BaseException], tuple[str, str, int]]


def _ebs_style_error(exc: BaseException) -> tuple[str, str, int]:
    """Cost Explorer's errors: the EBS direct APIs' table (ValidationException & co.)."""
    code, message, status, _reason = ebs_error(exc)
    return code, message, status


class AwsApp:
    """WSGI application: parse -> call the model -> render."""

    def __init__(self, engine: Any, *, default_region: str = DEFAULT_REGION, account_id: str = DEFAULT_ACCOUNT,
                 modification: ModificationRules | None = None,
                 authenticator: Authenticator | None = None, clock: Callable[[], float] | None = None,
                 cloud_config: CloudConfig | None = None, allow_reset: bool = False,
                 seed_images: list[dict[str, Any]] | None = None,
                 allow_origins: Iterable[str] = (), allow_hosts: Iterable[str] = ()) -> None:
        # one clock object for the store, the cloud layer and its scheduler
        self.clock: Callable[[], float] = clock if clock is not None else WallClock()
        self.cloud = Cloud(engine, clock=self.clock, config=cloud_config)
        self.store = AwsStore(engine, default_region=default_region, clock=self.clock)
        # the default region's default VPC exists before the first request (as AWS's does), so
        # no request, refused ones included, is the one that writes it
        self.cloud.addressing.ensure_region(Scope(default_region, account_id))
        #: public images preloaded at start and after each reset (``serve --seed-images``)
        self.seed_images = list(seed_images or [])
        if self.seed_images:
            self.cloud.images.seed(Scope(default_region, account_id), self.seed_images)
        self.ec2 = Ec2Model(self.store, modification=modification, cloud=self.cloud)
        self.ebs = EbsModel(self.store)
        self.ebs.meter = self.cloud.meter
        #: JSON-protocol services by X-Amz-Target prefix:
        #: (protocol, model, signing name, error table)
        self.json_services: dict[str, tuple[JsonProtocol, JsonModel, str, ErrorTable]] = {}
        self.add_json_service(JsonProtocol("ce"), CeModel(self.cloud), _ebs_style_error)
        # KMS over the engine's key service, on this app's clock
        self.kms = KmsModel(engine.kms.bind(self.store.clock))
        self.add_json_service(JsonProtocol("kms"), self.kms, kms_error)
        self.ec2_protocol = Ec2Protocol()
        self.ebs_protocol = RestJsonProtocol("ebs")
        self.dlm = DlmModel(self.cloud)
        self.dlm_protocol = RestJsonProtocol("dlm", validation_code="InvalidRequestException")
        self.default_region = default_region
        self.account_id = account_id
        self.auth: Authenticator = authenticator or AcceptAll()
        #: ``POST /moto-api/reset`` wipes every resource (moto's server mode); off unless asked
        self.allow_reset = allow_reset
        #: browser-borne requests: an Origin/Referer of another site, or a Host that is not
        #: this server's (DNS rebinding), are refused unless allowed here (see _browser_refusal)
        self.allow_origins = {_origin_key(o) for o in allow_origins}
        self.allow_hosts = {h.lower().rstrip(".") for h in allow_hosts}
        #: (host, port) the server listens on; set by ApiServer.start (None: any port)
        self.bound: tuple[str, int] | None = None

    def add_json_service(self, protocol: JsonProtocol, model: JsonModel,
                         errors: ErrorTable) -> None:
        """Answer ``X-Amz-Target: <protocol.target_prefix>.<Operation>`` with ``model``;
        ``errors`` turns an exception into ``(code, message, HTTP status)``."""
        signing = str(protocol.model.metadata.get("signingName")
                      or protocol.model.metadata.get("endpointPrefix", ""))
        self.json_services[protocol.target_prefix] = (protocol, model, signing, errors)

    def close(self) -> None:
        """Persist what is held in memory (the EBS direct API call counters)."""
        self.cloud.meter.flush()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        environ["ebsengine.refused"] = self._browser_refusal(environ)
        if path == RESET_PATH:
            return self._reset(environ, start_response)
        if path == CLOCK_PATH:
            return self._clock(environ, start_response)
        if path.startswith("/snapshots"):
            return self._ebs(environ, start_response, path)
        target = environ.get("HTTP_X_AMZ_TARGET") or ""
        if target and "." in target and target.split(".", 1)[0] in self.json_services:
            return self._json(environ, start_response, target)
        if path == "/policies" or path.startswith(("/policies/", "/tags/")):
            return self._dlm(environ, start_response)
        return self._ec2(environ, start_response)

    # helpers

    @staticmethod
    def _guard(environ: dict[str, Any], code: str) -> None:
        """Refuse (403, ``code``) a request :meth:`_browser_refusal` found browser-borne."""
        refused = environ.get("ebsengine.refused")
        if refused:
            raise ApiError(code, refused, status=403)

    def _host_ok(self, host: str, port: int | None) -> bool:
        """Whether ``host:port`` names this server: a loopback name or the bound address on
        its port, any IP literal when bound to all interfaces, or an allowed host."""
        host = host.lower().rstrip(".")
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if host in self.allow_hosts or where in self.allow_hosts:
            return True
        if self.bound is not None and (port or 80) != self.bound[1]:
            return False
        bound = self.bound[0].lower() if self.bound is not None else ""
        if host in LOOPBACK_NAMES or host == bound:
            return True
        if bound in _WILDCARDS:  # every address of the machine is ours; names are not
            return _is_ip(host)
        return False

    def _origin_ok(self, value: str) -> bool:
        """An Origin (or a Referer's origin) is this server's own, or allowed."""
        if "*" in self.allow_origins:
            return True
        key = _origin_key(value)
        if key in self.allow_origins:
            return True
        try:
            u = urlsplit(value)
            host, port = u.hostname, u.port
        except ValueError:
            return False
        if u.scheme != "http" or not host:
            return False
        return self._host_ok(host, port or 80)

    def _browser_refusal(self, environ: dict[str, Any]) -> str | None:
        """Why the request looks sent by a web page the user visits, or None.

        boto3 and the aws-cli send neither ``Origin`` nor ``Referer`` and a ``Host`` naming
        the endpoint. A page of another site makes the browser send its Origin (every
        POST/fetch) or Referer; a page on a rebound DNS name sends that name as Host."""
        host_header = environ.get("HTTP_HOST")
        if host_header is not None:
            try:
                u = urlsplit("//" + host_header)
                host, port = u.hostname, u.port
            except ValueError:
                host, port = None, None
            if not host or not self._host_ok(host, port):
                return (f"Host {host_header!r} is not this server's address; requests for "
                        f"other names are refused (DNS rebinding). Allow a name with "
                        f"--allow-host NAME")
        for header, name in (("HTTP_ORIGIN", "Origin"), ("HTTP_REFERER", "Referer")):
            value = environ.get(header)
            if value is not None and not self._origin_ok(value):
                return (f"{name} {value!r} is another site: requests a web page makes the "
                        f"browser send are refused. Allow an origin with --allow-origin URL")
        return None

    def _context(self, environ: dict[str, Any]) -> tuple[Context, str]:
        """Region and signing service from the SigV4 credential scope (header or presigned query)."""
        auth = environ.get("HTTP_AUTHORIZATION") or ""
        m = _CREDENTIAL_RE.search(auth)
        if m is None and "X-Amz-Credential" in (environ.get("QUERY_STRING") or ""):
            from urllib.parse import unquote

            m = _CREDENTIAL_RE.search("Credential=" + unquote(environ["QUERY_STRING"].split("X-Amz-Credential=")[1]))
        region = m.group(3) if m else self.default_region
        service = m.group(4) if m else ""
        return Context(region, self.account_id, str(uuid.uuid4())), service

    def _verify(self, environ: dict[str, Any], ctx: Context, service: str, body: Any,
                family: str, *, unsigned_payload: bool = False) -> Context:
        """``ctx`` with the signer's account (:attr:`auth` checks the signature); a refused
        signature raises the ApiError of the protocol ``family``."""
        try:
            account = self.auth.verify(environ, service, ctx.region, body,
                                       unsigned_payload=unsigned_payload)
        except AuthFailed as exc:
            raise auth_error(exc, family) from None
        if account is None or account == ctx.account_id:
            return ctx
        return dataclasses.replace(ctx, account_id=account)

    @staticmethod
    def _read_body(environ: dict[str, Any], into: bytearray | None = None) -> bytes | bytearray:
        """The request body, read straight into one buffer (no intermediate copies)."""
        stream = environ["wsgi.input"]
        length_text = environ.get("CONTENT_LENGTH")
        if not length_text:
            if environ.get("wsgi.input_terminated"):
                try:  # a chunked body: werkzeug decodes it and says OSError when it is bad
                    data = stream.read(MAX_BODY + 1)
                except OSError as exc:
                    raise ApiError("ValidationException",
                                   f"Malformed chunked request body ({exc})",
                                   status=400) from None
                if len(data) > MAX_BODY:
                    raise ApiError("ValidationException", "Request body too large", status=413)
                return data  # type: ignore[no-any-return]
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise ApiError("InvalidParameterValue", "Content-Length is not a number",
                           status=400) from None
        if length > MAX_BODY or length < 0:
            raise ApiError("ValidationException", "Request body too large", status=413)
        buf = bytearray(length)
        view = memoryview(buf)
        got = 0
        while got < length:
            n = stream.readinto(view[got:])
            if not n:
                break
            got += n
        view.release()
        if got != length:
            raise ApiError("ValidationException", "Request body shorter than Content-Length", status=400)
        return buf

    # EC2 query protocol

    def _ec2(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        ctx, _service = self._context(environ)
        try:
            self._guard(environ, "UnauthorizedOperation")
            form: dict[str, str] = {}
            query = environ.get("QUERY_STRING") or ""
            if query:
                form.update(parse_qsl(query, keep_blank_values=True))
            body: bytes | bytearray | None = None
            if environ.get("REQUEST_METHOD") == "POST":
                body = self._read_body(environ)
                if body:
                    try:
                        text = bytes(body).decode("utf-8")
                    except UnicodeDecodeError:
                        raise ApiError("InvalidParameterValue",
                                       "The request body is not valid UTF-8") from None
                    form.update(parse_qsl(text, keep_blank_values=True))
            ctx = self._verify(environ, ctx, "ec2", body, "query")
            action = form.get("Action")
            if not action:
                raise ApiError("MissingAction", "The request must contain the parameter Action")
            if not (self.ec2_protocol.has_action(action) and self.ec2.supports(action)):
                raise ApiError("InvalidAction", f"The action {action} is not valid for this web service.")
            if environ.get("REQUEST_METHOD") != "POST" and not action.startswith(READ_ONLY_PREFIXES):
                raise ApiError("InvalidRequest", f"The action {action} changes state: send it "
                               f"as a POST (only Describe*, Get* and List* actions are "
                               f"accepted as {environ.get('REQUEST_METHOD')})", status=400)
            params = self.ec2_protocol.parse(action, form)
            result = self.ec2.call(ctx, action, params)
            body_out = self.ec2_protocol.render(action, result, ctx.request_id)
            status = 200
        except Exception as exc:  # one translation table: errors.ec2_error
            if not isinstance(exc, (ApiError, engine_errors.EbsError)):
                log.exception("EC2 request failed")
            code, message, status = ec2_error(exc)
            body_out = self.ec2_protocol.render_error(code, message, ctx.request_id)
        start_response(_status(status), [
            ("Content-Type", "text/xml;charset=UTF-8"),
            ("Content-Length", str(len(body_out))),
            ("x-amzn-RequestId", ctx.request_id),
        ])
        return [body_out]

    # JSON-protocol services (X-Amz-Target)

    def _json(self, environ: dict[str, Any], start_response: StartResponse,
              target: str) -> Iterable[bytes]:
        ctx, _ = self._context(environ)
        prefix, operation = target.split(".", 1)
        protocol, model, signing, errors = self.json_services[prefix]
        try:
            self._guard(environ, "AccessDeniedException")
            if environ.get("REQUEST_METHOD") != "POST":
                raise ApiError("UnknownOperationException", "Use POST for this service", status=400)
            body = self._read_body(environ)
            ctx = self._verify(environ, ctx, signing, body, "json")
            if not (protocol.has_operation(operation) and model.supports(operation)):
                raise ApiError("UnknownOperationException",
                               f"The operation {operation} is not supported by this endpoint",
                               status=400)
            params = protocol.parse_body(operation, body)
            body_out = protocol.render_json(operation, model.call(ctx, operation, params))
            status = 200
            headers = [("Content-Type", JSON_CONTENT_TYPE)]
        except Exception as exc:  # each service's own error table
            if not isinstance(exc, (ApiError, engine_errors.EbsError)):
                log.exception("%s request failed", prefix)
            code, message, status = errors(exc)
            body_out = protocol.render_json_error(code, message)
            headers = [("Content-Type", JSON_CONTENT_TYPE), ("x-amzn-ErrorType", code)]
        headers += [("Content-Length", str(len(body_out))), ("x-amzn-RequestId", ctx.request_id)]
        start_response(_status(status), headers)
        return [body_out]


    # moto server mode: POST /moto-api/reset

    def _reset(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Wipe every resource, as moto's ``POST /moto-api/reset`` does (suites written for
        moto's server call it before each test). Answers like moto: 200 ``{"status": "ok"}``
        (plus ``"removed"``: how many of each kind went). Refused, changing nothing, with
        403 unless the server runs with ``allow_reset`` (``ebsengine serve --allow-reset``),
        400 for another method than POST, 409 while a volume is open (NBD) or being imported.
        """
        status: int
        doc: dict[str, Any]
        if environ.get("ebsengine.refused"):
            status, doc = 403, {"Error": environ["ebsengine.refused"]}
        elif self.auth.requires_signature:
            status, doc = 403, {"Error": "POST /moto-api/reset is disabled with --auth sigv4: "
                                         "it is not signed, and it deletes every account's "
                                         "resources"}
        elif not self.allow_reset:
            status, doc = 403, {"Error": "POST /moto-api/reset is disabled: it deletes every "
                                         "resource of the store; start the server with "
                                         "--allow-reset to enable it"}
        elif environ.get("REQUEST_METHOD") != "POST":
            status, doc = 400, {"Error": "Need to POST to reset Moto"}
        else:
            try:
                removed = self.cloud.reset()
                # the default region's default VPC exists again, as at server start
                scope = Scope(self.default_region, self.account_id)
                self.cloud.addressing.ensure_region(scope)
                if self.seed_images:  # the seed images are back too
                    self.cloud.images.seed(scope, self.seed_images)
                status, doc = 200, {"status": "ok", "removed": removed}
            except (engine_errors.VolumeInUse, engine_errors.IncorrectState) as exc:
                status, doc = 409, {"Error": f"reset refused, nothing was deleted: {exc}"}
        body = json.dumps(doc).encode()
        start_response(_status(status), [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body)))])
        return [body]

    # the simulated clock: POST /_ebsengine/clock {"advance": s} | {"set": ISO8601}

    def _clock(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Move the simulated clock (everything due in between runs first, in time order);
        answers ``{"now": ISO8601}``. GET only reads it. 404 unless the clock is simulated,
        400 for a bad body or a move backwards, 405 for another method."""
        clock = self.clock
        status, doc = 200, {}
        if environ.get("ebsengine.refused"):
            status, doc = 403, {"Error": environ["ebsengine.refused"]}
        elif not isinstance(clock, SimulatedClock):
            status, doc = 404, {"Error": "the clock is the wall clock (start the server with "
                                         "--clock simulated to control it)"}
        elif environ.get("REQUEST_METHOD") == "GET":
            doc = {"now": format_instant(clock())}
        elif self.auth.requires_signature:
            status, doc = 403, {"Error": "moving the clock is disabled with --auth sigv4 (the "
                                         "control is not signed); GET still reads it"}
        elif environ.get("REQUEST_METHOD") != "POST":
            status, doc = 405, {"Error": "POST a JSON body {\"advance\": SECONDS} or "
                                         "{\"set\": \"ISO8601\"}"}
        else:
            try:
                raw = bytes(self._read_body(environ))
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict) or len(body.keys() & {"advance", "set"}) != 1 \
                        or set(body) - {"advance", "set"}:
                    raise ValueError('the body is {"advance": SECONDS} or {"set": "ISO8601"}')
                if "advance" in body:
                    secs = body["advance"]
                    if isinstance(secs, bool) or not isinstance(secs, (int, float)):
                        raise ValueError("advance takes a number of seconds")
                    clock.advance(secs)
                else:
                    if not isinstance(body["set"], str):
                        raise ValueError("set takes an ISO 8601 time")
                    clock.set(body["set"])
                doc = {"now": format_instant(clock())}
            except (ValueError, ApiError) as exc:
                status, doc = 400, {"Error": str(exc)}
        out = json.dumps(doc).encode()
        start_response(_status(status), [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(out)))])
        return [out]

    # Data Lifecycle Manager (rest-json)

    def _dlm(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        ctx, _ = self._context(environ)
        method = environ.get("REQUEST_METHOD", "GET")
        # the raw path: an ARN's encoded '/' (tags/arn%3A...%2Fpolicy-...) must stay one label
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO") or "/"
        path = raw.split("?", 1)[0]
        try:
            self._guard(environ, "InvalidRequestException")
            body: Any = None
            if method in ("PUT", "POST", "PATCH"):
                body = self._read_body(environ)
            ctx = self._verify(environ, ctx, "dlm", body, "rest-json")
            found = self.dlm_protocol.route(method, path)
            if found is None:
                raise ApiError("InvalidRequestException", f"No operation matches {method} {path}",
                               status=404)
            operation, uri = found
            pairs = parse_qsl(environ.get("QUERY_STRING") or "", keep_blank_values=True)
            multi: dict[str, list[str]] = {}
            for k, v in pairs:
                multi.setdefault(k, []).append(v)
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            params = self.dlm_protocol.parse(operation, uri, RestRequest(
                method, path, dict(pairs), headers, body, multi_query=multi))
            result = self.dlm.call(ctx, operation, params)
            status, out_headers, chunks = self.dlm_protocol.render(operation, result)
        except Exception as exc:
            if not isinstance(exc, (ApiError, engine_errors.EbsError)):
                log.exception("DLM request failed")
            code, message, status = dlm_error(exc)
            status, out_headers, chunks = self.dlm_protocol.render_error(code, message, status, None)
        out_headers.append(("x-amzn-RequestId", ctx.request_id))
        start_response(_status(status), out_headers)
        return chunks

    # EBS direct APIs (rest-json)

    def _ebs(self, environ: dict[str, Any], start_response: StartResponse, path: str) -> Iterable[bytes]:
        ctx, _ = self._context(environ)
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            self._guard(environ, "AccessDeniedException")
            found = self.ebs_protocol.route(method, path)
            body: Any = None
            if method in ("PUT", "POST"):
                body = self._read_body(environ)
            # the block of PutSnapshotBlock may be signed as UNSIGNED-PAYLOAD
            ctx = self._verify(environ, ctx, "ebs", body, "rest-json",
                               unsigned_payload=found is not None and found[0] == "PutSnapshotBlock")
            if found is None:
                raise ApiError("ValidationException", f"No operation matches {method} {path}",
                               status=404, reason="INVALID_PARAMETER_VALUE")
            operation, uri = found
            query = dict(parse_qsl(environ.get("QUERY_STRING") or "", keep_blank_values=True))
            headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
            params = self.ebs_protocol.parse(operation, uri, RestRequest(method, path, query, headers, body))
            result = self.ebs.call(ctx, operation, params)
            status, out_headers, chunks = self.ebs_protocol.render(operation, result)
        except Exception as exc:  # one translation table: errors.ebs_error
            if not isinstance(exc, (ApiError, engine_errors.EbsError)):
                log.exception("EBS request failed")
            code, message, status, reason = ebs_error(exc)
            status, out_headers, chunks = self.ebs_protocol.render_error(code, message, status, reason)
        out_headers.append(("x-amzn-RequestId", ctx.request_id))
        start_response(_status(status), out_headers)
        return chunks


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without the per-request access log line.

    ``timeout`` bounds every socket read/write, so a stalled client cannot hold
    :meth:`ApiServer.stop` (which waits for in-flight requests) for ever.
    """

    timeout = 60
    _linger = False

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        # http.server's own refusals (414 URI too long, 431 header too large, 400 bad request
        # line) answer before the request was read to its end, then close
        self._linger = True
        super().send_error(code, message, explain)

    def handle_one_request(self) -> None:
        super().handle_one_request()
        if self._linger:
            self._linger = False
            self._drain()

    def _drain(self) -> None:
        """Lingering close: closing a socket with unread input makes the kernel reset the
        connection, and the reset destroys the error response still unread at the client
        (which sees a broken pipe instead of the 414). Send the response and our FIN, then
        read what the client still sends, bounded in bytes and time."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            left = LINGER_BYTES
            while left > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                self.connection.settimeout(wait)
                data = self.rfile.read1(min(left, 65536))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass
        self.close_connection = True

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None

    def log(self, type: str, message: str, *args: Any) -> None:
        log.debug(message, *args)


class ApiServer:
    """The HTTP endpoint on its own thread.

    ``ApiServer(engine, host="127.0.0.1", port=8788, **app_options)``; ``port=0`` picks a
    free port. ``start()`` returns once the socket listens; ``url`` is then
    ``http://host:port``. ``stop()`` stops accepting, waits for in-flight requests to finish
    and closes the socket.
    ``app_options`` go to :class:`AwsApp` (``default_region``, ``account_id``,
    ``modification``, ``authenticator``, ``clock``, ``cloud_config``, ``allow_reset``,
    ``seed_images``, ``allow_origins``, ``allow_hosts``).
    """

    label = "the AWS API"  # what the serve loop calls it

    def __init__(self, engine: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, **app_options: Any) -> None:
        self.app = AwsApp(engine, **app_options)
        self.engine = engine
        self.host = host
        self._requested_port = port
        self._server: ThreadedWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def addresses(self) -> list[str]:
        """Where it listens (for the serve loop's announcement): ``[url]``."""
        return [self.url]

    def start(self) -> ApiServer:
        if self._server is not None:
            return self
        # serving makes this process the store's owner (see ebsengine.storage.owner)
        own = getattr(self.engine, "own", None)
        if own is not None:
            own(wait=OWN_WAIT)
        server = ThreadedWSGIServer(self.host, self._requested_port, self.app, handler=_QuietHandler)
        self.app.bound = (self.host, int(server.server_port))
        # stop() waits for in-flight requests (server_close joins request threads), so none
        # of them can touch the engine after the caller closes it
        server.daemon_threads = False
        server.block_on_close = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"aws-api:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None
        self.app.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(engine: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, block: bool = True,
          **app_options: Any) -> ApiServer:
    """Start the endpoint on ``engine``.

    With ``block=False`` it returns the started :class:`ApiServer` at once (run the NBD
    server alongside, call ``stop()`` at shutdown). With ``block=True`` it serves in
    :func:`ebsengine.serve.run_services` (the one serve loop: from the main thread, until
    SIGTERM or SIGINT), then returns the stopped server.
    """
    from ebsengine.serve import run_services

    server = ApiServer(engine, host, port, **app_options)
    if not block:
        return server.start()
    run_services([server])
    return server


def main(argv: list[str] | None = None) -> int:
    """``python -m ebsengine.aws.server --store DIR [--host H] [--port P]`` (benchmarks, manual use)."""
    from ebsengine import Engine
    from ebsengine.serve import run_services

    parser = argparse.ArgumentParser(description="ebsengine AWS-compatible endpoint (EC2 + EBS direct APIs)")
    parser.add_argument("--store", required=True)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--region", default=DEFAULT_REGION)
    args = parser.parse_args(argv)
    with Engine(args.store) as engine:
        server = ApiServer(engine, args.host, args.port, default_region=args.region)
        return run_services([server], store=args.store)


if __name__ == "__main__":
    raise SystemExit(main())
