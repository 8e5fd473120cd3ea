"""Every rule of the config reference that involves a referenceable field, with a Kong vault
reference in it: Kong skips that field's own validators and every entity check naming it
(kong/db/schema/init.lua `validate_field`, `run_entity_check`), resolves it for the plugin ("" when
it cannot) and lists it under `$refs` (the harness does all of it, tests/harness/kong.py
`vault_get`). Each row is either refused by Kong's validation, or starts and works at instance
start: the credential used when it can be, and when it cannot, the one part that needs it off
(introspection answers 503, Redis or the feed unused), named in Kong's error log with the
reference and the plugin, never a 500 on every request of the route."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import API, CLIENT_SECRET, bearer, guard_config, sensitive_config, started_idp
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong, PluginEntity
from tests.services.redis import PLUGIN_SECRET, RedisServer

PEM = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@dataclass
class World:
    kong: Kong
    idp: LocalIdP
    minter: Minter
    redis: RedisServer
    prefix: str  # this row's Redis key prefix
    other: LocalIdP  # a second issuer, for `issuers` entries

    def ref(self, value: str | None) -> str:
        """A vault reference resolving to `value` (None: to nothing, an unset variable)."""
        name = "kcauth-t-" + uuid.uuid4().hex[:12]
        if value is not None:
            self.kong.env[name.replace("-", "_").upper()] = value
        return "{vault://env/" + name + "}"

    def redis_config(self, **extra: Any) -> dict[str, Any]:
        return self.redis.plugin_config(prefix=self.prefix, **extra)

    def redis_keys(self) -> list[bytes]:
        client = self.redis.client(socket_timeout=5)
        try:
            return list(client.scan_iter(self.prefix + "*"))
        finally:
            client.close()

    def logged(self, *parts: str) -> bool:
        return any(line.startswith("[err]") and all(p in line for p in parts) for line in self.kong.error_log)


def introspected_with(world: World, entity: PluginEntity) -> dict[str, str]:
    before = world.idp.introspection_requests
    res = world.kong.request(entity, bearer(world.minter.token()))
    assert res.status == 200, (res.status, world.kong.error_log[-3:])
    assert world.idp.introspection_requests == before + 1
    return world.idp.introspection_forms[-1]


def basic(world: World, entity: PluginEntity) -> None:
    form = introspected_with(world, entity)
    assert "client_assertion" not in form and "client_secret" not in form  # Basic auth (the IdP checked it)


def signed(world: World, entity: PluginEntity) -> None:
    before = world.idp.introspection_requests
    res = world.kong.request(entity, bearer(world.minter.token()))
    assert res.status == 503 and not res.proxied  # the local IdP takes client_secret_basic only
    assert world.idp.introspection_requests == before + 1
    form = world.idp.introspection_forms[-1]
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def introspection_off(field: str, reference: bool = True) -> Callable[[World, PluginEntity], None]:
    def check(world: World, entity: PluginEntity) -> None:
        before = world.idp.introspection_requests
        res = world.kong.request(entity, bearer(world.minter.token()))
        assert res.status == 503 and not res.proxied and res.headers.get("Retry-After"), res
        assert world.idp.introspection_requests == before, "no call without usable credentials"
        assert world.logged(f"config.{field}", "vault reference" if reference else "", entity.id), \
            world.kong.error_log[-3:]
    return check


def with_redis(world: World, entity: PluginEntity) -> None:
    assert world.kong.request(entity, bearer(world.minter.token())).status == 200
    assert world.redis_keys(), "the introspection answer was shared through Redis"


def redis_off(field: str) -> Callable[[World, PluginEntity], None]:
    def check(world: World, entity: PluginEntity) -> None:
        assert world.kong.request(entity, bearer(world.minter.token())).status == 200
        assert world.redis_keys() == [], "Redis is not used"
        assert world.logged(f"config.redis.{field}", "Redis is not used", entity.id), world.kong.error_log[-3:]
    return check


def feed_off(world: World, entity: PluginEntity) -> None:
    assert world.kong.request(entity, bearer(world.minter.token())).status == 200
    assert world.logged("config.revocation_feed.client_secret", "the revocation feed is off", entity.id)


def signals_off(world: World, entity: PluginEntity) -> None:
    assert world.kong.request(entity, bearer(world.minter.token())).status == 200
    assert world.logged("config.ssf.client_secret", "the Shared Signals receiver is off", entity.id)


def entry_signals_off(world: World, entity: PluginEntity) -> None:
    assert world.kong.request(entity, bearer(world.minter.token())).status == 200
    assert world.logged("config.issuers.1.ssf.client_secret", "the Shared Signals receiver is off", entity.id)


def other_issuer_off(world: World, entity: PluginEntity) -> None:
    """An `issuers` entry whose own secret is unusable: its introspection is off, and the
    plugin-level secret is never sent for it; the plugin-level issuer's works."""
    other = Minter(world.other.issuer, world.other.primary)  # type: ignore[attr-defined]
    res = world.kong.request(entity, bearer(other.token()))
    assert res.status == 503 and world.other.introspection_requests == 0, "never the plugin-level secret"
    basic(world, entity)
    assert world.logged("config.issuers.1.client_secret", "vault reference", entity.id)


