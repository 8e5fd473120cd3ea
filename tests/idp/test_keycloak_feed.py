"""The revocation feed against the real Keycloak: every action of tests/keycloak/actions.py,
enforced by two plugin server processes that share a real Redis through the feed alone (the
realm's back-channel logout URL points at a closed port here, so Keycloak's pushes go nowhere),
with one read of the events per interval for the pair and no introspection; a logout pushed while
the plugin server is down; a restarted reader that loses nothing and records nothing twice; and
Keycloak failing under the feed without a valid token refused. Every call to Keycloak goes
through a counting proxy (`provider_url`)."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import bearer, free_port, guard_config, own_gateway, receiver_config
from tests.harness.gateway import EchoUpstream, Gateway, Route
from tests.harness.kong import Kong, rss_mb
from tests.harness.proxy import CountingProxy
from tests.keycloak.actions import ACTIONS, PUSHED, REALM_WIDE, Victim, forget, new_victim, undo
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, login
from tests.keycloak.server import KeycloakServer
from tests.services.redis import RedisServer

pytestmark = pytest.mark.keycloak

INTERVAL = 1
FEED = {"client_id": "kcauth-feed", "client_secret": "kcauth-feed-secret", "interval": INTERVAL, "role_changes": True}
EVENTS, ADMIN_EVENTS = f"/admin/realms/{REALM}/events", f"/admin/realms/{REALM}/admin-events"
INTROSPECT = "/token/introspect"


def feed_guard(keycloak: KeycloakServer, proxy: CountingProxy, redis: dict[str, object] | None = None,
               feed: dict[str, object] | None = None, **config: object) -> dict[str, object]:
    """A plain guard of the realm with the feed, every Keycloak call through `proxy`."""
    if redis:
        config["redis"] = redis
    return guard_config(keycloak.issuer(REALM), provider_url=proxy.url, revocation_feed={**FEED, **(feed or {})},
                        **config)


def refused_within(gateways: list[tuple[Kong, object]], token: str, seconds: float) -> float:
    """Seconds until every gateway refuses `token` (fails past `seconds`)."""
    started = time.monotonic()
    while True:
        statuses = [kong.request(entity, bearer(token)).status for kong, entity in gateways]  # type: ignore[arg-type]
        if all(s == 401 for s in statuses):
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, f"still {statuses} after {seconds} s"
        time.sleep(0.05)


def passes(gateways: list[tuple[Kong, object]], token: str) -> bool:
    return all(kong.request(entity, bearer(token)).status == 200 for kong, entity in gateways)  # type: ignore[arg-type]


@pytest.fixture
def proxy(keycloak: KeycloakServer) -> Iterator[CountingProxy]:
    with CountingProxy(keycloak.base_url, fault_path_suffix="events", hang_seconds=10) as p:
        yield p


@pytest.fixture
def shared_redis(redis_server: RedisServer) -> dict[str, object]:
    if not redis_server.running:
        redis_server.restart()
    return redis_server.plugin_config()


def test_the_feed_alone_enforces_every_action_on_two_processes(
        keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy,
        shared_redis: dict[str, object]) -> None:
    config = feed_guard(keycloak, proxy, shared_redis)
    with own_gateway() as here, own_gateway() as there:
        gateways = [(here, here.plugin(config)), (there, there.plugin(config))]
        bystander = new_victim(kc_admin, "bystander")
        victims: dict[str, Victim] = {}
        try:
            assert passes(gateways, bystander.token)  # both feeds start with their first instance
            time.sleep(INTERVAL)  # past the first reads (from `revocation_ttl` back: they may page)
            started, reads, admin_reads = time.monotonic(), proxy.count(EVENTS), proxy.count(ADMIN_EVENTS)
            taken: dict[str, float] = {}
            # Each user's action in turn, then every token watched at once; the realm-wide ones
            # (which revoke every token) alone, after.
            for batch in ([a for a in ACTIONS if a not in REALM_WIDE], *([a] for a in REALM_WIDE)):
                for action in batch:
                    victims[action] = new_victim(kc_admin, "feed")
                    assert passes(gateways, victims[action].token), action
                # The feed spares tokens issued in an event's own second when the user may sign
                # in again at once (idp/events.py): these were issued a second before.
                time.sleep(1.1)
                watch = Watch(gateways)
                try:
                    for action in batch:
                        ACTIONS[action](kc_admin, victims[action])
                        watch.add(action, victims[action].token)
                    taken.update(watch.refused_within(INTERVAL + 1))
                except AssertionError as exc:
                    recent = kc_admin._admin("GET", REALM, "/admin-events", params={"max": "5"}).json()
                    raise AssertionError(f"{exc}; {recent}") from None
                finally:
                    for action in batch:
                        undo(kc_admin, action)
                if not set(batch) & set(REALM_WIDE):
                    assert passes(gateways, bystander.token), "another user's token still passes"
            elapsed, reads = time.monotonic() - started, proxy.count(EVENTS) - reads
            admin_reads = proxy.count(ADMIN_EVENTS) - admin_reads
            # The realm-wide actions revoked the bystander's token too; a new one passes.
            refused_within(gateways, bystander.token, 1)
            time.sleep(1.1)
            assert passes(gateways, login(kc_admin, bystander.name)["access_token"])
        finally:
            for victim in [*victims.values(), bystander]:
                forget(kc_admin, victim)
    assert max(taken.values()) < INTERVAL + 1, taken
    # One read of each list per interval for the pair (a lease lapses after an interval; each
    # process tries for it four times an interval): two processes reading on their own would
    # make twice. Each realm-wide action also ends the feed's own token: one more try of each
    # list with a new one. After each sign-out (a user's, the realm's), the login list is also
    # asked, on each read for about 3 s, for the sessions started in its second.
    sign_outs = {"admin signs the user out", "admin signs out all sessions of the realm"}
    for count, extra in ((reads, len(REALM_WIDE) + 4 * len(sign_outs)), (admin_reads, len(REALM_WIDE))):
        assert elapsed / (INTERVAL + 0.5) - 2 <= count <= elapsed / INTERVAL + 2 + extra, (count, elapsed)
    assert proxy.count(INTROSPECT) == 0, "no introspection"
    assert [p for p in proxy.counts if p.startswith("/admin/")] and \
        all(p.startswith(f"/admin/realms/{REALM}/") for p in proxy.counts if p.startswith("/admin/")), \
        "the events of other realms are never read"
    assert set(taken) == set(ACTIONS) and {a for a in ACTIONS if not PUSHED[a]} <= set(taken)


class Watch:
    """Tokens watched from the moment each action is done, in a thread of its own, until every
    gateway refuses each: how long each took."""

    def __init__(self, gateways: list[tuple[Kong, object]]) -> None:
        self.gateways = gateways
        self.waiting: dict[str, tuple[str, float]] = {}
        self.taken: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, name: str, token: str) -> None:
        with self._lock:
            self.waiting[name] = (token, time.monotonic())

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                waiting = list(self.waiting.items())
            for name, (token, done) in waiting:
                if all(kong.request(entity, bearer(token)).status == 401 for kong, entity in self.gateways):  # type: ignore[arg-type]
                    with self._lock:
                        self.taken[name] = time.monotonic() - done
                        del self.waiting[name]
            time.sleep(0.05)

    def refused_within(self, seconds: float) -> dict[str, float]:
        """Each watched action's time to refusal; fails for those still passing `seconds` after it."""
        try:
            while True:
                with self._lock:
                    late = [n for n, (_, done) in self.waiting.items() if time.monotonic() - done > seconds]
                    if not self.waiting:
                        return dict(self.taken)
                assert not late, f"still passing {seconds} s after the action: {sorted(late)}"
                time.sleep(0.05)
        finally:
            self._stop.set()
            self._thread.join(10)


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "in-process"])
def test_a_logout_pushed_while_the_plugin_server_is_down_is_enforced_once_it_is_back(
        shared: bool, keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy,
        redis_server: RedisServer) -> None:
    if shared and not redis_server.running:
        redis_server.restart()
    redis = redis_server.plugin_config() if shared else None
    extra = {"redis": redis} if redis else {}
    with own_gateway(rpc_timeout=5) as kong:
        guard = kong.plugin(feed_guard(keycloak, proxy, redis))
        receiver = kong.plugin(receiver_config(keycloak.issuer(REALM), **extra))
        echo = EchoUpstream()
        gateway = Gateway(kong, [Route("revocations", ["/kcauth/revocations"], echo.url, kcauth=receiver)]).serve()
        url = gateway.url + "/kcauth/revocations"
        previous = kc_admin.set_client_attribute(REALM, "test-cli", "backchannel.logout.url", url)
        victim = new_victim(kc_admin, "down")
        try:
            tokens = login(kc_admin, victim.name, realm=REALM)
            assert kong.request(guard, bearer(tokens["access_token"])).status == 200
            kong.server.kill()
            kong.rpc.close()
            # Keycloak pushes the logout into a dead plugin server: Kong answers 500 (no instance can
            # start) or proxies it on (Kong fails open on an instance it had); lost either way, and
            # Keycloak never retries a push.
            kc_admin.end_session(REALM, "test-cli", tokens["refresh_token"])
            kong.server.start()
            back = time.monotonic()
            refused_within([(kong, guard)], tokens["access_token"], INTERVAL + 1)
            assert time.monotonic() - back < INTERVAL + 1
            assert kong.request(guard, bearer(victim.token)).status == 200, "the user's other session still passes"
        finally:
            kc_admin.set_client_attribute(REALM, "test-cli", "backchannel.logout.url", previous)
            gateway.stop()
            echo.stop()
            forget(kc_admin, victim)


