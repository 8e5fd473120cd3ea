"""Loaded by the plugin server only in the fault-injection test (PYTHONPATH=tests/faults):
makes the plugin's own code raise for the token "boom", to prove a fault is refused (500) and
never wedges the server or fails open. The product has no test hook of its own."""

import os

if os.environ.get("KCAUTH_TEST_FAULT") == "1":
    from kong_plugin_kcauth import handler

    _admit = handler.Guard.admit

    def admit(self, request_headers, now):  # type: ignore[no-untyped-def]
        if request_headers.get("authorization") == ["Bearer boom"]:
            return 1 / 0
        return _admit(self, request_headers, now)

    handler.Guard.admit = admit
