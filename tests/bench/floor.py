"""The floor: a plugin that does no work, served exactly like kcauth.

It makes the PDK calls of kcauth's allow path (read the request headers, set the upstream
headers, hand groups to Kong's ACL plugin) with constant values, so its latency is what the
plugin-server bridge alone costs: `kcauth` minus `floor` is what kcauth itself costs.

    python -m tests.bench.floor --kong-prefix <dir> --socket-name floor.socket [-g]
"""

from __future__ import annotations

from typing import Any

NAME = "floor"

# Shaped like kcauth's output for the benchmark's tokens (same names, similar sizes).
HEADERS = {
    "X-Auth-Client": "test-cli",
    "X-Auth-Realm-Roles": '["offline_access","user"]',
    "X-Auth-Scope": "openid profile email orders:read",
    "X-Auth-Subject": "4f6c3c1e-0b0e-4d0c-9a57-2b1c3c7d9e01",
    "X-Auth-Username": "alice",
}
GROUPS = ["kcauth:authenticated", "orders-api:reader", "realm:offline_access", "realm:user"]


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def access(self, kong: Any) -> None:
        kong.request.get_headers(1000)  # as kcauth asks (decision/headers.py MAX_REQUEST_HEADERS)
        kong.service.request.set_headers(dict(HEADERS))
        kong.ctx.shared.set("authenticated_groups", list(GROUPS))


def _load() -> tuple[type, dict[str, Any], str]:
    return Plugin, {"type": "record", "fields": []}, "0.1.0"


def main(argv: list[str] | None = None) -> None:
    from kong_plugin_kcauth.server import run

    run(argv, load_plugin=_load, name=NAME, priority=980)


if __name__ == "__main__":
    main()