def feed_revocations(port: int) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {m[0]: float(m[1]) for m in re.findall(r'^kcauth_feed_revocations_total\{cause="([^"]+)",[^}]*\} (\S+)$',
                                                  text, re.M)}


def test_a_restarted_reader_loses_no_event_and_records_none_twice(
        keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy,
        shared_redis: dict[str, object]) -> None:
    port = free_port()
    config = feed_guard(keycloak, proxy, shared_redis)
    first, second = new_victim(kc_admin, "restart"), new_victim(kc_admin, "restart")
    try:
        with own_gateway(extra_args=f"--metrics 127.0.0.1:{port}", rpc_timeout=5) as kong:
            guard = kong.plugin(config)
            assert passes([(kong, guard)], second.token)
            kc_admin.set_user_enabled(REALM, first.id, False)
            refused_within([(kong, guard)], first.token, INTERVAL + 1)
            assert feed_revocations(port).get("user disabled", 0) >= 1
            kong.server.stop()
            kong.rpc.close()
            kc_admin.set_user_enabled(REALM, second.id, False)  # while nobody reads
            time.sleep(INTERVAL)
            kong.server.start()  # a new process: its metrics start from nothing
            refused_within([(kong, guard)], second.token, INTERVAL + 1)
            assert kong.request(guard, bearer(first.token)).status == 401
            time.sleep(INTERVAL * 2)  # more reads: the first event is not taken again
            assert feed_revocations(port).get("user disabled") == 1, "the restarted reader took only the new event"
    finally:
        forget(kc_admin, first)
        forget(kc_admin, second)


