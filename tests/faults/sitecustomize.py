"""Loaded by the plugin server only in the fault-injection test (PYTHONPATH=tests/faults):
makes the plugin's own code raise for the token "boom", to prove a fault is refused (500) and
never wedges the server or fails open. The product has no test hook of its own."""

import os

if os.environ.get("KCAUTH_TEST_FAULT") == "1":
    from kong_plugin_kcauth.decision import guard as decision

    _decide = decision.Guard.decide

    def decide(self, presented, now):  # type: ignore[no-untyped-def]
        if presented.token == "boom":
            return 1 / 0
        return _decide(self, presented, now)

    decision.Guard.decide = decide
