"""ClientToken records, kept in the store (the rules themselves: ``ebsengine/rules/tokens.py``).

=====================  ==========================  ============================================
namespace              key                          value
=====================  ==========================  ============================================
``aws.token``          ``<where>|<action>|<tok>``   ClientToken record (``rules/tokens.py``);
                                                    ``<where>``: the region, ``region@account``
                                                    for another account than open mode's
``aws.token-of``       resource id                  ``[token key, ...]``: the tokens that made it
``aws.token-expiry``   ``<expiry>|<token key>``     resource id; the tokens in order of expiry
=====================  ==========================  ============================================

A token is written in the unit that makes its resource and dropped in the unit that deletes
it (:meth:`TokenStore.drop`), so a token never outlives its resource; expired ones are swept
a few at a time as new ones are written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ebsengine.engine import Engine, Transaction
from ebsengine.rules import tokens as token_rules

from .scope import DEFAULT_ACCOUNT, Scope

NS_TOKEN = "aws.token"
NS_TOKEN_OF = "aws.token-of"
NS_TOKEN_EXPIRY = "aws.token-expiry"
#: expired tokens removed per token written (more expire only as fast as tokens are made)
TOKEN_SWEEP = 64


class TokenStore:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.clock = clock

    def previous(self, scope: Scope, action: str, token: str, digest: str,
                 tx: Transaction | None = None) -> str | None:
        """The id of the resource an earlier request of the scope's account and region with
        this token made, or None when this request is new. Raises IdempotencyMismatch (token
        reused with other parameters)."""
        key = _key(scope, action, token)
        rec = self.engine.service_get(NS_TOKEN, key, tx=tx)
        return token_rules.previous(rec, digest, token, self.clock())

    def put(self, tx: Transaction, scope: Scope, action: str, token: str, digest: str,
            resource_id: str) -> None:
        """Record a token in the unit that makes its resource (and sweep expired ones)."""
        key = _key(scope, action, token)
        old = self.engine.service_get(NS_TOKEN, key, tx=tx)
        if old is not None:  # expired, or its resource is gone: it names the new one now
            self._drop(tx, key, old)
        rec = token_rules.token_record(digest, resource_id, self.clock())
        self.engine.service_put(NS_TOKEN, key, rec, tx=tx)
        self.engine.service_put(NS_TOKEN_EXPIRY, token_rules.expiry_key(rec, key), resource_id,
                                tx=tx)
        mine = self.engine.service_get(NS_TOKEN_OF, resource_id, tx=tx) or []
        self.engine.service_put(NS_TOKEN_OF, resource_id, [*mine, key], tx=tx)
        self.sweep(tx)

    def drop(self, tx: Transaction, resource_id: str) -> None:
        """Forget the tokens that made a resource, in the unit that deletes it."""
        for key in self.engine.service_get(NS_TOKEN_OF, resource_id, tx=tx) or []:
            rec = self.engine.service_get(NS_TOKEN, key, tx=tx)
            if rec is not None and rec.get("id") == resource_id:
                self._drop(tx, key, rec)
        self.engine.service_put(NS_TOKEN_OF, resource_id, None, tx=tx)

    def sweep(self, tx: Transaction, limit: int = TOKEN_SWEEP) -> int:
        """Delete up to ``limit`` tokens past their TTL, oldest first; returns how many."""
        now = self.clock()
        n = 0
        for ekey, _ in self.engine.service_items(NS_TOKEN_EXPIRY, limit=limit, tx=tx):
            if not token_rules.due(ekey, now):
                break
            key = ekey.split("|", 1)[1]
            rec = self.engine.service_get(NS_TOKEN, key, tx=tx)
            if rec is not None and token_rules.expiry_key(rec, key) == ekey:
                self._drop(tx, key, rec)
            else:
                self.engine.service_put(NS_TOKEN_EXPIRY, ekey, None, tx=tx)
            n += 1
        return n

    def _drop(self, tx: Transaction, key: str, rec: dict[str, Any]) -> None:
        self.engine.service_put(NS_TOKEN, key, None, tx=tx)
        self.engine.service_put(NS_TOKEN_EXPIRY, token_rules.expiry_key(rec, key), None, tx=tx)
        rid = str(rec.get("id"))
        mine = [k for k in self.engine.service_get(NS_TOKEN_OF, rid, tx=tx) or [] if k != key]
        self.engine.service_put(NS_TOKEN_OF, rid, mine or None, tx=tx)


def _key(scope: Scope, action: str, token: str) -> str:
    """A token's key: tokens are the account's own (two accounts may use one token)."""
    where = scope.region if scope.account_id == DEFAULT_ACCOUNT \
        else f"{scope.region}@{scope.account_id}"
    return token_rules.token_key(where, action, token)
