"""Accounts and Signature Version 4: who sent a request (``serve --auth sigv4``).

* :func:`load_credentials` reads the users from a file in the AWS shared-credentials INI
  format: one section per user with ``aws_access_key_id``, ``aws_secret_access_key`` and
  ``account_id`` (12 digits; several users may share an account).
* :class:`SigV4Verifier` checks a request's signature (the ``Authorization`` header or the
  presigned query form) and answers the caller's account id. The expected signature is
  computed by botocore's own signer (``SigV4Auth`` / ``SigV4QueryAuth``) over an
  ``AWSRequest`` rebuilt from the WSGI environ with the signed headers only, and compared
  in constant time.

A refusal is :class:`~.errors.AuthFailed` with a *kind* (``missing``, ``incomplete``,
``unknown_key``, ``signature``, ``expired``); the server turns it into the code and HTTP
status of the request's protocol (:func:`.errors.auth_error`).
"""

from __future__ import annotations

import configparser
import datetime as dt
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import parse_qsl

from botocore.auth import UNSIGNED_PAYLOAD, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from .errors import AuthFailed

ALGORITHM = "AWS4-HMAC-SHA256"
#: how far a request's time may be from the server's (AWS's window)
MAX_SKEW = 15 * 60
#: the longest X-Amz-Expires of a presigned request (seven days)
MAX_EXPIRES = 7 * 24 * 3600
_TIMESTAMP = "%Y%m%dT%H%M%SZ"
_ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
_ACCESS_KEY_RE = re.compile(r"^[A-Za-z0-9_+=.@-]{3,128}$")
_KEYS = ("aws_access_key_id", "aws_secret_access_key", "account_id")


@dataclass(frozen=True)
class User:
    """One user of the credentials file: its section name, keys and account."""

    name: str
    access_key: str
    secret_key: str
    account_id: str


class CredentialsError(ValueError):
    """The credentials file is unreadable or not as :func:`load_credentials` wants it."""


def load_credentials(path: str) -> dict[str, User]:
    """The users of a shared-credentials file by access key id; CredentialsError (naming
    the file, the section and the key) if it cannot be read or a section is incomplete,
    has an unknown key, a malformed value, or an access key id another section has."""
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise CredentialsError(f"{path}: {exc}") from None
    users: dict[str, User] = {}
    for section in parser.sections():
        values = dict(parser.items(section))
        where = f"{path}: [{section}]"
        unknown = sorted(set(values) - set(_KEYS))
        if unknown:
            raise CredentialsError(f"{where}: unknown key {unknown[0]!r} (a user has "
                                   f"{', '.join(_KEYS)})")
        for key in _KEYS:
            if not values.get(key, "").strip():
                raise CredentialsError(f"{where}: {key} is missing")
        access, secret, account = (values[k].strip() for k in _KEYS)
        if not _ACCESS_KEY_RE.match(access):
            raise CredentialsError(f"{where}: aws_access_key_id {access!r} is not an access "
                                   f"key id (3-128 letters, digits or _+=.@-)")
        if not _ACCOUNT_RE.match(account):
            raise CredentialsError(f"{where}: account_id {account!r} is not 12 digits")
        if access in users:
            raise CredentialsError(f"{where}: aws_access_key_id {access} is also the key of "
                                   f"[{users[access].name}]")
        users[access] = User(section, access, secret, account)
    if not users:
        raise CredentialsError(f"{path}: no users (one [section] per user with "
                               f"{', '.join(_KEYS)})")
    return users


class _ListedHeaders:
    """Signs exactly the headers the client listed (botocore itself leaves out a few,
    user-agent among them, that other SDKs do sign)."""

    _signed: list[str]

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._signed:
            headers[name] = request.headers.get(name, "")
        return headers


class _SignedHeadersAuth(_ListedHeaders, SigV4Auth):
    """botocore's header signer over the listed headers."""

    def __init__(self, credentials: Credentials, service: str, region: str,
                 signed: list[str]) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed


class _SignedHeadersQueryAuth(_ListedHeaders, SigV4QueryAuth):
    """botocore's presigned-URL signer over the listed headers."""

    def __init__(self, credentials: Credentials, service: str, region: str,
                 signed: list[str], expires: int) -> None:
        super().__init__(credentials, service, region, expires=expires)
        self._signed = signed


