"""The Shared Signals receiver (idp/ssf.py) against the real Keycloak 26.7.3 transmitter
(`--features=ssf`, tests/keycloak/server.py): kcauth creates its stream and Keycloak verifies it;
a user's logout, an administrator's sign-out and password changes are refused on every guard
within the poll interval plus a second, with no introspection, while a bystander's token still
passes; what happens while the plugin server is down is enforced when it is back (Keycloak keeps
what kcauth has not acknowledged). The realm's back-channel logout URL points at a closed port
here, and no feed is configured: only the signals can revoke. Every call to Keycloak goes through
a counting proxy (`provider_url`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests

from kong_plugin_kcauth.tokens.secevent import REVOKING
from tests.conftest import bearer, free_port, guard_config, own_gateway, receiver_config
from tests.harness.gateway import EchoUpstream, Gateway, Route
from tests.harness.kong import Kong
from tests.harness.proxy import CountingProxy
from tests.keycloak.actions import ACTIONS, SIGNALLED, Victim, forget, new_victim, undo
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.fixtures import REALM, login
from tests.keycloak.server import KeycloakServer

pytestmark = pytest.mark.keycloak

INTERVAL = 1
CLIENT = "kcauth-ssf"
SECRET = "kcauth-ssf-secret"
POLL = "/poll"
INTROSPECT = "/token/introspect"


def receiver_client(kc_admin: KeycloakAdmin, client_id: str, secret: str, **attributes: str) -> str:
    """kcauth's receiver client, as docs/revocation.md "Revocation by Shared Signals" says to set it up: a
    confidential client with SSF enabled, a service account, the scopes ssf.read and ssf.manage,
    and every user's events (`ssf.defaultSubjects` ALL). Returns its id."""
    scopes = {s["name"]: s["id"] for s in kc_admin._admin("GET", REALM, "/client-scopes").json()}
    kc_admin._admin("POST", REALM, "/clients", expect=(201,), json={
        "clientId": client_id, "secret": secret, "publicClient": False, "serviceAccountsEnabled": True,
        "standardFlowEnabled": False,
        "attributes": {"ssf.enabled": "true", "ssf.defaultSubjects": "ALL", **attributes}})
    client = str(kc_admin.get_client(REALM, client_id)["id"])
    for name in ("ssf.read", "ssf.manage"):
        kc_admin._admin("PUT", REALM, f"/clients/{client}/default-client-scopes/{scopes[name]}", expect=(204,))
    return client


@pytest.fixture(scope="module")
def transmitter(kc_admin: KeycloakAdmin) -> Iterator[None]:
    """The realm's transmitter on (its scopes created when missing), and the poll client."""
    realm = kc_admin._admin("GET", REALM, "").json()
    attributes = {**(realm.get("attributes") or {}), "ssf.transmitterEnabled": "true"}
    kc_admin._admin("PUT", REALM, "", expect=(204,), json={**realm, "attributes": attributes})  # GET, merge, PUT
    scopes = {s["name"]: s["id"] for s in kc_admin._admin("GET", REALM, "/client-scopes").json()}
    for name in ("ssf.read", "ssf.manage"):
        if name not in scopes:
            kc_admin._admin("POST", REALM, "/client-scopes", expect=(201,), json={
                "name": name, "protocol": "openid-connect",
                "attributes": {"include.in.token.scope": "true", "display.on.consent.screen": "false"}})
    client = receiver_client(kc_admin, CLIENT, SECRET)
    yield
    kc_admin._admin("DELETE", REALM, f"/clients/{client}", expect=(204,))  # its stream and queue go with it


@pytest.fixture
def proxy(keycloak: KeycloakServer) -> Iterator[CountingProxy]:
    with CountingProxy(keycloak.base_url) as p:
        yield p


def signals_guard(keycloak: KeycloakServer, proxy: CountingProxy, **config: Any) -> dict[str, Any]:
    return guard_config(keycloak.issuer(REALM), provider_url=proxy.url,
                        ssf={"client_id": CLIENT, "client_secret": SECRET, "poll_interval": INTERVAL}, **config)


def statuses(guards: list[tuple[Kong, Any]], token: str) -> list[int]:
    return [kong.request(entity, bearer(token)).status for kong, entity in guards]


def refused_within(guards: list[tuple[Kong, Any]], token: str, seconds: float, since: float | None = None) -> float:
    """Seconds from `since` (now) until every guard refuses `token` (fails past `seconds`)."""
    started = time.monotonic() if since is None else since
    while (seen := statuses(guards, token)) != [401] * len(guards):
        assert time.monotonic() - started < seconds, f"still {seen} after {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def user_logout(kc: KeycloakAdmin, victim: Victim) -> Victim:
    """A login of its own (a session with a refresh token), ended by the user (RP logout)."""
    tokens = login(kc, victim.name)
    kc.end_session(REALM, "test-cli", tokens["refresh_token"])
    return Victim(victim.id, victim.name, victim.password, tokens["access_token"], "")