# (rule, the config's changes given a World, expected: "refused" or a check)
Row = tuple[str, Callable[[World], dict[str, Any]], Any]
ROWS: list[Row] = [
    ("introspect: at least one of client_secret, client_private_key; client_secret resolved",
     lambda w: {"client_secret": w.ref(CLIENT_SECRET)}, basic),
    ("introspect: at least one of ...; client_secret unresolved",
     lambda w: {"client_secret": w.ref(None)}, introspection_off("client_secret")),
    ("introspect: at least one of ...; only client_private_key, resolved (method left at basic)",
     lambda w: {"client_secret": None, "client_private_key": w.ref(PEM)}, signed),
    ("introspect: at least one of ...; only client_private_key, unresolved",
     lambda w: {"client_secret": None, "client_private_key": w.ref(None)}, introspection_off("client_private_key")),
    ("private_key_jwt needs client_private_key; resolved",
     lambda w: {"client_auth_method": "private_key_jwt", "client_secret": None, "client_private_key": w.ref(PEM)},
     signed),
    ("private_key_jwt needs client_private_key; resolved to no PEM (Kong's match skipped)",
     lambda w: {"client_auth_method": "private_key_jwt", "client_secret": None,
                "client_private_key": w.ref("not a key")}, introspection_off("client_private_key")),
    ("private_key_jwt needs client_private_key; literal absent",
     lambda w: {"client_auth_method": "private_key_jwt", "client_secret": w.ref(CLIENT_SECRET)}, "refused"),
    ("client_private_key only with private_key_jwt; a reference beside basic and a secret: unused",
     lambda w: {"client_private_key": w.ref(PEM)}, basic),
    ("client_private_key only with private_key_jwt; an unusable reference beside basic: unused",
     lambda w: {"client_private_key": w.ref("garbage")}, basic),
    ("client_private_key only with private_key_jwt; a literal key beside basic",
     lambda w: {"client_private_key": PEM}, "refused"),
    ("client_secret_post needs client_secret; unresolved",
     lambda w: {"client_auth_method": "client_secret_post", "client_secret": w.ref(None)},
     introspection_off("client_secret")),
    ("redis.host needs redis.secret; resolved",
     lambda w: {"redis": w.redis_config(secret=w.ref(PLUGIN_SECRET))}, with_redis),
    ("redis.secret at least 32 characters; resolved to fewer (Kong's len_min skipped)",
     lambda w: {"redis": w.redis_config(secret=w.ref("short"))}, redis_off("secret")),
    ("redis.host needs redis.secret; unresolved",
     lambda w: {"redis": w.redis_config(secret=w.ref(None))}, redis_off("secret")),
    ("redis.password; unresolved",
     lambda w: {"redis": w.redis_config(password=w.ref(None))}, redis_off("password")),
    ("revocation_feed.client_id needs revocation_feed.client_secret; unresolved",
     lambda w: {"introspect": False, "revocation_feed": {"client_id": "kcauth-feed", "client_secret": w.ref(None)}},
     feed_off),
    ("ssf.client_id needs ssf.client_secret; unresolved",
     lambda w: {"introspect": False, "ssf": {"client_id": "kcauth-ssf", "client_secret": w.ref(None)}},
     signals_off),
    ("issuers[].ssf.client_id needs its client_secret; unresolved",
     lambda w: {"introspect": False, "issuers": [{"issuer": w.other.issuer.replace("/realms/", "/realms/x-"),
                                                   "ssf": {"client_id": "kcauth-ssf", "client_secret": w.ref(None)}}]},
     entry_signals_off),
    ("issuers[].client_secret; unresolved: that issuer only, never the plugin-level secret",
     lambda w: {"issuers": [{"issuer": w.other.issuer, "client_secret": w.ref(None)}]}, other_issuer_off),
]


@pytest.mark.parametrize(("rule", "change", "expected"), ROWS, ids=[r[0][:70] for r in ROWS])
def test_each_rule_with_a_reference_is_refused_by_kong_or_works_at_instance_start(
        kong: Kong, idp: LocalIdP, minter: Minter, redis_server: RedisServer, rule: str,
        change: Callable[[World], dict[str, Any]], expected: Any) -> None:
    if not redis_server.running:
        redis_server.restart()
    other = started_idp()
    try:
        world = World(kong, idp, minter, redis_server, f"kcauth-vault-{uuid.uuid4().hex[:8]}:", other)
        config = {**sensitive_config(idp, introspection_breaker_seconds=0), **change(world)}
        if expected == "refused":
            with pytest.raises(ValueError):
                kong.plugin(config)
            return
        entity = kong.plugin(config)  # Kong accepts it
        expected(world, entity)
        res = kong.request(entity, bearer(minter.token()))
        assert res.status != 500 and not res.errors, "the instance started"
    finally:
        other.stop()


def test_a_rotated_secret_needs_no_new_entity(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    """Kong resolves references when it starts an instance: a new value reaches a new instance
    (Kong's restart), under the same stored config."""
    world = World(kong, idp, minter, None, "", idp)  # type: ignore[arg-type]
    reference = world.ref("wrong")
    entity = kong.plugin({**guard_config(idp), "introspect": True, "client_id": API, "client_secret": reference,
                          "introspection_breaker_seconds": 0})
    assert kong.request(entity, bearer(minter.token())).status == 503
    kong.env[reference[len("{vault://env/"):-1].replace("-", "_").upper()] = CLIENT_SECRET
    kong._reset_instances()  # a restart: every instance starts again
    assert kong.request(entity, bearer(minter.token())).status == 200
