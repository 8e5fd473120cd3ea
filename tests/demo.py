"""The no-Docker demo: `make demo` (python -m tests.demo).

Starts, on this machine and on loopback only, what docker-compose.yml starts in containers: the
real Keycloak (same bootstrap and realm as the test suite), Redis, an echo upstream, the real
kcauth plugin server, and, standing in for Kong, the test harness's gateway loaded with
kong/kong.yml (its compose host names rewritten to the local services). Then it prints how to get
a token and call each route, and runs until Ctrl-C.

Differences from real Kong, on purpose: only what kong.yml uses is emulated (anything else in the
file is refused with a message), and a killed plugin server is not respawned, so the ACL guard can
be watched answering 401 for it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from tests.conftest import start_plugin_server
from tests.harness.declarative import UnsupportedFeature, load
from tests.harness.gateway import EchoUpstream, Gateway
from tests.harness.kong import Kong
from tests.keycloak.admin import KeycloakAdmin
from tests.keycloak.server import KeycloakServer
from tests.services.redis import RedisServer

REPO = Path(__file__).resolve().parent.parent
KONG_YML = REPO / "kong" / "kong.yml"
CLIENT_SECRET = "orders-api-secret"  # the demo realm's public test secret (kong/keycloak/README.md)
REDIS_SECRET = "demo-only-redis-secret-change-me-0123456789"  # as docker-compose.yml
FEED_SECRET = "kcauth-feed-secret"  # the demo realm's revocation feed client (kong/keycloak/README.md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="gateway port (0: any free port)")
    parser.add_argument("--admin-port", type=int, default=8001, help="Admin API port (POST /config only)")
    parser.add_argument("--kong-yml", type=Path, default=KONG_YML)
    args = parser.parse_args(argv)
    busy = _busy_ports({"gateway": ("DEMO_PORT", args.port), "Admin API": ("DEMO_ADMIN_PORT", args.admin_port)})
    if busy:  # said before Keycloak's half minute of starting, not after it
        print(f"demo: {busy}", file=sys.stderr)
        return 2
    os.environ.setdefault("KCAUTH_CLIENT_SECRET", CLIENT_SECRET)
    os.environ.setdefault("KCAUTH_REDIS_SECRET", REDIS_SECRET)
    os.environ.setdefault("KCAUTH_FEED_SECRET", FEED_SECRET)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started: list[Any] = []
    try:
        print("starting Keycloak (the first run downloads it and takes a minute)...", flush=True)
        keycloak = KeycloakServer()
        keycloak.start()
        started.append(keycloak)
        redis_server = RedisServer()
        redis_server.start()
        started.append(redis_server)
        echo = EchoUpstream()
        started.append(echo)
        prefix = Path(tempfile.mkdtemp(prefix="kcdemo", dir="/tmp"))
        plugin_server = start_plugin_server(prefix)  # the default: kcauth's own core
        started.append(plugin_server)
        issuer_origin = keycloak.base_url.rstrip("/")
        decl = load(args.kong_yml, rewrite={
            "http://localhost:8080": issuer_origin,
            "http://keycloak:8080": issuer_origin,
            "http://echo:8080": echo.url,
            "redis": redis_server.host,
        })
        for route in decl.routes:
            redis = route.plugins.get("kcauth", {}).get("redis")
            if isinstance(redis, dict) and redis.get("host") == redis_server.host:
                redis["port"] = redis_server.port
        kong = Kong(plugin_server)
        gateway = Gateway.from_declarative(kong, decl).serve(port=args.port)
        started.append(gateway)
        admin_url = gateway.serve_admin(port=args.admin_port)
        admin = KeycloakAdmin(keycloak.base_url, keycloak.admin_user, keycloak.admin_password)
        receiver = gateway.url + "/kcauth/revocations"
        admin.update_client("kcauth", "test-cli", adminUrl=receiver)
        admin.set_client_attribute("kcauth", "test-cli", "backchannel.logout.url", receiver)
        logout = _logout_instructions(gateway.url, keycloak, admin.user_id("kcauth", "alice"))
        print(_instructions(gateway.url, keycloak.base_url, plugin_server.pid, logout), flush=True)
        print("READY " + json.dumps({"gateway": gateway.url, "admin": admin_url, "keycloak": keycloak.base_url,
                                     "plugin_server_pid": plugin_server.pid}), flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    except KeyboardInterrupt:
        return 0
    except UnsupportedFeature as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    finally:
        for service in reversed(started):
            try:
                service.stop()
            except Exception:  # noqa: BLE001 - stop the rest anyway
                pass
        print("demo stopped", flush=True)


def _busy_ports(wanted: dict[str, tuple[str, int]]) -> str | None:
    """Which of the wanted ports another process holds, and how to choose others; None if free."""
    busy = []
    for what, (variable, port) in wanted.items():
        if port == 0:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"port {port} ({what}, {variable}) is in use")
    if not busy:
        return None
    return ("; ".join(busy) + ". Choose free ones, for example: make demo DEMO_PORT=18000 DEMO_ADMIN_PORT=18001 "
            "(python -m tests.demo --port 18000 --admin-port 18001; 0 picks any free port)")


def _logout_instructions(gateway: str, keycloak: KeycloakServer, alice_id: str) -> str:
    admin_token = (f"curl -s -d grant_type=password -d client_id=admin-cli -d username={keycloak.admin_user} "
                   f"-d password='{keycloak.admin_password}' {keycloak.base_url}/realms/master/protocol/openid-connect/"
                   "token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'")
    return f"""A revocation: sign alice out as Keycloak's administrator (this run's password, printed here only);
Keycloak pushes a back-channel logout to kcauth's receiver route, and her token stops passing at once:

  ADMIN=$({admin_token})
  curl -i -X POST -H "Authorization: Bearer $ADMIN" \\
    {keycloak.base_url}/admin/realms/kcauth/users/{alice_id}/logout   # 204
  curl -i -H "Authorization: Bearer $ALICE" {gateway}/orders       # 401: her session was revoked
  ALICE=$(token alice)                                             # a new login passes again
"""


def _instructions(gateway: str, keycloak: str, pid: int | None, logout: str) -> str:
    token = (f"token() {{ curl -s -d grant_type=password -d client_id=test-cli -d username=\"$1\" "
             f"-d password=\"$1-pass\" {keycloak}/realms/kcauth/protocol/openid-connect/token "
             "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'; }")
    return f"""
kcauth demo is up. Gateway {gateway}, Keycloak {keycloak} (users alice/alice-pass, bob/bob-pass).
In another terminal (tokens live 30 minutes):

  {token}
  ALICE=$(token alice); BOB=$(token bob)
  curl -i {gateway}/public                                         # no plugin: 200
  curl -i {gateway}/orders                                         # 401, WWW-Authenticate: Bearer
  curl -i -H "Authorization: Bearer $ALICE" {gateway}/orders       # 200, x-auth-* headers in the echo
  curl -i -H "Authorization: Bearer $ALICE" {gateway}/admin        # 200: alice has the realm role admin
  curl -i -H "Authorization: Bearer $BOB" {gateway}/admin          # 403: bob has not
  curl -i -H "Authorization: Bearer $ALICE" {gateway}/payments     # 200, checked by introspection

{logout}
Last, the plugin server dies: /orders answers 401 from Kong's ACL guard, never 200:

  kill {pid}

Ctrl-C stops everything.
"""


if __name__ == "__main__":
    sys.exit(main())