@pytest.mark.parametrize("fault", ["status500", "garbage", "hang", "refuse"])
def test_keycloak_failing_under_the_feed_refuses_no_valid_token_and_loses_nothing(
        fault: str, keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    with own_gateway() as kong:
        guard = kong.plugin(feed_guard(keycloak, proxy, http_timeout=1))
        valid = new_victim(kc_admin, "valid")
        victim = new_victim(kc_admin, "outage")
        try:
            assert passes([(kong, guard)], valid.token)  # after a first good read (no Redis: at start)
            proxy.mode = fault  # type: ignore[assignment]
            kc_admin.set_user_enabled(REALM, victim.id, False)  # happens while the feed cannot read
            # Reads fail for a while (each hung one within http_timeout): valid tokens keep passing,
            # and the failure reaches Kong's log, carried by one of these requests.
            feed_line = f"revocation feed of {keycloak.issuer(REALM)} (client kcauth-feed):"
            started = time.monotonic()
            while time.monotonic() - started < 2 * INTERVAL or not [e for e in kong.error_log if feed_line in e]:
                assert passes([(kong, guard)], valid.token), f"{fault}: a valid token was refused"
                assert time.monotonic() - started < 10, f"{fault}: no feed failure in Kong's log: {kong.error_log}"
                time.sleep(0.2)
            proxy.mode = "pass"
            refused_within([(kong, guard)], victim.token, INTERVAL + 2)
            assert passes([(kong, guard)], valid.token)
        finally:
            proxy.mode = "pass"
            forget(kc_admin, valid)
            forget(kc_admin, victim)


def test_a_refused_service_account_is_reported_and_refuses_nothing(
        keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    with own_gateway() as kong:
        guard = kong.plugin(feed_guard(keycloak, proxy, feed={"client_secret": "not-the-secret"}))
        token = login(kc_admin, "bob")["access_token"]
        for _ in range(3 * INTERVAL * 2):
            assert kong.request(guard, bearer(token)).status == 200
            time.sleep(0.5)
        lines = [e for e in kong.error_log if "revocation feed of" in e]
        assert len(lines) == 1 and "refused the service account" in lines[0], kong.error_log
        assert "not-the-secret" not in "".join(kong.error_log)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def passes_within(gateways: list[tuple[Kong, object]], token: str, seconds: float) -> float:
    started = time.monotonic()
    while not passes(gateways, token):
        assert time.monotonic() - started < seconds, f"still refused after {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def sign_out_time(kc_admin: KeycloakAdmin, user: str) -> int:
    """The time (ms) of Keycloak's admin event for the sign-out of `user`."""
    events = kc_admin._admin("GET", REALM, "/admin-events", params={
        "operationTypes": "ACTION", "resourcePath": f"users/{user}/logout", "max": "5"}).json()
    return max(e["time"] for e in events if e.get("resourcePath") == f"users/{user}/logout")


def test_a_sign_out_in_a_token_s_own_second_with_its_push_lost_is_enforced(
        keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    """An administrator signs a user out, and the back-channel logout is lost (the realm pushes
    to a closed port here). A token of an ended session issued earlier in the sign-out's own
    second is refused through the feed (Keycloak records no session ids for it: the feed tells the
    sessions that started at or after the sign-out by their LOGIN events), and a token of a
    session the user starts right after, within that same second, passes."""
    with own_gateway() as kong:
        gateway = [(kong, kong.plugin(feed_guard(keycloak, proxy)))]
        for _ in range(8):  # until a login, the sign-out and a new login fall within one second
            victim = new_victim(kc_admin, "second")
            try:
                time.sleep(1 - time.time() % 1 + 0.02)  # the start of a second
                before = login(kc_admin, victim.name)["access_token"]
                kc_admin.logout_user(REALM, victim.id)
                after = login(kc_admin, victim.name)["access_token"]
                second = sign_out_time(kc_admin, victim.id) // 1000
                if not claims_of(before)["iat"] == second == claims_of(after)["iat"]:
                    continue
                refused_within(gateway, before, INTERVAL + 1)
                passes_within(gateway, after, INTERVAL + 1)
                assert not passes(gateway, victim.token) and not passes(gateway, before)
                return
            finally:
                forget(kc_admin, victim)
        pytest.fail("no login, sign-out and login fell within one second in 8 tries")


def future_event(path: str) -> dict[str, Any]:
    """An admin event dated an hour ahead (a Keycloak node whose clock is ahead), revoking nobody."""
    return {"id": str(uuid.uuid4()), "time": int(time.time() * 1000) + 3_600_000, "realmId": "x",
            "authDetails": {}, "operationType": "UPDATE", "resourceType": "USER", "resourcePath": path,
            "representation": json.dumps({"enabled": True})}


def appended(events: list[dict[str, Any]]) -> Any:
    """A rewrite of the proxy: `events` added to every page of admin events that has room left."""
    def rewrite(target: str, body: bytes) -> bytes:
        if "/admin-events" not in target:
            return body
        page = json.loads(body)
        return json.dumps(page + events if len(page) < 100 else page).encode()
    return rewrite


@pytest.mark.parametrize("odd", ["dated in the future", "a lone surrogate"])
def test_an_odd_event_does_not_hide_the_events_after_it(
        odd: str, keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    """One event Keycloak should not have sent: dated an hour ahead (it must not move the feed's
    position past the events recorded after it), or holding a lone UTF-16 surrogate (it must not
    make its page unreadable). The disable that follows is enforced all the same."""
    bystander = new_victim(kc_admin, "odd")
    event = future_event(f"users/{bystander.id}")
    if odd == "a lone surrogate":
        event["time"] = int(time.time() * 1000)
        event["authDetails"] = {"ipAddress": "\ud800"}  # a lone surrogate, escaped in the page's JSON
    proxy.rewrite = appended([event])
    victim = new_victim(kc_admin, "after-odd")
    try:
        with own_gateway() as kong:
            gateway = [(kong, kong.plugin(feed_guard(keycloak, proxy)))]
            assert passes(gateway, victim.token) and passes(gateway, bystander.token)
            time.sleep(INTERVAL + 0.5)  # a read or two with the odd event in it
            kc_admin.set_user_enabled(REALM, victim.id, False)
            refused_within(gateway, victim.token, INTERVAL + 1)
            assert passes(gateway, bystander.token), "the odd event revoked nobody"
            assert not [e for e in kong.error_log if "revocation feed of" in e], kong.error_log
    finally:
        proxy.rewrite = None
        forget(kc_admin, victim)
        forget(kc_admin, bystander)


def reported(kong: Kong) -> list[str]:
    return [e for e in kong.error_log if "revocation feed of" in e]


def test_an_oversized_page_of_events_is_refused_while_it_is_read(
        keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    """A page of 60 MB (one event holding it): refused after the feed's limit, every read, with the
    plugin server's memory flat; reported once; nothing refused meanwhile; the events read once
    the page is sane again."""
    padding = future_event("users/nobody")
    padding["representation"] = json.dumps({"firstName": "x" * (60 << 20)})
    victim = new_victim(kc_admin, "big-page")
    valid = new_victim(kc_admin, "valid")
    try:
        with own_gateway() as kong:
            gateway = [(kong, kong.plugin(feed_guard(keycloak, proxy)))]
            assert passes(gateway, valid.token)
            before = rss_mb(kong.server.pid, "VmHWM")
            proxy.rewrite = appended([padding])
            kc_admin.set_user_enabled(REALM, victim.id, False)
            # At least three reads' time, and until the failure is reported: a 60 MB page takes
            # the proxy a while to build when the machine is busy (bounded).
            started = time.monotonic()
            while time.monotonic() - started < 3 * INTERVAL or not reported(kong):
                assert passes(gateway, valid.token)
                assert time.monotonic() - started < 30, "the refused page was never reported"
                time.sleep(0.2)
            growth = rss_mb(kong.server.pid, "VmHWM") - before
            print(f"peak RSS growth over {3 * INTERVAL} s of 60 MB pages: {growth:+.1f} MB")
            assert growth < 24
            lines = reported(kong)
            assert len(lines) == 1 and "BodyTooLarge" in lines[0], lines
            proxy.rewrite = None
            refused_within(gateway, victim.token, INTERVAL + 1)
    finally:
        proxy.rewrite = None
        forget(kc_admin, victim)
        forget(kc_admin, valid)


def test_one_feed_reader_and_one_metrics_endpoint_per_node(
        keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    """Without Redis, the workers of one plugin server (pluginserver/supervisor.py) share one
    read of each list per interval through the node's hub, and what the reader records reaches
    the other worker; the metrics endpoint counts both workers' requests."""
    from tests.harness.nginx_worker import NginxWorker

    port = free_port()
    config = feed_guard(keycloak, proxy)
    with own_gateway(extra_args=f"--workers 2 --metrics 127.0.0.1:{port}") as gateway:
        entity = gateway.plugin(config)
        nginx = [NginxWorker(gateway.server.socket_path, gateway.info) for _ in range(2)]
        victim = new_victim(kc_admin, "node")
        try:
            assert len({w.status()["Pid"] for w in nginx}) == 2, "two workers, each with a feed of its own"
            sent = 0
            for worker in nginx:  # each worker's instance starts its feed
                assert worker.request(entity, bearer(victim.token))["status"] == 200
                sent += 1
            time.sleep(INTERVAL + 0.5)  # past the first reads
            started, reads, admin_reads = time.monotonic(), proxy.count(EVENTS), proxy.count(ADMIN_EVENTS)
            time.sleep(4 * INTERVAL)
            elapsed = time.monotonic() - started
            reads, admin_reads = proxy.count(EVENTS) - reads, proxy.count(ADMIN_EVENTS) - admin_reads
            for count in (reads, admin_reads):  # two workers reading on their own would make twice
                assert elapsed / (INTERVAL + 0.5) - 2 <= count <= elapsed / INTERVAL + 2, (count, elapsed)
            time.sleep(1.1)  # the sign-out spares tokens of its own second
            ACTIONS["admin signs the user out"](kc_admin, victim)
            deadline = time.monotonic() + INTERVAL + 1
            while [w.request(entity, bearer(victim.token))["status"] for w in nginx] != [401, 401]:
                sent += 2
                assert time.monotonic() < deadline, "the reader's revocation is enforced by both workers"
                time.sleep(0.05)
            sent += 2
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                          if line.startswith("kcauth_requests_total{"))
            assert counted == sent, (counted, sent)
            assert proxy.count(INTROSPECT) == 0
        finally:
            for worker in nginx:
                worker.close()
            undo(kc_admin, "admin signs the user out")
            forget(kc_admin, victim)