ENFORCED = {
    "user logs out": None,  # user_logout
    "admin signs the user out": ACTIONS["admin signs the user out"],
    "admin resets the password": ACTIONS["admin resets the password"],
    "user changes the password": ACTIONS["user changes the password"],
}


def test_the_stream_is_kcauths_and_every_signal_is_enforced_on_every_guard(
        transmitter: None, keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    with own_gateway() as gateway:
        guards = [(gateway, gateway.plugin(signals_guard(keycloak, proxy))),
                  (gateway, gateway.plugin(signals_guard(keycloak, proxy, required_roles=["realm:user"])))]
        bystander = new_victim(kc_admin, "bystander")
        victims: list[Victim] = []
        try:
            assert statuses(guards, bystander.token) == [200, 200]  # the receiver starts with the first instance
            time.sleep(INTERVAL + 0.5)
            streams = proxy.count(f"/realms/{REALM}/ssf/transmitter/streams")
            assert streams >= 2, "kcauth looked for its stream, then created it"
            assert "kcauth: Shared Signals stream" in gateway.server.log() and " verified" in gateway.server.log()
            for _ in ENFORCED:
                victims.append(new_victim(kc_admin, "ssf"))
            time.sleep(1.1)  # password changes spare tokens of their own second (idp/signals.py)
            taken, watched = {}, {}
            for (action, act), victim in zip(ENFORCED.items(), victims, strict=True):
                if act is None:
                    token = user_logout(kc_admin, victim).token
                else:
                    assert statuses(guards, victim.token) == [200, 200], action
                    act(kc_admin, victim)
                    token = victim.token
                watched[action] = (token, time.monotonic())
            for action, (token, done) in watched.items():  # each within the interval + 1 s of its action
                taken[action] = refused_within(guards, token, INTERVAL + 1, since=done)
            assert statuses(guards, bystander.token) == [200, 200], "a bystander still passes"
            print(f"refused after: {taken}")
            assert proxy.count(INTROSPECT) == 0, "no introspection"
        finally:
            for victim in [*victims, bystander]:
                forget(kc_admin, victim)


def test_what_happens_while_the_plugin_server_is_down_is_enforced_when_it_is_back(
        transmitter: None, keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    """Keycloak keeps a SET until kcauth acknowledges it, and kcauth acknowledges only what it
    recorded: events emitted while no plugin server runs are enforced by the next one's first
    request, a sign-out in the same second as the token's issue included."""
    config = signals_guard(keycloak, proxy)
    victim, same_second = new_victim(kc_admin, "down"), new_victim(kc_admin, "same")
    try:
        with own_gateway() as gateway:
            assert gateway.request(gateway.plugin(config), bearer(victim.token)).status == 200
            time.sleep(INTERVAL + 0.5)  # its stream polled (and what was queued acknowledged)
        # No plugin server runs now.
        ACTIONS["admin signs the user out"](kc_admin, victim)
        fresh = login(kc_admin, same_second.name)["access_token"]
        ACTIONS["admin signs the user out"](kc_admin, same_second)  # within the second of `fresh`
        time.sleep(1.0)
        with own_gateway() as gateway:
            entity = gateway.plugin(config)
            assert gateway.request(entity, bearer(victim.token)).status == 401, "refused from the first request"
            assert gateway.request(entity, bearer(fresh)).status == 401
            assert gateway.request(entity, bearer(login(kc_admin, "alice")["access_token"])).status == 200
    finally:
        forget(kc_admin, victim)
        forget(kc_admin, same_second)


class Stream:
    """kcauth's stream read directly, as its client: to see what Keycloak signals for an action."""

    def __init__(self, keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
        self.issuer = issuer = keycloak.issuer(REALM)
        meta = requests.get(f"{issuer}/.well-known/ssf-configuration", timeout=10).json()
        streams = requests.get(meta["configuration_endpoint"], headers=self.headers, timeout=10).json()
        stream = streams[0] if streams else requests.post(
            meta["configuration_endpoint"], headers=self.headers, timeout=10,
            json={"delivery": {"method": "urn:ietf:rfc:8936"}, "events_requested": list(REVOKING)}).json()
        self.poll_url = stream["delivery"]["endpoint_url"]

    @property
    def headers(self) -> dict[str, str]:
        """A new token each time: a realm-wide sign-out ends the service account's session too."""
        token = requests.post(f"{self.issuer}/protocol/openid-connect/token", timeout=10, data={
            "grant_type": "client_credentials", "client_id": CLIENT, "client_secret": SECRET}).json()["access_token"]
        return {"Authorization": f"Bearer {token}"}

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        """Every SET's claims for `seconds`, each acknowledged."""
        found: list[dict[str, Any]] = []
        deadline, ack = time.monotonic() + seconds, []
        while time.monotonic() < deadline or ack:
            sets = requests.post(self.poll_url, headers=self.headers, timeout=10,
                                 json={"maxEvents": 100, "ack": ack}).json()["sets"]
            found += [jwt.decode(s, options={"verify_signature": False}) for s in sets.values()]
            ack = list(sets)
            if not ack:
                time.sleep(0.2)
        return found


def about(claims: dict[str, Any], victim: Victim) -> str | None:
    """The event type (its last segment) of a SET about `victim`, else None."""
    subject = claims.get("sub_id") or {}
    user = (subject.get("user") or subject).get("sub")
    return next(iter(claims["events"])).rsplit("/", 1)[1] if user == victim.id else None


def test_what_keycloak_signals_for_each_action(
        transmitter: None, keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
    """What the README's SSF column says, action by action (tests/keycloak/actions.py SIGNALLED)."""
    stream = Stream(keycloak, kc_admin)
    stream.drain(0.5)
    seen: dict[str, set[str]] = {}
    for action, act in ACTIONS.items():
        victim = new_victim(kc_admin, "signal")
        try:
            act(kc_admin, victim)
            # Keycloak writes a SET to its outbox within the request that caused it.
            seen[action] = {kind for claims in stream.drain(0.3) if (kind := about(claims, victim))}
        finally:
            forget(kc_admin, victim)
            undo(kc_admin, action)
    print(f"signalled: {seen}")
    assert seen == {action: set(kinds) for action, kinds in SIGNALLED.items()}


@pytest.mark.parametrize("fault", ["garbage", "status500", "hang"])
def test_a_failing_poll_revokes_nothing_is_logged_once_and_loses_nothing(
        fault: str, transmitter: None, keycloak: KeycloakServer, kc_admin: KeycloakAdmin) -> None:
    """The transmitter's poll answering garbage, 500 or nothing (each hung poll within
    `http_timeout`): valid tokens keep passing, Kong's log says so once, and what Keycloak kept
    meanwhile is enforced once the polls succeed again."""
    with CountingProxy(keycloak.base_url, fault_path_suffix=POLL, hang_seconds=5) as proxy, \
            own_gateway() as gateway:
        guard = gateway.plugin(signals_guard(keycloak, proxy, http_timeout=1))
        valid, victim = new_victim(kc_admin, "valid"), new_victim(kc_admin, "outage")
        try:
            assert gateway.request(guard, bearer(valid.token)).status == 200  # a first good poll (at start)
            proxy.mode = fault  # type: ignore[assignment]
            ACTIONS["admin signs the user out"](kc_admin, victim)  # while no poll can succeed
            line = f"Shared Signals receiver of {keycloak.issuer(REALM)} (client {CLIENT}):"
            started = time.monotonic()
            while time.monotonic() - started < 2 * INTERVAL or not [e for e in gateway.error_log if line in e]:
                assert gateway.request(guard, bearer(valid.token)).status == 200, f"{fault}: a valid token refused"
                assert time.monotonic() - started < 10, f"{fault}: no failure in Kong's log: {gateway.error_log}"
                time.sleep(0.2)
            time.sleep(INTERVAL + 0.2)  # another failed poll: still one line
            assert gateway.request(guard, bearer(valid.token)).status == 200
            assert len([e for e in gateway.error_log if line in e]) == 1, gateway.error_log
            assert gateway.request(guard, bearer(victim.token)).status == 200, "nothing revoked by a failed poll"
            proxy.mode = "pass"
            refused_within([(gateway, guard)], victim.token, INTERVAL + 2)
            assert gateway.request(guard, bearer(valid.token)).status == 200
        finally:
            proxy.mode = "pass"
            forget(kc_admin, valid)
            forget(kc_admin, victim)


# -- push delivery (RFC 8935) --

PUSH_CLIENT = "kcauth-ssf-push"
RECEIVER = "/kcauth/revocations"
PUSH_WITHIN = 1.0  # seconds from an action to its refusal: Keycloak's drainer runs every 0.5 s here


@pytest.fixture
def push_url(transmitter: None, kc_admin: KeycloakAdmin) -> Iterator[str]:
    """A push client whose `ssf.validPushUrls` names the receiver route of a gateway to come."""
    url = f"http://127.0.0.1:{free_port()}{RECEIVER}"
    client = receiver_client(kc_admin, PUSH_CLIENT, SECRET, **{"ssf.validPushUrls": url})
    yield url
    kc_admin._admin("DELETE", REALM, f"/clients/{client}", expect=(204,))


def receiving_gateway(kong: Kong, keycloak: KeycloakServer, proxy: CountingProxy, url: str,
                      upstream: EchoUpstream) -> Gateway:
    """The receiver route as docs/revocation.md "Revocation by Shared Signals" sets it up: kcauth with push
    delivery, then request-termination answering 503 when kcauth could not."""
    receiver = kong.plugin(receiver_config(keycloak.issuer(REALM), provider_url=proxy.url, ssf={
        "client_id": PUSH_CLIENT, "client_secret": SECRET, "delivery": "push", "push_url": url}))
    route = Route("revocations", [RECEIVER], upstream.url, kcauth=receiver,
                  terminate=(503, "revocation receiver unavailable"))
    return Gateway(kong, [route]).serve(port=int(url.split(":")[2].split("/")[0]))


PUSHED_ACTIONS = {action: ENFORCED[action] for action in
                  ("user logs out", "admin signs the user out", "admin resets the password")}


def test_pushed_signals_are_enforced_within_a_second_and_none_is_lost_while_kcauth_is_down(
        push_url: str, keycloak: KeycloakServer, kc_admin: KeycloakAdmin, proxy: CountingProxy) -> None:
    """kcauth sets the push stream up and Keycloak verifies it through the route; a logout, an
    administrator's sign-out and a password reset are refused on every guard within a second.
    Then the plugin server stops: the route answers 503 (request-termination, as Kong proxies
    then), Keycloak retries each SET, and the next plugin server records it, a sign-out in the
    same second as the token's issue included."""
    upstream = EchoUpstream()
    issuer = keycloak.issuer(REALM)
    bystander, down, same_second = (new_victim(kc_admin, name) for name in ("bystander", "down", "same"))
    victims = [new_victim(kc_admin, "pushed") for _ in PUSHED_ACTIONS]
    with own_gateway() as kong:
        gateway = receiving_gateway(kong, keycloak, proxy, push_url, upstream)
        guards = [(kong, kong.plugin(guard_config(issuer, provider_url=proxy.url))),
                  (kong, kong.plugin(guard_config(issuer, provider_url=proxy.url, required_roles=["realm:user"])))]
        try:
            assert requests.get(push_url, timeout=10).status_code == 405  # the receiver's instance starts
            deadline = time.monotonic() + 10
            while " verified" not in kong.server.log():  # Keycloak pushed the verification to the route
                assert time.monotonic() < deadline, f"the stream was not verified: {kong.server.log()}"
                time.sleep(0.1)
            time.sleep(1.1)  # password changes spare tokens of their own second (idp/signals.py)
            taken = {}
            for (action, act), victim in zip(PUSHED_ACTIONS.items(), victims, strict=True):
                if act is None:
                    token, done = user_logout(kc_admin, victim).token, time.monotonic()
                else:
                    assert statuses(guards, victim.token) == [200, 200], action
                    act(kc_admin, victim)
                    token, done = victim.token, time.monotonic()
                taken[action] = refused_within(guards, token, PUSH_WITHIN, since=done)
            assert statuses(guards, bystander.token) == [200, 200], "a bystander still passes"
            print(f"refused after: {taken}")

            kong.server.stop()  # no plugin server runs now
            hits = gateway.routes[0].hits
            ACTIONS["admin signs the user out"](kc_admin, down)
            fresh = login(kc_admin, same_second.name)["access_token"]
            ACTIONS["admin signs the user out"](kc_admin, same_second)  # within the second of `fresh`
            deadline = time.monotonic() + 10
            while gateway.routes[0].hits < hits + 2:  # both pushed, and answered 503
                assert time.monotonic() < deadline, "Keycloak pushed nothing"
                time.sleep(0.05)
            kong.server.start()
            for token in (down.token, fresh):  # Keycloak's first retry comes about a second later
                refused_within(guards, token, 8)
            assert statuses(guards, bystander.token) == [200, 200], "a bystander still passes"
            assert proxy.count(INTROSPECT) == 0 and proxy.count(POLL) == 0, "no introspection, no poll"
            assert upstream.hits == 0, "every push answered by kcauth or request-termination, none proxied"
        finally:
            gateway.stop()
            upstream.stop()
            for victim in [*victims, bystander, down, same_second]:
                forget(kc_admin, victim)
