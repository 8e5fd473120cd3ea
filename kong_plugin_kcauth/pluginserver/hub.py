"""The node's shared state, for the workers of one plugin server when no Redis is configured.

A process of its own (forked by the supervisor, forked again if it ends), holding in memory what
Redis holds for a cluster, with the few operations kcauth uses of Redis (revocation/node.py is
the client, behind revocation/shared.py `SharedStore`, which seals and MACs everything as it
does for Redis): keys with a time to live (GET, SET with NX/XX/PX), a lease's renewal
(compare-and-extend), SCAN by pattern, PUBLISH/SUBSCRIBE, and an atomic batch. So a revocation
one worker records reaches every worker within milliseconds, a DPoP proof is single use across
workers, the revocation feed has one reader per node, and an introspection answer serves every
worker. Should it end, it starts empty and the workers write back the revocations they hold, as
after an empty Redis.

It also serves the node's one metrics endpoint (`--metrics`): Prometheus' multiprocess mode over
what every worker records, bound in the background, retried until the port is free (a plugin
server being replaced may still hold it).

Protocol: MessagePack over a Unix stream socket; a request `[id, op, args]` is answered
`[id, result]`; a subscribed connection also gets `[None, channel, message]` pushes. Standard
library and msgpack only.
"""

from __future__ import annotations

import fnmatch
import os
import selectors
import socket
import sys
import threading
import time
from typing import Any

import msgpack

_SWEEP_EVERY = 1.0
_MAX_KEYS = 1_000_000  # a bound on memory whatever the workers write


class _Client:
    __slots__ = ("sock", "unpacker", "out", "channels")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.out = bytearray()
        self.channels: set[str] = set()


class Hub:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.expiry: dict[str, float] = {}  # key -> monotonic deadline
        self.channels: dict[str, set[_Client]] = {}
        self.selector = selectors.DefaultSelector()
        self._swept = time.monotonic()

    # -- the store --

    def _live(self, key: str, now: float) -> bool:
        deadline = self.expiry.get(key)
        if deadline is not None and deadline <= now:
            self.values.pop(key, None)
            self.expiry.pop(key, None)
            return False
        return key in self.values

    def get(self, key: str) -> bytes | None:
        return self.values.get(key) if self._live(key, time.monotonic()) else None

    def set(self, key: str, value: bytes, px: int | None, nx: bool = False, xx: bool = False) -> bool | None:
        now = time.monotonic()
        present = self._live(key, now)
        if (nx and present) or (xx and not present):
            return None
        if not present and len(self.values) >= _MAX_KEYS:
            self._sweep(now, force=True)
            if len(self.values) >= _MAX_KEYS:
                return None
        self.values[key] = value
        if px:
            self.expiry[key] = now + px / 1000
        else:
            self.expiry.pop(key, None)
        return True

    def extend(self, key: str, token: bytes, px: int) -> bool:
        """A lease's renewal: its time to live, when it still holds `token`."""
        now = time.monotonic()
        if not self._live(key, now) or self.values[key] != token:
            return False
        self.expiry[key] = now + px / 1000
        return True

    def scan(self, pattern: str) -> list[str]:
        now = time.monotonic()
        return [k for k in list(self.values) if fnmatch.fnmatchcase(k, pattern) and self._live(k, now)]

    def publish(self, channel: str, message: bytes) -> int:
        subscribers = self.channels.get(channel, set())
        for client in list(subscribers):
            self._send(client, [None, channel, message])
        return len(subscribers)

    def _sweep(self, now: float, force: bool = False) -> None:
        if not force and now - self._swept < _SWEEP_EVERY:
            return
        self._swept = now
        for key in [k for k, deadline in self.expiry.items() if deadline <= now]:
            self.values.pop(key, None)
            self.expiry.pop(key, None)

    # -- requests --

    def apply(self, client: _Client, op: str, args: list[Any]) -> Any:
        if op == "get":
            return self.get(args[0])
        if op == "set":
            return self.set(args[0], args[1], args[2], bool(args[3]), bool(args[4]))
        if op == "extend":
            return self.extend(args[0], args[1], args[2])
        if op == "scan":
            return self.scan(args[0])
        if op == "publish":
            return self.publish(args[0], args[1])
        if op == "multi":  # one request: nothing else runs in between
            return [self.apply(client, sub, sub_args) for sub, sub_args in args[0]]
        if op == "subscribe":
            client.channels.add(args[0])
            self.channels.setdefault(args[0], set()).add(client)
            return True
        if op == "ping":
            return True
        raise ValueError(f"unknown operation {op!r}")

    # -- the loop --

    def serve(self, path: str) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix_address(path))
        listener.listen(256)
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)
        while True:
            for key, mask in self.selector.select(_SWEEP_EVERY):
                if key.data is None:
                    self._accept(listener)
                elif mask & selectors.EVENT_READ:
                    self._read(key.data)
                if key.data is not None and mask & selectors.EVENT_WRITE:
                    self._flush(key.data)
            self._sweep(time.monotonic())

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        client = _Client(sock)
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client)
            return
        client.unpacker.feed(data)
        try:
            for message in client.unpacker:
                rid, op, args = message
                try:
                    result = self.apply(client, op, args)
                except Exception as exc:  # noqa: BLE001 - an error for that request, never the hub's end
                    self._send(client, [rid, None, f"{type(exc).__name__}"])
                    continue
                self._send(client, [rid, result])
        except (ValueError, TypeError, msgpack.exceptions.ExtraData):
            self._drop(client)  # not a worker

    def _send(self, client: _Client, message: list[Any]) -> None:
        client.out += msgpack.packb(message, use_bin_type=True)
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out) if client.out else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop(client)
            return
        del client.out[:sent]
        try:
            self.selector.modify(client.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0),
                                 client)
        except (KeyError, ValueError):
            pass

    def _drop(self, client: _Client) -> None:
        for channel in client.channels:
            self.channels.get(channel, set()).discard(client)
        try:
            self.selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()


def run(path: str, metrics_address: str | None = None, metrics_dir: str | None = None) -> None:
    """The hub process: the store at `path` (`@name`: an abstract socket name),
    and with `metrics_address`, the node's metrics over `metrics_dir`."""
    if metrics_address and metrics_dir:
        threading.Thread(target=_serve_metrics, args=(metrics_address, metrics_dir), daemon=True,
                         name="kcauth-metrics").start()
    Hub().serve(path)


def _serve_metrics(address: str, directory: str) -> None:
    """Every worker's metrics, summed (prometheus_client's multiprocess mode), at /metrics;
    the port taken as soon as it is free."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    host, _, port = address.rpartition(":")
    said = False
    while True:
        try:
            start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
            return
        except OSError as exc:
            if not said:
                sys.stderr.write(f"kcauth metrics: cannot listen at {address} yet ({exc.strerror}); retrying\n")
                said = True
            time.sleep(0.5)


def hub_address(supervisor_pid: int) -> str:
    """The hub's socket: an abstract Unix socket name (written `@name`, as `ss` shows them),
    private to the node and to this server."""
    return f"@kcauth-hub-{supervisor_pid}-{os.urandom(4).hex()}"


def unix_address(address: str) -> str:
    """`@name` is Linux's abstract namespace (a leading NUL); anything else a path."""
    return "\0" + address[1:] if address.startswith("@") else address
