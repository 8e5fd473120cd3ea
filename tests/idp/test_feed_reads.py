"""The feed's reading of one list (feed.py), over pages served as Keycloak serves them
(ascending, `dateFrom` inclusive, `first`/`max` paging), without Keycloak or Redis."""

from __future__ import annotations

import time
from typing import Any

from kong_plugin_kcauth.config import Config
from kong_plugin_kcauth.idp.events import ADMIN_EVENTS, LOGIN_EVENTS
from kong_plugin_kcauth.idp.feed import MAX_PAGES, PAGE, Feed
from kong_plugin_kcauth.revocation.store import RevocationStore

ISSUER = "https://sso.example.com/realms/acme"


class Pages(Feed):
    """A feed whose Keycloak is a list of admin events."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        config = Config.from_kong({"issuer": ISSUER, "audiences": ["api"], "revocation_feed": {
            "client_id": "kcauth-feed", "client_secret": "s", "interval": 1}})
        super().__init__(config, RevocationStore(ISSUER, None), None)
        self.events = events
        self.asked: list[tuple[int, int]] = []

    def _page(self, kind: str, since_ms: int, first: int) -> list[Any]:
        if kind == LOGIN_EVENTS:
            return []
        assert kind == ADMIN_EVENTS
        self.asked.append((since_ms, first))
        matching = [e for e in self.events if e["time"] >= since_ms]
        return matching[first:first + PAGE]


def disabled(n: int, t: int) -> dict[str, Any]:
    return {"id": f"e{n}", "time": t, "operationType": "DELETE", "resourceType": "USER", "resourcePath": f"users/u{n}"}


def test_a_backlog_of_several_pages_is_read_whole() -> None:
    now = int(time.time() * 1000)
    events = [disabled(n, now - 60_000 + n * 10) for n in range(PAGE * 3 + 7)]  # 10 ms apart: one query's pages
    feed = Pages(events)
    feed.step()
    store = feed.store
    revoked = [n for n in range(len(events))
               if store.revoked(store.subject({"sub": f"u{n}", "iat": now / 1000 - 120}), None)]
    assert revoked == list(range(len(events))), f"{len(events) - len(revoked)} events skipped"
    assert len(feed.asked) == 4 and len({since for since, _ in feed.asked}) == 1, feed.asked
    assert len(feed.asked) <= MAX_PAGES
