"""The same behaviour with the plugin server in gevent mode (`-g`), the mode the README
recommends from the benchmark. The tests imported here run again, against a `-g` server."""

from __future__ import annotations

from tests.harness.kong import Kong, PluginServerProcess
from tests.test_introspection import (  # noqa: F401 - collected again here, in gevent mode
    test_breaker_fails_fast_after_three_failures,
    test_concurrent_requests_share_one_call,
    test_failures_are_503_by_default_and_local_when_chosen,
    test_slow_keycloak_times_out_to_503,
)
from tests.test_plugin_server import (  # noqa: F401
    test_allow_and_reject_paths_cost_three_and_two_round_trips,
    test_concurrent_requests,
    test_held_keys_survive_an_outage_and_none_held_is_503,
    test_key_rotation_new_kid_is_picked_up,
    test_non_utf8_header_bytes_do_not_open_the_gateway,
)
from tests.test_revocation import (  # noqa: F401
    test_a_session_logout_revokes_that_session_on_every_guard,
    test_two_processes_share_revocations_through_redis,
)
from tests.test_spec import spec_idp, test_case  # noqa: F401


PLUGIN_SERVER_ARGS = "-g"  # read by conftest.plugin_server


def test_the_server_really_runs_in_gevent_mode(plugin_server: PluginServerProcess, kong: Kong) -> None:
    assert "-g" in plugin_server.start_cmd.split()
    assert "server (gevent) started" in plugin_server.log()
