from __future__ import annotations

import gc

from kong_plugin_kcauth.decision.cache import ExpiringCache, Registry, token_key


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_at_their_deadline() -> None:
    clock = Clock()
    cache: ExpiringCache[str] = ExpiringCache(10, clock)
    cache.put("a", "A", deadline=105)
    assert cache.get("a") == "A"
    clock.now = 105
    assert cache.get("a") is None
    cache.put("b", "B", deadline=100)
    assert cache.get("b") is None, "already expired entries are not stored"


def test_capacity_is_bounded_oldest_first() -> None:
    cache: ExpiringCache[int] = ExpiringCache(3, Clock())
    for i in range(10):
        cache.put(i, i, deadline=1e9)
    assert len(cache) == 3
    assert [cache.get(i) for i in range(10)] == [None] * 7 + [7, 8, 9]


def test_zero_capacity_disables() -> None:
    cache: ExpiringCache[int] = ExpiringCache(0, Clock())
    cache.put("a", 1, deadline=1e9)
    assert cache.get("a") is None


def test_token_key_is_a_digest() -> None:
    key = token_key("secret.token.value")
    assert isinstance(key, bytes) and len(key) == 32 and b"secret" not in key


def test_registry_shares_and_releases() -> None:
    class Obj:
        pass

    reg: Registry[Obj] = Registry()
    a = reg.get("k", Obj)
    assert reg.get("k", Obj) is a
    del a
    gc.collect()
    assert len(reg) == 0, "objects no instance uses any more are released"
