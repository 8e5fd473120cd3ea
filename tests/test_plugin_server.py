"""The plugin in the real plugin server, driven as Kong drives it: behaviour that needs time,
several requests, a misbehaving identity provider or a misbehaving plugin server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import bearer, plugin_server_env, round_trips, start_plugin_server
from tests.harness.idp import LocalIdP, Minter, SigningKey, forge
from tests.harness.kong import Kong, PluginServerProcess

FAULTS = Path(__file__).resolve().parent / "faults"


def config(idp: LocalIdP, **extra: object) -> dict[str, object]:
    return {"issuer": idp.issuer, "audiences": ["orders-api"], **extra}


def test_allow_and_reject_paths_cost_three_and_two_round_trips(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp))
    ok = kong.request(entity, bearer(minter.token()))
    assert ok.status == 200 and ok.proxied
    assert round_trips(ok) == ["kong.request.get_headers", "kong.service.request.set_headers",
                            "kong.ctx.shared.set"]
    refused = kong.request(entity, bearer("garbage"))
    assert refused.status == 401 and not refused.proxied
    assert round_trips(refused) == ["kong.request.get_headers", "kong.response.exit"]


def test_valid_tokens_are_remembered_per_configuration(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    open_route = kong.plugin(config(idp))
    admin_route = kong.plugin(config(idp, required_roles=["realm:admin"]))
    token = minter.token()
    assert kong.request(open_route, bearer(token)).status == 200
    assert kong.request(open_route, bearer(token)).status == 200
    assert kong.request(admin_route, bearer(token)).status == 403, \
        "a token accepted under one config is not accepted under another config's rules"
    assert kong.request(open_route, bearer(token)).status == 200


def test_cached_tokens_are_refused_once_expired(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp, leeway=0))
    token = minter.token(exp=int(time.time()) + 2)
    assert kong.request(entity, bearer(token)).status == 200
    time.sleep(3.1)
    res = kong.request(entity, bearer(token))
    assert res.status == 401
    assert 'error_description="The access token expired"' in res.headers["WWW-Authenticate"]


def test_key_rotation_new_kid_is_picked_up(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp, jwks_min_refresh_interval=1))
    assert kong.request(entity, bearer(minter.token())).status == 200
    rotated = SigningKey("RS256")
    idp.keys.append(rotated.jwk())
    time.sleep(1.1)
    assert kong.request(entity, bearer(minter.token(key=rotated))).status == 200
    idp.keys[:] = [rotated.jwk()]
    old = minter.token()
    time.sleep(1.1)
    # The old key still sits in the held set until the next refresh; force one with a new kid.
    assert kong.request(entity, bearer(minter.token(key=SigningKey("RS256")))).status == 401
    assert kong.request(entity, bearer(old)).status == 401, "a key gone from the realm is refused"


def test_random_kid_flood_causes_few_downloads(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp))
    assert kong.request(entity, bearer(minter.token())).status == 200
    before = idp.jwks_requests
    attacker = SigningKey("RS256")
    started = time.monotonic()
    for _ in range(1000):
        forged = minter.token(key=attacker, headers={"kid": uuid.uuid4().hex})
        assert kong.request(entity, bearer(forged)).status == 401
    elapsed = time.monotonic() - started
    allowed = 1 + int(elapsed // 10)  # one per jwks_min_refresh_interval (10 s default)
    assert idp.jwks_requests - before <= allowed, (idp.jwks_requests - before, elapsed)


def test_embedded_key_locations_are_never_fetched(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    attacker_idp = LocalIdP().start()
    try:
        attacker = SigningKey("RS256")
        attacker_idp.keys.append(attacker.jwk())
        entity = kong.plugin(config(idp))
        token = minter.token(key=attacker, headers={"jku": attacker_idp.jwks_uri, "x5u": attacker_idp.jwks_uri,
                                                    "jwk": attacker.jwk()}, iss=idp.issuer)
        assert kong.request(entity, bearer(token)).status == 401
        forged_iss = minter.token(key=attacker, iss=attacker_idp.issuer)
        assert kong.request(entity, bearer(forged_iss)).status == 401
        assert attacker_idp.jwks_requests == 0 and attacker_idp.discovery_requests == 0
    finally:
        attacker_idp.stop()


def test_held_keys_survive_an_outage_and_none_held_is_503(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp, jwks_refresh_interval=10))
    assert kong.request(entity, bearer(minter.token())).status == 200
    idp.stop()
    assert kong.request(entity, bearer(minter.token())).status == 200, "held keys keep working"

    dead = LocalIdP()  # never started: its port refuses connections
    dead_entity = kong.plugin({"issuer": dead.issuer, "audiences": ["orders-api"], "http_timeout": 0.5})
    token = Minter(dead.issuer, SigningKey("RS256")).token()
    res = kong.request(dead_entity, bearer(token))
    assert res.status == 503
    assert res.headers["Retry-After"] == "5"
    assert res.body == {"message": "The identity provider cannot be reached"}
    assert "WWW-Authenticate" not in res.headers
    dead._server.server_close()


def test_provider_errors_and_garbage_are_503(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    idp.fail_with = 500
    entity = kong.plugin(config(idp))
    assert kong.request(entity, bearer(minter.token())).status == 503


def test_several_workers_share_one_key_set(plugin_server: PluginServerProcess, idp: LocalIdP, minter: Minter) -> None:
    gateway = Kong(plugin_server, workers=4)
    try:
        entity = gateway.plugin(config(idp))
        for _ in range(8):
            assert gateway.request(entity, bearer(minter.token())).status == 200
        starts = gateway.rpc.calls.count("plugin.StartInstance")
        assert starts == 4, "Kong starts one instance per worker"
        assert idp.jwks_requests == 1, "but they share one process-wide key set"
    finally:
        gateway.rpc.close()


def test_config_change_starts_a_new_instance_and_closes_the_old(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp))
    assert kong.request(entity, bearer(minter.token())).status == 200
    changed = kong.update(entity, config(idp, required_roles=["realm:admin"]))
    assert kong.request(changed, bearer(minter.token())).status == 403
    assert kong.rpc.calls[-4:-2] == ["plugin.StartInstance", "plugin.CloseInstance"]


def test_concurrent_requests(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp))
    tokens = [minter.token() for _ in range(8)]
    statuses: list[int] = []

    def client(i: int) -> None:
        for j in range(20):
            statuses.append(kong.request(entity, bearer(tokens[(i + j) % 8])).status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [200] * 160


def test_invalid_config_fails_closed_at_instance_start(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp))
    entity.validated = False  # as if it reached the plugin server past Kong's validation
    entity.config["verify_audience"] = True
    entity.config["audiences"] = []
    res = kong.request(entity, bearer(minter.token()))
    assert res.status == 500 and not res.proxied
    assert any("audiences must name at least one audience" in e for e in res.errors), res.errors


def test_non_utf8_header_bytes_do_not_open_the_gateway(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp))
    res = kong.request(entity, [("Authorization", b"Bearer \xff\xfe"), ("X-Junk", b"\xc3\x28")])
    assert res.status == 401 and not res.proxied, res.errors
    res = kong.request(entity, bearer(minter.token()) + [("User-Agent", b"caf\xe9")])
    assert res.status == 200, res.errors
    assert res.errors == []


def test_stock_kong_pdk_listener_would_fail_open_on_the_same_bytes(idp: LocalIdP) -> None:
    """Why kcauth ships its own listener: the same plugin class under kong-pdk's stock server."""
    prefix = Path(subprocess.check_output(["mktemp", "-d", "/tmp/kcs.XXXX"], text=True).strip())
    cmd = f"{sys.executable} {FAULTS / 'stock_server.py'} --no-lua-style"
    server = PluginServerProcess(prefix, f"{cmd} --kong-prefix {prefix} --socket-name kcauth.socket",
                                 f"{cmd} --dump", prefix / "kcauth.socket", env=plugin_server_env())
    server.start()
    gateway = Kong(server, rpc_timeout=3)
    try:
        entity = gateway.plugin(config(idp))
        assert gateway.request(entity, [("Authorization", "Bearer x")]).status == 401
        res = gateway.request(entity, [("Authorization", b"Bearer \xff")])
        assert res.status == 200 and res.proxied and res.errors, "stock kong-pdk drops the connection"
    finally:
        gateway.rpc.close()
        server.stop()


