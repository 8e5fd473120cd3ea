"""A plugin that misbehaves on request, served by kcauth's plugin server core exactly like
kcauth (kong_plugin_kcauth.server.run): it proves what the core guarantees whatever a handler
does. The request's `X-Fault` header picks the misbehaviour:

- `unencodable`: a PDK call whose argument MessagePack cannot encode (a lone surrogate);
- `raise-first`: raise before any PDK call (kong-pdk's own server then never answers);
- `raise`: raise after a PDK call;
- anything else: behave (read headers, set one, return).

    python -m tests.faults.misbehaving --kong-prefix <dir> --socket-name misbehaving.socket [-g]
"""

from __future__ import annotations

from typing import Any

NAME = "misbehaving"


class Plugin:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.calls = 0

    def access(self, kong: Any) -> None:
        self.calls += 1
        if self.calls % 2 == 0 and self.config.get("raise_first_on_even"):
            raise RuntimeError("before any PDK call")
        fault = (kong.request.get_headers().get("x-fault") or [""])[0]
        if fault == "unencodable":
            kong.ctx.shared.set("authenticated_groups", ["\ud800"])
        elif fault == "raise":
            raise RuntimeError("after a PDK call")
        kong.service.request.set_headers({"X-Behaved": "yes"})


def _load() -> tuple[type, dict[str, Any], str]:
    schema = [{"raise_first_on_even": {"type": "boolean", "default": False,
                                       "description": "Raise before the first PDK call on every second request."}}]
    return Plugin, {"type": "record", "fields": schema}, "0.1.0"


def main(argv: list[str] | None = None) -> None:
    from kong_plugin_kcauth.server import run

    run(argv, load_plugin=_load, name=NAME, priority=980)


if __name__ == "__main__":
    main()
