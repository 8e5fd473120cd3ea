"""Kong's auth-plugin conventions, with the semantics of its bundled key-auth and jwt handlers
(kong/plugins/key-auth/handler.lua): logical OR with `anonymous`, `run_on_preflight`, groups
for ACL; and the plugin server command as an operator runs it (priority, help, version, socket
name, a parent that is pid 1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.conftest import bearer, plugin_server_env
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong

PARTNER = {"id": str(uuid.uuid4()), "username": "partner"}
PARTNER_KEY = {"id": str(uuid.uuid4())}
ANONYMOUS = {"id": str(uuid.uuid4()), "username": "anonymous"}


def test_with_anonymous_a_request_another_auth_plugin_authenticated_is_left_to_it(
        kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    """key-auth: "we're already authenticated, and we're configured for using anonymous,
    hence we're in a logical OR between auth methods and we're already done"."""
    kong.consumers = [ANONYMOUS, PARTNER]
    try:
        either = kong.plugin({"issuer": idp.issuer, "audiences": ["orders-api"], "anonymous": "anonymous"})
        res = kong.request(either, [("X-Auth-Subject", "forged")], authenticated_by=(PARTNER, PARTNER_KEY))
        assert res.status == 200 and res.proxied
        assert res.consumer == PARTNER and res.credential == PARTNER_KEY, "the other plugin's consumer stays"
        assert res.upstream("X-Auth-Subject") == [], "kcauth's headers never carry a client's value"
        assert res.upstream("X-Consumer-ID") == [PARTNER["id"]]
        assert "authenticated_groups" not in res.ctx_shared

        token = kong.request(either, bearer(minter.token()))
        assert token.status == 200 and token.upstream("X-Auth-Subject") == [minter.claims()["sub"]]
        nothing = kong.request(either, [])
        assert nothing.status == 200 and nothing.consumer == ANONYMOUS, "neither: the anonymous consumer"

        both = kong.plugin({"issuer": idp.issuer, "audiences": ["orders-api"]})  # no anonymous: AND
        assert kong.request(both, [], authenticated_by=(PARTNER, PARTNER_KEY)).status == 401
    finally:
        kong.consumers = []


def test_preflight_requests_pass_only_when_told(kong: Kong, idp: LocalIdP) -> None:
    strict = kong.plugin({"issuer": idp.issuer, "audiences": ["orders-api"]})
    assert kong.request(strict, [], method="OPTIONS").status == 401, "run_on_preflight is on by default"
    lenient = kong.plugin({"issuer": idp.issuer, "audiences": ["orders-api"], "run_on_preflight": False})
    res = kong.request(lenient, [("X-Auth-Subject", "forged")], method="OPTIONS")
    assert res.status == 200 and res.proxied and res.upstream("X-Auth-Subject") == []
    assert kong.request(lenient, [], method="GET").status == 401
    assert kong.request(lenient, [], method="OPTIONS", acl_allow=["kcauth:authenticated"]).status == 401, \
        "like key-auth's, the preflight carries no groups: Kong's ACL still refuses it"


def test_keycloak_groups_are_handed_to_acl(kong: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = kong.plugin({"issuer": idp.issuer, "audiences": ["orders-api"], "groups_claim": "groups"})
    token = minter.token(groups=["/staff/admins", "ops", 7, ""])
    res = kong.request(entity, bearer(token), acl_allow=["group:/staff/admins"])
    assert res.status == 200
    assert {"group:/staff/admins", "group:ops", "kcauth:authenticated", "realm:user"} <= set(
        res.ctx_shared["authenticated_groups"])
    assert "group:7" not in res.ctx_shared["authenticated_groups"]
    assert kong.request(entity, bearer(minter.token()), acl_allow=["group:ops"]).status == 403
    off = kong.plugin({"issuer": idp.issuer, "audiences": ["orders-api"]})
    assert not any(g.startswith("group:") for g in kong.request(off, bearer(token)).ctx_shared["authenticated_groups"])


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kcauth-pluginserver", *args], capture_output=True, text=True, timeout=60,
                          env={**plugin_server_env(), "HOME": "/tmp"})


def test_the_command_is_kcauths_own() -> None:
    from kong_plugin_kcauth import __version__

    assert run("--version").stdout.strip() == f"kcauth-pluginserver {__version__}"
    helped = run("--help").stdout
    assert helped.startswith("usage: kcauth-pluginserver") and "--priority" in helped and "Kong Gateway" in helped
    dump = json.loads(run("--dump", "--priority", "1100").stdout)[0]
    assert dump["Priority"] == 1100, "Kong's bundled auth plugins run at 1050 to 1450: this moves kcauth among them"
    assert json.loads(run("--dump").stdout)[0]["Priority"] == 980
    refused = run("--kong-prefix", "/nonexistent/prefix")
    assert refused.returncode == 2 and "does not exist" in refused.stderr


def wait_for_socket(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {path}")


def test_socket_name_given_with_an_equals_sign_is_kept() -> None:
    prefix = Path(tempfile.mkdtemp(prefix="kcq", dir="/tmp"))
    proc = subprocess.Popen(["kcauth-pluginserver", f"--kong-prefix={prefix}", "--socket-name=custom.sock"],
                            env={**plugin_server_env(), "HOME": "/tmp"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_socket(prefix / "custom.sock")
        assert not (prefix / "kcauth.socket").exists()
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)


def test_a_server_whose_parent_is_pid_1_keeps_serving() -> None:
    """systemd, tini, `docker --init` or Kong's "managed externally" mode: the parent is init
    from the start, so there is no Kong to outlive."""
    prefix = Path(tempfile.mkdtemp(prefix="kc1", dir="/tmp"))
    # A new pid namespace whose pid 1 is a shell that stays; the server is its child.
    script = f"kcauth-pluginserver --kong-prefix {prefix} & echo ppid-$(cat /proc/$!/stat | cut -d' ' -f4); wait"
    proc = subprocess.Popen(["unshare", "--fork", "--pid", "--mount-proc", "sh", "-c", script],
                            env={**plugin_server_env(), "HOME": "/tmp"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ppid-1", "the server's parent is pid 1"
        wait_for_socket(prefix / "kcauth.socket")
        time.sleep(3)  # the old parent watch exited within a second
        assert proc.poll() is None
        wait_for_socket(prefix / "kcauth.socket", seconds=2)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)
