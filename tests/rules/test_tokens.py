"""ClientToken rules (ebsengine.rules.tokens): pure functions, no store."""

from __future__ import annotations

import pytest

from ebsengine.errors import IdempotencyMismatch, InvalidParameter
from ebsengine.rules import tokens as T


def test_check_client_token() -> None:
    assert T.check_client_token(None) is None and T.check_client_token("") is None
    assert T.check_client_token("a" * 64) == "a" * 64
    assert T.check_client_token("b" * 255, T.EBS_DIRECT_TOKEN_MAX) == "b" * 255
    for bad in ("a" * 65, "with space", "tab\t", "é", 7):
        with pytest.raises(InvalidParameter):
            T.check_client_token(bad)


def test_digest_ignores_token_and_dry_run_only() -> None:
    base = {"Size": 1, "AvailabilityZone": "us-east-1a"}
    d = T.request_digest(base)
    assert T.request_digest({**base, "ClientToken": "x", "DryRun": False}) == d
    assert T.request_digest({**base, "Size": 2}) != d


def test_previous_matches_expires_and_mismatches() -> None:
    rec = T.token_record("d1", "vol-0123456789abcdef0", now=1000.0)
    assert T.previous(None, "d1", "t", 1000.0) is None
    assert T.previous(rec, "d1", "t", 1000.0 + T.TOKEN_TTL - 1) == "vol-0123456789abcdef0"
    with pytest.raises(IdempotencyMismatch):
        T.previous(rec, "d2", "t", 1001.0)
    assert T.previous(rec, "d2", "t", 1000.0 + T.TOKEN_TTL) is None  # expired: a new request


def test_expiry_keys_sort_by_time() -> None:
    a = T.expiry_key(T.token_record("d", "x", 5.0), "r|A|z")
    b = T.expiry_key(T.token_record("d", "y", 100000.0), "r|A|a")
    assert a < b
    assert not T.due(a, 4.0) and T.due(a, 5.0 + T.TOKEN_TTL)