def test_plugin_fault_is_refused_and_the_server_keeps_answering(idp: LocalIdP, minter: Minter, tmp_path: Path) -> None:
    prefix = Path(subprocess.check_output(["mktemp", "-d", "/tmp/kcf.XXXX"], text=True).strip())
    server = start_plugin_server(prefix, env={"PYTHONPATH": str(FAULTS), "KCAUTH_TEST_FAULT": "1"})
    gateway = Kong(server, rpc_timeout=5)
    try:
        entity = gateway.plugin(config(idp))
        boom = gateway.request(entity, bearer("boom"))
        assert boom.status == 500 and not boom.proxied
        assert boom.body == {"message": "An unexpected error occurred"}
        assert any("ZeroDivisionError" in line for line in gateway.error_log)
        assert not any("boom" in line for line in gateway.error_log), "no token text in logs"
        for _ in range(3):
            assert gateway.request(entity, bearer(minter.token())).status == 200
            assert gateway.request(entity, bearer("boom")).status == 500
        assert server.alive()
    finally:
        gateway.rpc.close()
        server.stop()


def test_dead_plugin_server_fails_open_in_kong_and_the_acl_guard_closes_it(
        idp: LocalIdP, minter: Minter) -> None:
    prefix = Path(subprocess.check_output(["mktemp", "-d", "/tmp/kcd.XXXX"], text=True).strip())
    server = start_plugin_server(prefix)
    gateway = Kong(server, rpc_timeout=5)
    try:
        entity = gateway.plugin(config(idp))
        guarded = gateway.request(entity, bearer(minter.token()), acl_allow=["kcauth:authenticated"])
        assert guarded.status == 200 and guarded.upstream("X-Authenticated-Groups") == ["kcauth:authenticated"]
        server.kill()
        gateway.rpc.close()
        unguarded = gateway.request(entity, [])
        assert unguarded.status == 200 and unguarded.proxied, "Kong itself fails open"
        assert unguarded.errors, "and only logs the error"
        closed = gateway.request(entity, [], acl_allow=["kcauth:authenticated"])
        assert closed.status == 401 and not closed.proxied, "the ACL guard refuses it"
        server.start()
        back = gateway.request(entity, bearer(minter.token()), acl_allow=["kcauth:authenticated"])
        assert back.status == 200, back.errors
    finally:
        gateway.rpc.close()
        server.stop()


