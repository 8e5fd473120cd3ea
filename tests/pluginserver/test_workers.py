"""The plugin server's process model (pluginserver/supervisor.py), with Kong's nginx workers as
processes of their own (tests/harness/nginx_worker.py): each nginx worker's connections reach one
worker of their own; what one worker learns (a logout, a DPoP proof) every worker knows without
Redis; a worker killed under load loses only the events it held; a hand-over to a new server
(`kong reload`) and a restart refuse nothing but what the numbers below say."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import (
    bearer,
    free_port,
    guard_config,
    own_gateway,
    plugin_server_env,
    receiver_config,
    short_prefix,
)
from tests.harness.dpop import BASE, PATH, Client, bound_token, dpop_headers
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong, PluginServerProcess, kcauth_commands
from tests.harness.nginx_worker import NginxWorker
from tests.harness.pushes import RECEIVER_PATH, logout_token

WORKERS = "--workers 2"


@pytest.fixture
def gateway() -> Iterator[Kong]:
    with own_gateway(extra_args=WORKERS) as kong:
        yield kong


@pytest.fixture
def nginx(gateway: Kong) -> Iterator[list[NginxWorker]]:
    workers = [NginxWorker(gateway.server.socket_path, gateway.info) for _ in range(2)]
    yield workers
    for worker in workers:
        worker.close()


def worker_pid(nginx_worker: NginxWorker) -> int:
    return int(nginx_worker.status()["Pid"])


def test_each_nginx_worker_is_served_by_a_worker_of_its_own(gateway: Kong, nginx: list[NginxWorker]) -> None:
    served = [worker_pid(w) for w in nginx]
    tree = gateway.server.tree_pids()
    assert len(set(served)) == 2 and set(served) <= set(tree[1:]), (served, tree)
    assert [worker_pid(w) for w in nginx] == served, "every connection of one nginx worker, to the same one"


def test_a_logout_one_worker_receives_is_enforced_by_the_other_within_100_ms(
        gateway: Kong, nginx: list[NginxWorker], idp: LocalIdP, minter: Minter) -> None:
    guard, receiver = gateway.plugin(guard_config(idp)), gateway.plugin(receiver_config(idp))
    token = minter.token(sid="session-7")
    assert [w.request(guard, bearer(token))["status"] for w in nginx] == [200, 200]  # each remembers it
    pushed = nginx[0].request(receiver, [("Content-Type", "application/x-www-form-urlencoded")], method="POST",
                              path=RECEIVER_PATH, body=f"logout_token={logout_token(idp, sid='session-7')}")
    assert pushed["status"] == 200, pushed
    recorded = time.monotonic()
    while nginx[1].request(guard, bearer(token))["status"] != 401:
        assert time.monotonic() - recorded < 1, "not enforced by the other worker"
    took = time.monotonic() - recorded
    print(f"a logout received by one worker, enforced by the other after {took * 1000:.0f} ms")
    assert took < 0.1


def test_a_dpop_proof_used_on_one_worker_is_refused_on_the_other(
        gateway: Kong, nginx: list[NginxWorker], idp: LocalIdP, minter: Minter) -> None:
    entity = gateway.plugin(guard_config(idp, public_base_url=BASE))
    client = Client()
    token = bound_token(minter, client)
    proof = client.proof(token)
    assert nginx[0].request(entity, dpop_headers(token, proof), path=PATH)["status"] == 200
    replayed = nginx[1].request(entity, dpop_headers(token, proof), path=PATH)
    assert replayed["status"] == 401 and "used before" in replayed["headers"]["WWW-Authenticate"], replayed
    assert nginx[1].request(entity, dpop_headers(token, client.proof(token)), path=PATH)["status"] == 200


GUARDED = ["kcauth:authenticated"]  # the ACL plugin after kcauth, as README's deployment advises


def loads(nginx: list[NginxWorker], entity: Any, token: str, seconds: float) -> list[dict[str, Any]]:
    """Both emulated nginx workers under load at once (4 connections each, the ACL guard after
    kcauth): their outcomes."""
    results: list[dict[str, Any]] = [{}, {}]

    def run(i: int) -> None:
        results[i] = nginx[i].load(entity, bearer(token), seconds, acl_allow=GUARDED)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_worker_killed_under_load_loses_only_the_events_it_held(
        gateway: Kong, nginx: list[NginxWorker], idp: LocalIdP, minter: Minter) -> None:
    entity = gateway.plugin(guard_config(idp))
    token = minter.token()
    victim = worker_pid(nginx[1])
    killer = threading.Timer(1.5, os.kill, (victim, signal.SIGKILL))
    killer.start()
    results = loads(nginx, entity, token, 4.0)
    killer.join()
    calm, hit = results
    print(f"worker {victim} killed under load: the other nginx worker {calm['outcomes']}; its own "
          f"{hit['outcomes']} {hit['errors']}")
    assert set(calm["outcomes"]) == {"proxied"} and not calm["errors"], "the other worker's traffic is untouched"
    # An event cut short is refused by the ACL guard, or proxied when the worker died after the
    # plugin's last call (the groups) was done: what lets a request through comes last.
    assert set(hit["outcomes"]) <= {"proxied", "401", "proxied after an error"}, "nothing else"
    cut = hit["outcomes"].get("401", 0) + hit["outcomes"].get("proxied after an error", 0)
    assert hit["outcomes"]["proxied"] > 0 and 0 < cut <= 8, \
        "the events in flight (4), and pooled connections taken as the kernel closed them"
    failed_at = hit["failed_at"]
    assert max(failed_at) - min(failed_at) < 0.1, "all at the moment of the kill: nothing after"
    assert not [e for e in hit["errors"] if "connect" in e], "no connection was refused"
    new = worker_pid(nginx[1])
    assert new != victim and new in gateway.server.tree_pids(), "a new worker took its place"


def test_a_hand_over_to_a_new_server_refuses_nothing(idp: LocalIdP, minter: Minter) -> None:
    """`kong reload`: a new server starts beside the old one, on the same socket path and metrics
    port, then Kong stops the old one (SIGTERM to the process it started)."""
    prefix, port = short_prefix("kch"), free_port()
    start, query, path = kcauth_commands(prefix, f"{WORKERS} --metrics 127.0.0.1:{port}")
    old = PluginServerProcess(prefix, start, query, path, env=plugin_server_env())
    old.start()
    new = PluginServerProcess(prefix, start, query, path, env=plugin_server_env())
    kong = Kong(old)
    nginx = [NginxWorker(path, kong.info) for _ in range(2)]
    try:
        entity = kong.plugin(guard_config(idp))
        token = minter.token()
        assert [w.request(entity, bearer(token))["status"] for w in nginx] == [200, 200]
        events: list[Any] = []

        def reload() -> None:
            time.sleep(1.0)
            new.start()  # binds the path: new connections go to it
            time.sleep(1.0)
            assert old.proc is not None
            old.proc.send_signal(signal.SIGTERM)  # process.lua stop_pluginservers
            events.append(time.monotonic())

        reloading = threading.Thread(target=reload)
        reloading.start()
        results = loads(nginx, entity, token, 4.0)
        reloading.join()
        print(f"hand-over under load: {results}")
        for result in results:  # Kong's "no plugin instance" retry (warn) is no refusal
            assert set(result["outcomes"]) == {"proxied"} and not result["failed_at"], result
        assert old.proc is not None and old.proc.wait(10) == 0, "the old server drained and ended"
        assert [worker_pid(w) for w in nginx][0] in new.tree_pids(), "Kong's connections are the new server's"
        deadline = time.monotonic() + 5
        while True:  # the metrics port, the old server's until it ended, is the new one's now
            try:
                assert "kcauth_requests_total" in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                break
            except (requests.RequestException, AssertionError):
                assert time.monotonic() < deadline, new.log()
                time.sleep(0.2)
    finally:
        for worker in nginx:
            worker.close()
        kong.rpc.close()
        old.stop()
        new.stop()


def connect_ms(path: Path, started: float, deadline: float) -> float:
    """Milliseconds from `started` until the socket accepts a connection."""
    while True:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return (time.monotonic() - started) * 1000
            except OSError:
                assert time.monotonic() < deadline, "the socket was never bound"
        time.sleep(0.001)


def test_a_restart_refuses_connections_only_until_the_socket_is_bound(idp: LocalIdP, minter: Minter) -> None:
    """What Kong's respawn and `kong restart` do: the whole server ends, a new one starts. Its
    socket is bound before anything heavy is imported: connections are refused only while the
    interpreter starts, and wait in the backlog while the workers load."""
    with own_gateway(extra_args=WORKERS) as kong:
        entity = kong.plugin(guard_config(idp))
        token = minter.token()
        assert kong.request(entity, bearer(token)).status == 200
        server = kong.server
        server.kill()
        kong.rpc.close()
        started = time.monotonic()
        server.spawn()  # what Kong does, a second later at most
        bound = connect_ms(server.socket_path, started, started + 20)
        res = kong.request(entity, bearer(token))
        answered = (time.monotonic() - started) * 1000
        print(f"restart: connections refused for {bound:.0f} ms (the interpreter's start); "
              f"the first request answered after {answered:.0f} ms (the workers' imports)")
        # Kong's own answer to a server that lost its instances: the harness, like Kong, re-creates it
        assert res.status == 200 and [e for e in res.errors if "no plugin instance" not in e] == [], res.errors
        assert bound < 500 and bound < answered, "bound before the workers were ready"


def test_a_server_run_outside_kong_refuses_nothing_while_kong_restarts(idp: LocalIdP, minter: Minter) -> None:
    """Kong 3.9+ without a start command (a sidecar, a service manager): Kong restarts around the
    server, which keeps its socket: the new Kong's first requests are served at once."""
    with own_gateway(extra_args=WORKERS) as first:
        entity = first.plugin(guard_config(idp))
        token = minter.token()
        assert first.request(entity, bearer(token)).status == 200
        first.rpc.close()  # Kong stops: its connections close
        restarted = Kong(first.server)  # a new Kong: new pools, no instances
        try:
            statuses = [restarted.request(entity, bearer(token)) for _ in range(20)]
            assert [r.status for r in statuses] == [200] * 20 and not [r for r in statuses if r.errors]
        finally:
            restarted.rpc.close()
