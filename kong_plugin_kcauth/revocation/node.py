"""The node's shared state as `SharedStore` (shared.py) uses Redis: a client of the hub that the
plugin server's supervisor runs when no Redis is configured (pluginserver/hub.py), offering the
part of redis-py's client kcauth calls, with its exceptions. So every worker of one plugin server
shares revocations, DPoP proofs, the feed's lease and introspection answers through the very code
(sealing, MACs, records, leases, write-back) that shares them between nodes through Redis.

`NODE_STORE` and `NODE_SECRET` (environment) say where the hub listens and the secret the
workers of this server share (the supervisor draws it at start: sealed entries mean nothing to
another server)."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import redis

NODE_STORE = "KCAUTH_NODE_STORE"
NODE_SECRET = "KCAUTH_NODE_SECRET"


def node_store() -> tuple[str, str] | None:
    """(hub address, node secret) when this process is a worker of a supervised server."""
    address, secret = os.environ.get(NODE_STORE), os.environ.get(NODE_SECRET)
    return (address, secret) if address and secret else None


class _Connection:
    """One socket to the hub, requests answered in order."""

    def __init__(self, address: str, timeout: float) -> None:
        self._address, self._timeout = address, timeout
        self._sock: socket.socket | None = None
        self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self._ids = itertools.count(1)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            try:
                sock.connect("\0" + self._address[1:] if self._address.startswith("@") else self._address)
            except OSError as exc:
                sock.close()
                raise redis.ConnectionError(type(exc).__name__) from None
            self._sock = sock
            self._unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        return self._sock

    def call(self, op: str, *args: Any) -> Any:
        rid = next(self._ids)
        sock = self._connect()
        try:
            sock.sendall(msgpack.packb([rid, op, list(args)], use_bin_type=True))
            while True:
                message = self.receive(sock)
                if message[0] == rid:
                    if len(message) > 2:
                        raise redis.ResponseError(str(message[2]))
                    return message[1]
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(type(exc).__name__) from None

    def receive(self, sock: socket.socket) -> list[Any]:
        while True:
            for message in self._unpacker:
                if isinstance(message, list) and len(message) >= 2:
                    return message
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError()
            self._unpacker.feed(data)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NodeClient:
    """What SharedStore calls of redis-py's client, on the hub."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address, self.timeout = address, timeout
        self._connection = _Connection(address, timeout)
        self._lock = threading.Lock()  # one request at a time on the connection (gevent-patched)

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            return self._connection.call(op, *args)

    def get(self, name: str) -> bytes | None:
        value: bytes | None = self._call("get", name)
        return value

    def set(self, name: str, value: bytes, px: int | None = None, nx: bool = False, xx: bool = False) -> bool | None:
        result: bool | None = self._call("set", name, value, px, nx, xx)
        return result

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self)

    def scan_iter(self, match: str, count: int = 500) -> Iterator[str]:
        yield from self._call("scan", match)

    def lock(self, name: str, timeout: float, blocking: bool = False, thread_local: bool = False) -> Lock:
        return Lock(self, name, timeout)

    def pubsub(self, ignore_subscribe_messages: bool = True) -> PubSub:
        return PubSub(self.address, self.timeout)


class Pipeline:
    """Commands sent as one batch, which the hub runs with nothing else in between."""

    def __init__(self, client: NodeClient) -> None:
        self._client = client
        self._ops: list[list[Any]] = []

    def set(self, name: str, value: bytes, px: int | None = None, nx: bool = False, xx: bool = False) -> Pipeline:
        self._ops.append(["set", [name, value, px, nx, xx]])
        return self

    def publish(self, channel: str, message: bytes) -> Pipeline:
        self._ops.append(["publish", [channel, message]])
        return self

    def execute(self) -> list[Any]:
        ops, self._ops = self._ops, []
        results: list[Any] = self._client._call("multi", ops)
        return results


class Lock:
    """redis-py's Lock as SharedStore.lease uses it: taken with a token, extended while held."""

    def __init__(self, client: NodeClient, name: str, timeout: float) -> None:
        self._client, self._name, self._timeout = client, name, timeout
        self._token: bytes | None = None

    def acquire(self, token: str) -> bool:
        value = token.encode()
        if self._client.set(self._name, value, px=int(self._timeout * 1000), nx=True):
            self._token = value
            return True
        return False

    def extend(self, additional_time: float, replace_ttl: bool = True) -> bool:
        if self._token is None:
            return False
        return bool(self._client._call("extend", self._name, self._token, int(additional_time * 1000)))


class PubSub:
    """A subscription on a connection of its own."""

    def __init__(self, address: str, timeout: float) -> None:
        self._connection = _Connection(address, timeout)

    def subscribe(self, channel: str) -> None:
        self._connection.call("subscribe", channel)

    def get_message(self, timeout: float) -> dict[str, Any] | None:
        sock = self._connection._connect()
        sock.settimeout(timeout)
        try:
            message = self._connection.receive(sock)
        except TimeoutError:
            return None
        except OSError as exc:
            self._connection.close()
            raise redis.ConnectionError(type(exc).__name__) from None
        if message[0] is not None:
            return None
        return {"type": "message", "channel": message[1], "data": message[2]}

    def close(self) -> None:
        self._connection.close()