def test_dump_is_what_kong_needs() -> None:
    out = subprocess.run("kcauth-pluginserver --dump", shell=True, capture_output=True, check=True,
                         env={**plugin_server_env(), "HOME": "/tmp"}).stdout
    info = json.loads(out)[0]
    assert info["Name"] == "kcauth" and info["Phases"] == ["access"]
    assert 950 < info["Priority"] < 990
    major, minor, patch = info["Version"].split(".")
    assert all(p.isdigit() for p in (major, minor, patch))


def test_multiprocessing_mode_is_refused() -> None:
    res = subprocess.run("kcauth-pluginserver -m --kong-prefix /tmp", shell=True, capture_output=True,
                         text=True, env=plugin_server_env())
    assert res.returncode != 0 and "multiprocessing" in res.stderr


@pytest.mark.parametrize("bad", [{"algorithms": ["HS256"]}, {"algorithms": ["none"]}, {"leeway": -1},
                                 {"issuer": "ftp://x"}, {"required_roles": ["admin"]}])
def test_kong_refuses_bad_configs(kong: Kong, idp: LocalIdP, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        kong.plugin(config(idp, **bad))


def test_forged_none_token_with_known_kid(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin(config(idp))
    token = forge({"alg": "none", "kid": idp.primary.kid}, minter.claims())  # type: ignore[attr-defined]
    assert kong.request(entity, bearer(token)).status == 401


def test_provider_url_reaches_a_provider_whose_issuer_names_another_host(kong: Kong, idp: LocalIdP) -> None:
    idp.public_origin = "http://sso.invalid:8080"  # what tokens say; not resolvable from here
    token = Minter(idp.issuer, idp.primary).token()  # type: ignore[attr-defined]
    direct = kong.plugin(config(idp, http_timeout=0.5))
    assert kong.request(direct, bearer(token)).status == 503, "the issuer's host cannot be reached"
    internal = kong.plugin(config(idp, provider_url=idp.origin))
    res = kong.request(internal, bearer(token))
    assert res.status == 200, res.headers
    assert idp.discovery_requests >= 1 and idp.jwks_requests >= 1
    wrong_iss = Minter(f"{idp.origin}/realms/{idp.realm}", idp.primary).token()  # type: ignore[attr-defined]
    assert kong.request(internal, bearer(wrong_iss)).status == 401, "the issuer is still matched exactly"


def test_an_orphaned_plugin_server_exits(tmp_path: Path) -> None:
    """When Kong (its parent) dies, the plugin server must not linger."""
    prefix = Path(subprocess.check_output(["mktemp", "-d", "/tmp/kco.XXXX"], text=True).strip())
    # Like Kong, the parent stays until the server listens, then dies (kill -9 of Kong).
    launcher = ("import os, subprocess, sys, time; "
                f"p = subprocess.Popen(['kcauth-pluginserver', '--kong-prefix', {str(prefix)!r}], "
                "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                f"[time.sleep(0.05) for _ in range(400) if not os.path.exists({str(prefix / 'kcauth.socket')!r})]; "
                "print(p.pid)")
    pid = int(subprocess.check_output([sys.executable, "-c", launcher], env={**plugin_server_env(), "HOME": "/tmp"},
                                      text=True).strip())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # Reap it if it was reparented to us (pytest may be a subreaper).
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.kill(pid, 9)
    raise AssertionError("the orphaned plugin server kept running")
