"""kcauth's own server core (kong_plugin_kcauth/core.py) under what Kong does to it: Steps of one
event on different pooled connections, a connection dropped mid-event, hundreds of concurrent
connections, a restart under Kong's cached instance ids. Raw MessagePack-RPC where the harness
would hide it (tests/harness/kong.py `Rpc`)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from kong_plugin_kcauth.pluginserver.core import IDLE_WORKERS
from tests.conftest import at_once, bearer, guard_config, own_gateway
from tests.harness import kong_schema
from tests.harness.idp import LocalIdP, Minter
from tests.harness.kong import Kong, Rpc


@pytest.fixture(scope="module")
def core() -> Iterator[Kong]:
    with own_gateway("core") as gateway:
        yield gateway


def start_instance(kong: Kong, config: dict[str, object]) -> int:
    entity = kong.plugin(config)
    conf = kong_schema.kong_config_for_instance(kong.config_field, entity.config, plugin_id=entity.id, seq=1,
                                                route_id=entity.route_id)
    return int(kong.rpc.call("plugin.StartInstance", {"Name": "kcauth", "Config": json.dumps(conf)})["Id"])


def wait_until(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("not within the time")


def test_steps_of_one_event_on_different_connections(core: Kong, idp: LocalIdP, minter: Minter) -> None:
    """mp_rpc.lua Rpc:call takes any connection of the worker's pool for each call."""
    iid = start_instance(core, guard_config(idp))
    first, second, third = (Rpc(core.server.socket_path, 10) for _ in range(3))
    try:
        step = first.call("plugin.HandleEvent", {"InstanceId": iid, "EventName": "access"})
        assert step["Data"]["Method"] == "kong.request.get_headers"
        headers = {"authorization": [f"Bearer {minter.token()}"]}
        step = second.call("plugin.StepMultiMap", {"EventId": step["EventId"], "Data": headers})
        assert step["Data"]["Method"] == "kong.service.request.set_headers"
        step = third.call("plugin.Step", {"EventId": step["EventId"], "Data": None})
        assert step["Data"]["Method"] == "kong.ctx.shared.set"
        step = first.call("plugin.Step", {"EventId": step["EventId"], "Data": None})
        assert step["Data"] == "ret"
    finally:
        for rpc in (first, second, third):
            rpc.close()
    assert core.status()["Events"] == 0


def test_a_connection_dropped_mid_event_frees_it(core: Kong, idp: LocalIdP) -> None:
    iid = start_instance(core, guard_config(idp))
    before = core.status()
    for _ in range(20):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(core.server.socket_path))
            conn.sendall(msgpack.packb([0, 1, "plugin.HandleEvent", [{"InstanceId": iid, "EventName": "access"}]]))
            unpacker = msgpack.Unpacker(raw=False)
            answer = None
            while answer is None:
                unpacker.feed(conn.recv(65536))
                answer = next((m for m in unpacker if m[0] == 1), None)
            assert answer[3]["Data"]["Method"] == "kong.request.get_headers"  # waiting for its Step
    assert core.status()["Events"] >= 1
    wait_until(lambda: core.status()["Events"] == 0 and core.status()["Running"] == 0, seconds=10)
    after = core.status()
    # Idle workers (core.IDLE_WORKERS of them at most) wait for the next event; nothing else stays.
    assert after["Idle"] <= IDLE_WORKERS
    assert after["Greenlets"] - after["Idle"] <= before["Greenlets"] - before["Idle"], "no greenlet outlives its event"


def test_every_connection_starts_with_the_server_pid(core: Kong) -> None:
    """plugin.lua rpc_notifications.serverPid: when it changes, Kong drops the instances it
    started on this server, so a restarted server never gets an event for an old instance id. The
    pid is the worker's that serves the connection (a child of the process Kong started): a
    worker started again announces itself, and Kong starts its instances there again."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(core.server.socket_path))
        conn.sendall(msgpack.packb([0, 7, "plugin.GetStatus", []]))
        unpacker = msgpack.Unpacker(raw=False)
        messages: list[list[object]] = []
        while not any(m[0] == 1 for m in messages):
            unpacker.feed(conn.recv(65536))
            messages.extend(unpacker)
    assert messages[0][:2] == [2, "serverPid"] and messages[0][2] in core.server.tree_pids()[1:]
    assert messages[-1][0] == 1 and messages[-1][1] == 7


def test_instance_ids_of_a_restarted_server_are_new(idp: LocalIdP) -> None:
    ids = []
    for _ in range(2):
        with own_gateway("core") as gateway:
            ids.append(start_instance(gateway, guard_config(idp)))
    assert ids[0] != ids[1]


def test_two_hundred_concurrent_connections(core: Kong, idp: LocalIdP, minter: Minter) -> None:
    entity = core.plugin(guard_config(idp))
    tokens = [minter.token() for _ in range(20)]
    statuses = at_once(200, lambda: [core.request(entity, bearer(tokens[i % 20])).status for i in range(5)])
    assert [s for batch in statuses for s in batch] == [200] * 1000
    assert len(core.rpc._pool) >= 100, "each client thread held a connection of its own"
    assert core.status()["Events"] == 0


def test_the_socket_is_where_kong_looks(core: Kong) -> None:
    assert Path(core.server.socket_path).name == "kcauth.socket"
    assert "core server listening at" in core.server.log()