def _header(environ: Mapping[str, Any], name: str) -> str | None:
    """A request header by its lowercase name, from the WSGI environ."""
    key = name.upper().replace("-", "_")
    if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        key = "HTTP_" + key
    value = environ.get(key)
    return None if value is None else str(value)


def _parse_timestamp(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, _TIMESTAMP).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


class SigV4Verifier:
    """The :class:`~.server.Authenticator` of ``serve --auth sigv4``.

    ``users``: access key id -> :class:`User`; ``regions``: the regions a credential scope
    may name; ``clock``: the wall clock the request time is checked against (never a
    simulated one: clients sign with the real time).
    """

    requires_signature = True

    def __init__(self, users: Mapping[str, User], *, regions: Collection[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.users = dict(users)
        self.regions = frozenset(regions)
        self.clock = clock

    def verify(self, environ: dict[str, Any], service: str, region: str, payload: Any, *,
               unsigned_payload: bool = False) -> str:
        """The account id of the request's signer, or AuthFailed.

        ``service``: the signing name the request must be scoped to (``ec2``, ``ebs``,
        ``kms``...); ``payload``: the body as read (None: none); ``unsigned_payload``: the
        operation may sign ``UNSIGNED-PAYLOAD`` instead of its body (PutSnapshotBlock)."""
        body = bytes(payload) if payload else b""
        query = environ.get("QUERY_STRING") or ""
        pairs = parse_qsl(query, keep_blank_values=True)
        auth = environ.get("HTTP_AUTHORIZATION")
        if environ.get("HTTP_X_AMZ_SECURITY_TOKEN") is not None or \
                any(k == "X-Amz-Security-Token" for k, _ in pairs):
            raise AuthFailed("unknown_key", "Temporary credentials (X-Amz-Security-Token) are "
                             "not issued here: sign with a user's access key")
        presigned = any(k == "X-Amz-Signature" or k == "X-Amz-Algorithm" for k, _ in pairs)
        if auth is not None:
            if presigned:
                raise AuthFailed("incomplete", "Only one auth mechanism allowed; only the "
                                 "X-Amz-Algorithm query parameter or the Authorization header "
                                 "should be specified")
            return self._verify_header(environ, auth, service, region, pairs, body,
                                       unsigned_payload)
        if presigned:
            return self._verify_query(environ, service, region, pairs, body, unsigned_payload)
        raise AuthFailed("missing", "The request must contain a Signature Version 4 signature "
                         "(an Authorization header or X-Amz-Signature query parameter) made "
                         "with a registered access key id")

    # the two forms

    def _verify_header(self, environ: dict[str, Any], auth: str, service: str, region: str,
                       pairs: list[tuple[str, str]], body: bytes, unsigned_ok: bool) -> str:
        algorithm, _, rest = auth.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise AuthFailed("incomplete", f"Unsupported Authorization algorithm {algorithm!r}: "
                             f"only {ALGORITHM} (Signature Version 4) is accepted")
        fields: dict[str, str] = {}
        for part in rest.split(","):
            key, eq, value = part.strip().partition("=")
            if not eq or key not in ("Credential", "SignedHeaders", "Signature") \
                    or key in fields:
                raise AuthFailed("incomplete", f"Authorization header has an unexpected or "
                                 f"repeated part {part.strip()!r}: it is '{ALGORITHM} "
                                 f"Credential=..., SignedHeaders=..., Signature=...'")
            fields[key] = value.strip()
        for name in ("Credential", "SignedHeaders", "Signature"):
            if not fields.get(name):
                raise AuthFailed("incomplete", f"Authorization header requires '{name}' "
                                 f"parameter. Authorization={auth}")
        signed = fields["SignedHeaders"].split(";")
        amz_date = _header(environ, "x-amz-date")
        if amz_date is not None:
            if "x-amz-date" not in signed:
                raise AuthFailed("incomplete", "The x-amz-date header must be a signed header")
            when = _parse_timestamp(amz_date)
            if when is None:
                raise AuthFailed("incomplete", f"X-Amz-Date {amz_date!r} is not of the form "
                                 f"YYYYMMDD'T'HHMMSS'Z'")
        else:
            date = _header(environ, "date")
            if date is None:
                raise AuthFailed("incomplete", "Authorization header requires existence of "
                                 "either a 'X-Amz-Date' or a 'Date' header.")
            if "date" not in signed:
                raise AuthFailed("incomplete", "The Date header must be a signed header")
            try:
                when = parsedate_to_datetime(date).astimezone(dt.timezone.utc)
            except (TypeError, ValueError):
                raise AuthFailed("incomplete", f"Date header {date!r} is not an HTTP date") \
                    from None
        user, scope_region, scope_service = self._scope(fields["Credential"], when, service,
                                                        region)
        stamp = when.strftime(_TIMESTAMP)
        self._check_skew(when)
        if "host" not in signed:
            raise AuthFailed("incomplete", "'Host' must be a 'SignedHeader' in the AWS "
                             "Authorization.")
        content_hash = _header(environ, "x-amz-content-sha256")
        if "x-amz-content-sha256" in signed and content_hash is not None:
            self._check_content_hash(content_hash, body, unsigned_ok)
        request = self._request(environ, signed, body)
        # a list keeps repeated names (botocore's canonical query takes pairs or a mapping)
        request.params = cast("dict[str, Any]", pairs)
        request.context["timestamp"] = stamp
        signer = _SignedHeadersAuth(Credentials(user.access_key, user.secret_key),
                                    scope_service, scope_region, signed)
        self._compare(signer, request, fields["Signature"])
        return user.account_id

    def _verify_query(self, environ: dict[str, Any], service: str, region: str,
                      pairs: list[tuple[str, str]], body: bytes, unsigned_ok: bool) -> str:
        params = dict(pairs)
        auth_names = [k for k, _ in pairs if k.startswith("X-Amz-")]
        if len(auth_names) != len(set(auth_names)):
            raise AuthFailed("incomplete", "A presigned request names an X-Amz-* query "
                             "parameter twice")
        for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
                     "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Expires"):
            if not params.get(name):
                raise AuthFailed("incomplete", f"A presigned request requires the {name} "
                                 f"query parameter")
        if params["X-Amz-Algorithm"] != ALGORITHM:
            raise AuthFailed("incomplete", f"Unsupported X-Amz-Algorithm "
                             f"{params['X-Amz-Algorithm']!r}: only {ALGORITHM}")
        when = _parse_timestamp(params["X-Amz-Date"])
        if when is None:
            raise AuthFailed("incomplete", f"X-Amz-Date {params['X-Amz-Date']!r} is not of the "
                             f"form YYYYMMDD'T'HHMMSS'Z'")
        expires_text = params["X-Amz-Expires"]
        if not (expires_text.isascii() and expires_text.isdigit()) \
                or not 1 <= int(expires_text) <= MAX_EXPIRES:
            raise AuthFailed("incomplete", f"X-Amz-Expires must be a number of seconds from 1 "
                             f"to {MAX_EXPIRES} (seven days), not {expires_text!r}")
        expires = int(expires_text)
        signed = params["X-Amz-SignedHeaders"].split(";")
        user, scope_region, scope_service = self._scope(params["X-Amz-Credential"], when,
                                                        service, region)
        now = self.clock()
        start = when.timestamp()
        if now > start + expires:
            raise AuthFailed("expired", f"Request has expired: signed at "
                             f"{params['X-Amz-Date']} for {expires} seconds")
        if start - now > MAX_SKEW:
            raise AuthFailed("expired", f"Request is not yet valid: signed for "
                             f"{params['X-Amz-Date']}, more than 15 minutes ahead of the "
                             f"server's clock")
        if "host" not in signed:
            raise AuthFailed("incomplete", "'Host' must be a 'SignedHeader' in the AWS "
                             "Authorization.")
        if body and not unsigned_ok:
            raise AuthFailed("signature", "A presigned request covers no body: send the "
                             "parameters in the query string")
        request = self._request(environ, signed, b"")
        request.params = cast("dict[str, Any]", [(k, v) for k, v in pairs
                                                 if k != "X-Amz-Signature"])
        request.context["timestamp"] = params["X-Amz-Date"]
        signer = _SignedHeadersQueryAuth(Credentials(user.access_key, user.secret_key),
                                         scope_service, scope_region, signed, expires)
        self._compare(signer, request, params["X-Amz-Signature"])
        return user.account_id

    # the checks both forms make

    def _scope(self, credential: str, when: dt.datetime, service: str, acting: str
               ) -> tuple[User, str, str]:
        """The user and the scope's region and service, checked: AuthFailed when the key is
        unknown or the scope is not the request's date, a known region, ``service``, and
        the region the server will act in (``acting``)."""
        parts = credential.split("/")
        if len(parts) != 5:
            raise AuthFailed("incomplete", f"Credential {credential!r} is not "
                             f"KEY/YYYYMMDD/REGION/SERVICE/aws4_request")
        access, day, region, scope_service, terminator = parts
        user = self.users.get(access)
        if user is None:
            raise AuthFailed("unknown_key", f"The access key id {access!r} is not registered")
        if terminator != "aws4_request":
            raise AuthFailed("signature", f"Credential should be scoped with a valid "
                             f"terminator: 'aws4_request', not '{terminator}'.")
        if day != when.strftime("%Y%m%d"):
            raise AuthFailed("signature", f"Date in Credential scope does not match YYYYMMDD "
                             f"from ISO-8601 version of date from HTTP: '{day}' != "
                             f"'{when.strftime('%Y%m%d')}'")
        if region not in self.regions:
            raise AuthFailed("signature", f"Credential should be scoped to a valid region, "
                             f"not '{region}'.")
        if region != acting:
            raise AuthFailed("signature", f"Credential should be scoped to the region the "
                             f"request acts in ('{acting}'), not '{region}'.")
        if scope_service != service:
            raise AuthFailed("signature", f"Credential should be scoped to correct service: "
                             f"'{service}'.")
        return user, region, scope_service

    def _check_skew(self, when: dt.datetime) -> None:
        now = self.clock()
        if abs(now - when.timestamp()) > MAX_SKEW:
            server = time.strftime(_TIMESTAMP, time.gmtime(now))
            early = time.strftime(_TIMESTAMP, time.gmtime(now - MAX_SKEW))
            late = time.strftime(_TIMESTAMP, time.gmtime(now + MAX_SKEW))
            signed = when.strftime(_TIMESTAMP)
            if when.timestamp() < now:
                raise AuthFailed("expired", f"Signature expired: {signed} is now earlier than "
                                 f"{early} ({server} - 15 min.)")
            raise AuthFailed("expired", f"Signature not yet current: {signed} is still later "
                             f"than {late} ({server} + 15 min.)")

    @staticmethod
    def _check_content_hash(value: str, body: bytes, unsigned_ok: bool) -> None:
        if value == UNSIGNED_PAYLOAD:
            if not unsigned_ok:
                raise AuthFailed("signature", "UNSIGNED-PAYLOAD is accepted for "
                                 "PutSnapshotBlock only: sign this request's body")
            return
        if value.startswith("STREAMING-"):
            raise AuthFailed("incomplete", f"x-amz-content-sha256 {value!r}: streaming "
                             f"(chunk-signed) payloads are not supported")
        if not hmac.compare_digest(value.lower().encode(), hashlib.sha256(body).hexdigest().encode()):
            raise AuthFailed("signature", "The provided x-amz-content-sha256 header does not "
                             "match what was computed for the request body")

    @staticmethod
    def _request(environ: dict[str, Any], signed: list[str], body: bytes) -> AWSRequest:
        """The request as the client signed it: its method, raw path and signed headers."""
        headers: dict[str, str] = {}
        for name in signed:
            value = _header(environ, name)
            if value is None:
                raise AuthFailed("signature", f"The signed header {name!r} is not in the "
                                 f"request")
            headers[name] = value
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO") \
            or "/"
        path = raw.split("?", 1)[0]
        if "://" in path:  # an absolute-form request line
            path = "/" + path.split("://", 1)[1].partition("/")[2]
        request = AWSRequest(method=environ.get("REQUEST_METHOD", "GET"),
                             url=f"http://{headers.get('host', 'localhost')}{path}",
                             headers=headers, data=body)
        request.context["payload_signing_enabled"] = True
        return request

    @staticmethod
    def _compare(signer: SigV4Auth, request: AWSRequest, given: str) -> None:
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
            raise AuthFailed("signature", "The request signature we calculated does not match "
                             "the signature you provided. Check your AWS Secret Access Key and "
                             "signing method. Consult the service documentation for details.")
