"""Nothing a token carries, and nothing a handler does, can break Kong's RPC stream.

A dropped connection or an RPC error makes Kong log it and PROXY the request (mp_rpc.lua
`Rpc:handle_event`). Here, in both server modes: realm-signed tokens whose claims hold what
MessagePack cannot encode get a definite 401; a handler whose PDK call cannot be encoded, or that
raises, gets 500 through `kong.response.exit`; no event leaves a thread or greenlet behind; and
arbitrary JSON claims (any Unicode, any number, nesting) always end in exactly one of "proxied
with kcauth's headers" or one exit with 401/403/503.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgpack
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.conftest import SERVER_MODES, bearer, guard_config, short_prefix, start_script_server, started_idp
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong, PluginEntity, RpcError

REPLAYS = 300


def test_unencodable_claims_are_refused_where_they_enter(each_mode_kong: Kong, idp: LocalIdP,
                                                         minter: Minter) -> None:
    kong = each_mode_kong
    plain = kong.plugin(guard_config(idp))
    mapped = kong.plugin(guard_config(idp, consumer_claim="preferred_username"))
    tokens = [
        (plain, minter.raw_token(realm_access={"roles": ["user", "\ud800"]})),
        (plain, minter.raw_token(resource_access={"\udfff": {"roles": ["x"]}})),
        (mapped, minter.raw_token(preferred_username="\ud800")),
    ]
    for entity, token in tokens:  # warm up: instances started, key sets fetched
        kong.request(entity, bearer(token))
    baseline = kong.status()
    for entity, token in tokens:
        for _ in range(REPLAYS // len(tokens)):
            res = kong.request(entity, bearer(token) + [("X-Auth-Subject", "forged")])
            assert res.status == 401 and not res.proxied, res.errors
            assert 'error_description="The access token is malformed"' in res.headers["WWW-Authenticate"]
            assert res.errors == [], "no RPC error: Kong would have proxied"
    after = kong.status()
    assert after["Events"] == 0 and after["Running"] == 0
    assert after["Threads"] <= baseline["Threads"] and after["Greenlets"] <= baseline["Greenlets"], (baseline, after)
    assert kong.request(plain, bearer(minter.token())).status == 200, "the server still answers"


@pytest.fixture(scope="module")
def misbehaving(server_mode: str) -> Iterator[Kong]:
    """Kong on tests/faults/misbehaving.py, a plugin server whose handler breaks on demand, in each mode."""
    prefix = short_prefix("kcx")
    server = start_script_server(prefix, f"{sys.executable} -m tests.faults.misbehaving", "misbehaving.socket",
                                 SERVER_MODES[server_mode], env={"PYTHONPATH": str(Path.cwd())})
    gateway = Kong(server, rpc_timeout=10)
    yield gateway
    gateway.rpc.close()
    server.stop()
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.mark.parametrize("fault", ["unencodable", "raise"])
def test_a_handler_that_breaks_gets_500_and_leaves_nothing(misbehaving: Kong, fault: str) -> None:
    entity = misbehaving.plugin({})
    misbehaving.request(entity, [("X-Fault", fault)])  # warm up: the instance started
    baseline = misbehaving.status()
    for _ in range(REPLAYS):
        res = misbehaving.request(entity, [("X-Fault", fault)])
        assert res.status == 500 and not res.proxied and res.body == {"message": "An unexpected error occurred"}
        assert res.errors == [], "answered through kong.response.exit, never an RPC error"
    # A handler runs on to its end after kong.response.exit (Kong sends nothing more): within
    # moments, every event is gone.
    deadline = time.monotonic() + 5
    after = misbehaving.status()
    while (after["Events"] or after["Running"]) and time.monotonic() < deadline:
        time.sleep(0.05)
        after = misbehaving.status()
    assert after["Events"] == 0 and after["Running"] == 0, after
    assert after["Threads"] <= baseline["Threads"] and after["Greenlets"] <= baseline["Greenlets"], (baseline, after)
    behaved = misbehaving.request(entity, [])
    assert behaved.status == 200 and behaved.upstream("X-Behaved") == ["yes"]


def test_a_handler_that_raises_before_any_pdk_call_does_not_wedge_the_server(misbehaving: Kong) -> None:
    """kong-pdk's own server holds a global lock until a handler's first PDK call: one that
    raises first leaves it held, and every later request hangs."""
    entity = misbehaving.plugin({"raise_first_on_even": True})
    statuses = [misbehaving.request(entity, []).status for _ in range(20)]
    assert sorted(set(statuses)) == [200, 500], statuses
    assert misbehaving.error_log == []


def test_steps_for_unknown_events_are_refused_not_errors(misbehaving: Kong) -> None:
    answer = misbehaving.rpc.call("plugin.Step", {"EventId": 987654, "Data": None})
    assert answer["Data"]["Method"] == "kong.response.exit" and answer["Data"]["Args"][0] == 500
    with pytest.raises(RpcError, match="no plugin instance"):  # Kong restarts the instance and retries
        misbehaving.rpc.call("plugin.HandleEvent", {"InstanceId": 987654, "EventName": "access"})


def test_garbage_on_the_socket_does_not_stop_the_server(misbehaving: Kong) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(misbehaving.server.socket_path))
        conn.sendall(b"\xc1\xc1\xc1 not messagepack")
        conn.settimeout(5)
        received = b""
        while chunk := conn.recv(100):
            received += chunk
        # Disconnected, having answered nothing (the core's first bytes are a notification).
        assert all(message[0] == 2 for message in msgpack.Unpacker(io.BytesIO(received), raw=False))
    assert misbehaving.request(misbehaving.plugin({}), []).status == 200


# --- arbitrary JSON claims, realm-signed ---------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10 ** 400), max_value=10 ** 400),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["\ud800", "a\udfffb", "%", " x "]),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
CLAIMS = ["sub", "preferred_username", "azp", "scope", "realm_access", "resource_access", "aud", "exp",
          "iat", "nbf", "iss", "typ", "sid", "x-extra"]


@pytest.fixture(scope="module")
def realm() -> Iterator[tuple[LocalIdP, Minter]]:
    idp = started_idp()
    yield idp, Minter(idp.issuer, idp.primary)  # type: ignore[attr-defined]
    idp.stop()


_ROUTES: dict[int, PluginEntity] = {}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(CLAIMS), json_values, min_size=1, max_size=4))
@example(changes={"realm_access": {"roles": ["user", "\ud800"]}})  # broke the RPC stream (fail-open)
@example(changes={"preferred_username": "\ud800"})
@example(changes={"exp": float("nan")})
@example(changes={"iat": 10 ** 400})
def test_any_claims_end_in_one_clean_answer(each_mode_kong: Kong, realm: tuple[LocalIdP, Minter],
                                            changes: dict[str, Any]) -> None:
    idp, minter = realm
    kong = each_mode_kong
    entity = _ROUTES.get(id(kong))
    if entity is None:  # one route per server: its instance starts once, the examples are the tokens
        entity = _ROUTES[id(kong)] = kong.plugin(guard_config(
            idp, consumer_claim="preferred_username", required_roles=["realm:user"], header_value_max_length=16384))
    claims = minter.claims(**changes)
    token = minter.raw_token(**changes)
    res = kong.request(entity, bearer(token) + [("X-Auth-Subject", "forged"), ("X-Consumer-ID", "forged")])
    assert res.errors == [], "every event is answered: no RPC error, no dropped connection"
    event("proxied" if res.proxied else f"refused {res.status}")
    if not res.proxied and not res.pdk_calls:  # a token past nginx's header buffers: refused before Kong
        assert res.status == 400 and "too large" in str(res.body), (res.status, res.body)
        return
    if not res.proxied:
        assert res.status in (401, 403, 503), (res.status, res.body)
        assert res.pdk_calls[-1] == "kong.response.exit"
        return
    assert res.status == 200
    for header, path in (("X-Auth-Subject", ["sub"]), ("X-Auth-Username", ["preferred_username"]),
                         ("X-Auth-Realm-Roles", ["realm_access", "roles"])):
        assert_forwarded(res.upstream(header), claim(claims, path))
    assert res.upstream("X-Consumer-ID") == [], "a client's consumer header never survives"


def claim(claims: dict[str, Any], path: list[str]) -> Any:
    node: Any = claims
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def assert_forwarded(values: list[Any], value: Any) -> None:
    """The README's header encoding, decoded: the upstream gets exactly the claim, or no header
    for an absent or null claim (values here stay far below header_value_max_length)."""
    if value is None:
        assert values == []
        return
    assert len(values) == 1, values
    header = values[0]
    assert isinstance(header, str) and header.isascii() and header.isprintable()
    # RFC 9110 5.5: a field value has no leading or trailing whitespace (Kong sends "" as " ";
    # kcauth percent-encodes the edge spaces of every other value).
    header = header.strip(" ")
    if isinstance(value, str):
        assert unquote(header, errors="strict") == value
    elif isinstance(value, float):
        assert math.isclose(json.loads(header), value)
    else:
        assert json.loads(header) == value


def test_the_property_check_can_fail() -> None:
    with pytest.raises(AssertionError):
        assert_forwarded(["alice"], "bob")
    with pytest.raises(AssertionError):
        assert_forwarded([], "bob")
    with pytest.raises(AssertionError):
        assert_forwarded(["x"], None)
    assert_forwarded(["%E2%9C%93"], "\u2713")
    assert_forwarded(['["a",1]'], ["a", 1])
