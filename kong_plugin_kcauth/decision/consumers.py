"""Kong consumer mapping: which Kong consumer a token stands for, so per-consumer plugins
(rate limiting, logging) work. Optional; off unless `consumer_claim` or `anonymous` is set.

The claim's value names a consumer by username or id (`kong.client.load_consumer`); the consumer
is then authenticated with `kong.client.authenticate` and a credential whose `id` is a UUIDv5 of
"<issuer>#<sub>" (stable per user and realm, shown as `authenticated_entity.id` in Kong's logs).
Lookups are remembered for `CONSUMER_CACHE_SECONDS`: consumer changes made through the Admin API
apply within that time.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..config import Config
from ..tokens.claims import Claims, claim_at, parse_claim_path
from .cache import ExpiringCache

CONSUMER_CACHE_SECONDS = 60
_NOT_FOUND: dict[str, Any] = {}


class ConsumerMap:
    def __init__(self, claim: str | None, match: str, anonymous: str | None) -> None:
        self.path = parse_claim_path(claim) if claim else None
        self.by_username = match == "username"
        self.anonymous = anonymous
        self._found: ExpiringCache[dict[str, Any]] = ExpiringCache(10000)

    @classmethod
    def from_config(cls, config: Config) -> ConsumerMap | None:
        """The consumer mapping of a config, None when it maps no consumer."""
        if not (config.consumer_claim or config.anonymous):
            return None
        return cls(config.consumer_claim, config.consumer_match, config.anonymous)

    def name_in(self, claims: Claims) -> str | None:
        """The claim value naming the consumer (strings and numbers only)."""
        if self.path is None:
            return None
        value = claim_at(claims, self.path)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None
        return str(value)

    def find(self, kong: Any, name: str, by_username: bool | None = None) -> dict[str, Any] | None:
        """The consumer named `name`: one PDK round trip unless remembered."""
        by_username = self.by_username if by_username is None else by_username
        key = (name, by_username)
        consumer = self._found.get(key)
        if consumer is None:
            consumer = kong.client.load_consumer(name, by_username) or _NOT_FOUND
            if not isinstance(consumer, dict):
                consumer = _NOT_FOUND
            self._found.put(key, consumer, time.time() + CONSUMER_CACHE_SECONDS)
        return consumer or None

    def find_anonymous(self, kong: Any) -> dict[str, Any] | None:
        assert self.anonymous is not None
        return self.find(kong, self.anonymous, by_username=True)  # an id is tried first anyway


def credential_for(issuer: str, claims: Claims) -> dict[str, str] | None:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        return None
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{issuer}#{sub}"))}
