"""kcauth's own plugin-server core: Kong's MessagePack-RPC plugin protocol in one OS thread.

Written from Kong 3.9's side of the protocol (kong/runloop/plugin_servers): mp_rpc.lua (`Rpc:call`:
one request `[0, id, method, [args]]` per pooled connection, answered `[1, id, error, result]`,
notifications `[2, label, args]` read and passed on; `bridge_loop`: `plugin.HandleEvent`, then one
typed `plugin.Step*` per PDK call until "ret"; `Rpc:handle_event`: an error containing "no plugin
instance" makes Kong start the instance and retry, any other error is logged and the request
PROXIED), plugin.lua (`get_instance_id`, instances per worker and `__seq__`, the `serverPid`
notification) and process.lua (the query command's dump). kong-pdk (kong_pdk/server.py) stays
available as `--server kong-pdk`; this core is the default.

How it runs (gevent, monkey-patched by server.py before anything else is imported):
- each connection from Kong is a gevent greenlet reading messages;
- each event's handler runs in its own greenlet, entered and left with direct switches: the
  connection switches into the handler, which runs until its next PDK call and switches back
  with it; the Step that answers it (on whatever connection Kong picked from its pool) switches
  in again. A handler that does I/O (key download, introspection, Redis) waits in gevent's hub
  like any greenlet, so other events and connections go on meanwhile;
- `kong.response.exit` ends the event without waiting for anything (Kong sends no Step after
  it): the handler runs to its end and its greenlet dies.
What it guarantees, as the rest of the server does (bridge.py for kong-pdk): client bytes that
are not UTF-8 decode (surrogateescape); nothing a handler does escapes (a raising handler, or a
PDK call that cannot be encoded, gets 500 through `kong.response.exit`); only "no plugin instance"
is an RPC error; no greenlet outlives its event: an event Kong gave up on (no Step within
`STEP_WAIT`, or its connection gone) is aborted, a handler still running after `HANDLER_WAIT` is
answered 503 and detached. Instance ids are random-based and every connection first carries a
`serverPid` notification, so after a restart Kong never sends an event to an instance id of the
previous process.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import msgpack
from gevent.server import StreamServer
from greenlet import getcurrent, greenlet

from ..ops import tracing
from .bridge import EVENT_METHODS, FAULT, RET, TERMINAL, TOO_SLOW

log = logging.getLogger("kcauth.core")

HANDLER_WAIT = 50.0  # below Kong's 60 s socket timeout (lua_socket_read_timeout), after which it proxies
STEP_WAIT = 65.0  # Kong gave up on the event by then
CONNECTION_GRACE = 2.0  # an event whose connection closed gets this long for a Step on another one
JANITOR_EVERY = 1.0
IDLE_WORKERS = 8  # finished handler greenlets kept for the next events
_DONE = object()  # what a handler's greenlet returns when it ends


class NoInstance(Exception):
    """Kong expects "no plugin instance" in the error text (mp_rpc.lua Rpc:handle_event)."""


class PDKError(Exception):
    """Kong answered a PDK call with an error (plugin.StepError), or the event is over."""


class _TooSlow(Exception):
    pass


class _Event:
    """One event and where it stands."""

    __slots__ = ("core", "id", "handler", "worker", "caller", "final", "awaiting", "aborted", "resuming",
                 "since", "connection", "peer")

    def __init__(self, core: Core, eid: int, handler: Callable[[Any], None]) -> None:
        self.core, self.id, self.handler = core, eid, handler
        self.worker: _Worker | None = None  # the greenlet running its handler
        self.caller: Any = None  # the greenlet that switched in last (a connection, the janitor)
        self.final: dict[str, Any] | None = None  # kong.response.exit, once called
        self.awaiting = False  # suspended in a PDK call, waiting for Kong's Step
        self.aborted = False
        self.resuming = False  # its caller is suspended in _resume, switched into it
        self.since = time.monotonic()  # of the current state, for the janitor
        self.connection: object | None = None  # the connection its last message went out on
        self.peer = 0  # the nginx worker whose request it is (its connection's peer pid)

    def call(self, method: str, args: tuple[Any, ...]) -> Any:
        """A PDK call from the handler (kong_pdk/pdk/__init__.py rpc_of, Python style)."""
        if method in TERMINAL:
            # Kong stores the response and ends the phase; the handler just goes on to its end.
            if self.final is None and not self.aborted:
                self.final = {"Method": method, "Args": list(args)}
            return None
        if self.aborted or self.final is not None:
            raise PDKError(f"{method}: the event is over")
        if method == "kong.log" or method.startswith("kong.log."):
            args = tuple(a if type(a) in (str, int, list, dict) else str(a) for a in args)
        message = {"Method": method, "Args": list(args)}
        self.awaiting = True
        data, error = self.caller.switch(message)
        if error is not None:
            raise PDKError(f"exception from {method}: {error}")
        return data


class _Worker(greenlet):  # type: ignore[misc]
    """A greenlet running handlers, one event at a time. A few idle ones are kept (IDLE_WORKERS),
    because each new greenlet costs Python a frame stack (an mmap and a munmap per event)."""

    def __init__(self, core: Core) -> None:
        super().__init__(self._loop)
        self.core = core
        self.event: _Event | None = None

    def _loop(self, event: _Event | None) -> None:
        core = self.core
        while event is not None:
            self.event = event
            core.running += 1
            try:
                event.handler(KONG)
            except BaseException:  # noqa: BLE001 - "ret" would make Kong proxy the request
                if event.final is None:
                    event.final = FAULT
            finally:
                core.running -= 1
            self.event = None
            if event.caller is None:
                # Nobody waits for it (detached while in I/O): idle until reused, in the hub.
                if len(core.idle) >= IDLE_WORKERS:
                    self.parent = gevent.get_hub()
                    return
                core.idle.append(self)
                event = gevent.get_hub().switch()
            else:
                event = event.caller.switch(_DONE)  # the next event, or None: end


class _Path:
    """`kong.request.get_headers` and the like: a dotted PDK name, callable in an event."""

    __slots__ = ("_name", "_children")

    def __init__(self, name: str) -> None:
        self._name = name
        self._children: dict[str, _Path] = {}

    def __getattr__(self, part: str) -> _Path:
        child = self._children.get(part)
        if child is None:
            child = self._children[part] = _Path(f"{self._name}.{part}")
        return child

    def __call__(self, *args: Any) -> Any:
        worker = getcurrent()
        event = worker.event if isinstance(worker, _Worker) else None
        if event is None:
            raise PDKError(f"{self._name} called outside an event")
        return event.call(self._name, args)


KONG = _Path("kong")  # the PDK object every handler gets


class _Instance:
    __slots__ = ("name", "plugin", "config", "start_time")

    def __init__(self, name: str, plugin: Any, config: dict[str, Any]) -> None:
        self.name, self.plugin, self.config, self.start_time = name, plugin, config, time.time()


class Core:
    """The RPCs of one plugin, served to Kong."""

    def __init__(self, name: str, plugin: type, info: dict[str, Any]) -> None:
        self.name, self.plugin, self.info = name, plugin, info
        self.instances: dict[int, _Instance] = {}
        self.events: dict[int, _Event] = {}
        self.idle: list[_Worker] = []
        self.running = 0
        self.connections: set[_Connection] = set()
        self.draining = False  # replaced (kong reload): connections go as they fall idle
        self.successor: Any = None  # while draining: a channel to the server that took over
        self.loaded_at = time.time()
        # Random-based ids: a restarted server never answers for an id the previous one gave.
        self._instance_ids = itertools.count(random.randrange(1 << 20, 1 << 30))
        self._event_ids = itertools.count(1)
        self.rpcs: dict[str, Callable[[Any], Any]] = {
            "plugin.StartInstance": self.start_instance, "plugin.CloseInstance": self.close_instance,
            "plugin.HandleEvent": self.handle_event, "plugin.GetStatus": self.get_status,
            "plugin.GetPluginInfo": lambda _name: self.info, "plugin.StepError": self.step_error,
            **{method: self.step for method in EVENT_METHODS - {"plugin.HandleEvent", "plugin.StepError"}},
        }

    # -- instances --

    def start_instance(self, args: Any) -> dict[str, Any]:
        if not isinstance(args, dict) or args.get("Name") != self.name:
            raise ValueError(f"{self.name}: no plugin named {args.get('Name') if isinstance(args, dict) else args}")
        config = json.loads(args.get("Config") or "{}")
        iid = next(self._instance_ids)
        self.instances[iid] = _Instance(self.name, self.plugin(config), config)  # a ConfigError names the field
        return {"Name": self.name, "Id": iid, "Config": config, "StartTime": self.instances[iid].start_time}

    def close_instance(self, iid: Any) -> dict[str, Any]:
        instance = self.instances.pop(iid, None)
        if instance is None:
            raise NoInstance(f"no plugin instance #{iid}")
        return {"Name": instance.name, "Id": iid, "Config": instance.config}

    def get_status(self, *_: Any) -> dict[str, Any]:
        return {
            "Pid": os.getpid(),
            "Plugins": {self.name: {
                "Name": self.name, "Modtime": self.loaded_at, "LoadTime": self.loaded_at,
                "Instances": [{"Name": i.name, "Id": iid, "Config": i.config, "StartTime": i.start_time}
                              for iid, i in self.instances.items()],
                "LastStartInstance": 0, "LastCloseInstance": 0}},
            "Events": len(self.events), "Running": self.running, "Threads": 1, "Idle": len(self.idle),
            "Greenlets": sum(1 for g in gc.get_objects() if isinstance(g, greenlet) and not g.dead),
        }

    # -- events --

    def handle_event(self, args: Any) -> dict[str, Any]:
        iid = args.get("InstanceId") if isinstance(args, dict) else args
        instance = self.instances.get(iid) if isinstance(iid, int) else None
        if instance is None:
            raise NoInstance(f"no plugin instance #{iid}")
        eid = next(self._event_ids)
        handler = getattr(instance.plugin, str(args.get("EventName")), None)
        if handler is None:
            return {"Data": RET, "EventId": eid}
        return self._resume(_Event(self, eid, handler), None)

    def step(self, args: Any, error: bool = False) -> dict[str, Any]:
        eid = args.get("EventId") if isinstance(args, dict) else None
        event = self.events.pop(eid, None) if isinstance(eid, int) else None
        if event is None or not event.awaiting:
            return {"Data": FAULT, "EventId": eid}  # an event Kong cannot go on with: refused, never proxied
        data = args.get("Data")
        return self._resume(event, (None, data) if error else (data, None))

    def step_error(self, args: Any) -> dict[str, Any]:
        return self.step(args, error=True)

    def _resume(self, event: _Event, value: Any) -> dict[str, Any]:
        """Switch into the event's handler until its next PDK call or its end."""
        me = getcurrent()
        event.caller = me
        worker = event.worker
        if worker is None:  # a new event: an idle worker, or a new one, takes it
            worker = event.worker = self.idle.pop() if self.idle else _Worker(self)
            value = event
        worker.parent = me  # should it end, it comes back here
        event.awaiting = False
        event.since = time.monotonic()
        self.events[event.id] = event  # the janitor sees it while it runs
        event.resuming = True
        try:
            message = worker.switch(value)
        except _TooSlow:
            self._detach(event)
            return {"Data": TOO_SLOW, "EventId": event.id}
        except BaseException:
            self._detach(event)
            raise
        finally:
            event.resuming = False
        if message is _DONE:
            self.events.pop(event.id, None)
            self._recycle(event)
            return {"Data": event.final or RET, "EventId": event.id}
        event.since = time.monotonic()
        return {"Data": message, "EventId": event.id}

    def sent(self, result: Any, connection: _Connection) -> None:
        """The answer of an event went out on `connection`."""
        eid = result.get("EventId") if isinstance(result, dict) else None
        event = self.events.get(eid) if isinstance(eid, int) else None
        if event is not None:
            event.connection = connection
            event.peer = connection.peer

    # -- hand-over (pluginserver/supervisor.py): each connection goes once nothing needs it --

    def drain(self, successor: Any = None) -> None:
        """Stop serving: hand Kong's connections to `successor` (a channel to the server that
        took the socket path over), or close them when there is none."""
        self.draining = True
        self.successor = successor
        self.tidy()

    def tidy(self) -> None:
        """While draining: let go of every connection of each nginx worker none of whose events
        waits for a Step here and none of whose connections is in use (an event's Steps come on
        any connection of its nginx worker: they all go at once, or none)."""
        held = {e.peer for e in self.events.values()} | {c.peer for c in self.connections if c.busy}
        for connection in [c for c in self.connections if c.peer not in held]:
            self.let_go(connection)

    def let_go(self, connection: _Connection) -> None:
        """To the successor, where what Kong sent on it meanwhile is read; else closed (Kong's
        pool drops a closed idle connection and opens a new one)."""
        self.connections.discard(connection)
        if self.successor is not None and connection.sock is not None:
            from .supervisor import pass_connection

            if not pass_connection(self.successor, connection.sock):
                self.successor = None
        connection.close()

    def _recycle(self, event: _Event) -> None:
        """The event's worker, done with it, idles for the next event or ends."""
        worker, event.worker = event.worker, None
        if worker is None or worker.dead:
            return
        if len(self.idle) < IDLE_WORKERS:
            self.idle.append(worker)
        else:
            worker.parent = getcurrent()
            worker.switch(None)  # its loop ends, and the greenlet with it

    def abort(self, eid: Any, reason: str = "aborted") -> None:
        """End an event Kong will hear no more of: its pending PDK call fails, the handler runs
        to its end (its worker is idle again, or ends), here and now."""
        event = self.events.pop(eid, None)
        if event is None or event.worker is None:
            return
        event.aborted = True
        if event.awaiting:
            me = getcurrent()
            event.caller = me
            event.awaiting = False
            event.worker.parent = me
            if event.worker.throw(PDKError(f"the event was {reason}")) is _DONE:
                self._recycle(event)
        else:
            self._detach(event)  # still in I/O: it ends on its own, into the hub

    def _detach(self, event: _Event) -> None:
        event.aborted = True
        event.caller = None
        if event.worker is not None and not event.worker.dead:
            event.worker.parent = gevent.get_hub()
        self.events.pop(event.id, None)

    def janitor(self) -> None:
        """Abort events Kong gave up on; answer for handlers that take too long."""
        while True:
            gevent.sleep(JANITOR_EVERY)
            now = time.monotonic()
            for event in list(self.events.values()):
                if event.awaiting:
                    gone = event.connection is not None and getattr(event.connection, "closed", False)
                    if now - event.since > STEP_WAIT or (gone and now - event.since > CONNECTION_GRACE):
                        self.abort(event.id, "abandoned by Kong")
                elif now - event.since > HANDLER_WAIT:
                    # Thrown from the hub's loop, where the caller is known to be suspended.
                    gevent.get_hub().loop.run_callback(_too_slow, event)


def _too_slow(event: _Event) -> None:
    if event.resuming and event.caller is not None and not event.caller.dead:
        event.caller.throw(_TooSlow())


class _Connection:
    __slots__ = ("closed", "busy", "peer", "sock")

    def __init__(self, sock: Any = None, peer: int = 0) -> None:
        self.closed = False
        self.busy = False  # from a request's first byte read to its answer sent
        self.peer = peer  # the nginx worker (pid) at the other end, when the supervisor told it
        self.sock = sock

    def close(self) -> None:
        if not self.closed and self.sock is not None:
            self.closed = True
            self.sock.close()


def serve(core: Core, path: str, listen_queue_size: int = 4096) -> None:
    """Listen on the Unix socket Kong connects to, forever (one process, no supervisor)."""
    from gevent import socket

    if os.path.exists(path):
        os.remove(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(listen_queue_size)
    gevent.spawn(core.janitor)
    log.info("kcauth core listening at %s", path)
    StreamServer(listener, lambda conn, _address: _handle(core, conn)).serve_forever()


def serve_channel(core: Core, channel: Any) -> None:
    """Serve the connections the supervisor hands over on `channel` (pluginserver/supervisor.py:
    each a descriptor with its peer's pid), until told to drain and every connection is closed."""
    from gevent import socket

    chan = socket.socket(fileno=channel.detach())
    gevent.spawn(core.janitor)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(chan, 64, 4)
        except OSError:
            data, fds = b"", []
        if not data and not fds:
            return  # the supervisor is gone: so is this worker
        if data == b"drain":
            core.drain(socket.socket(fileno=fds[0]) if fds else None)
            gevent.spawn(_exit_when_drained, core)
            continue
        peer = int.from_bytes(data[:4], "little", signed=True) if len(data) >= 4 else 0
        for fd in fds:
            gevent.spawn(_handle, core, socket.socket(fileno=fd), peer)


def _exit_when_drained(core: Core) -> None:
    while core.connections or core.events:
        gevent.sleep(0.05)
        core.tidy()
    tracing.flush()  # os._exit skips the exporter's own exit hook
    os._exit(0)


def _handle(core: Core, conn: Any, peer: int = 0) -> None:
    """One connection from Kong: requests in, answers out, in order.

    Straight on the socket under gevent's object: the next request comes only after Kong got
    the answer and ran the PDK call, so waiting for readability before `recv` saves the try that
    would fail, and an answer (a few hundred bytes) goes out in one `send`."""
    packer = msgpack.Packer(unicode_errors="surrogateescape")
    unpacker = msgpack.Unpacker(strict_map_key=False, unicode_errors="surrogateescape")
    connection = _Connection(conn, peer)
    core.connections.add(connection)
    raw, wait, readable = conn._sock, conn._wait, conn._read_event
    fed = parsed = 0  # bytes read, and the end of the last whole request: a part is in use
    try:
        # plugin.lua rpc_notifications.serverPid: Kong reads it with its first answer here.
        conn.sendall(packer.pack([2, "serverPid", os.getpid()]))
        while True:
            wait(readable)
            if connection.closed:
                return  # let go of (drain): what came is the successor's to read
            try:
                data = raw.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                return
            connection.busy = True
            unpacker.feed(data)
            fed += len(data)
            for message in unpacker:
                parsed = unpacker.tell()
                if not (isinstance(message, list) and len(message) == 4 and message[0] == 0):
                    return  # not a MessagePack-RPC request: not Kong
                _, msgid, method, params = message
                error, result = _dispatch(core, method, params)
                answer = _encode(core, packer, msgid, method, error, result)
                core.sent(result, connection)
                try:
                    sent = raw.send(answer)
                except BlockingIOError:
                    sent = 0
                if sent < len(answer):
                    conn.sendall(answer[sent:])
            connection.busy = parsed != fed
            if core.draining:
                core.tidy()
    except (ValueError, OSError, msgpack.exceptions.BufferFull):
        return  # undecodable bytes (not Kong), a connection Kong closed, or one closed here (drain)
    finally:
        core.connections.discard(connection)
        connection.closed = True
        conn.close()


def _dispatch(core: Core, method: Any, params: Any) -> tuple[Any, Any]:
    """(error, result) of one RPC: only "no plugin instance" is an error for an event."""
    rpc = core.rpcs.get(method) if isinstance(method, str) else None
    if rpc is None:
        return f"RPC for {method} is not supported", None
    event = method in EVENT_METHODS
    try:
        return None, rpc(*(params if isinstance(params, list) else [params]))
    except NoInstance as exc:
        return str(exc), None
    except Exception as exc:  # noqa: BLE001 - answer Kong rather than drop it
        if not event:
            # Kong logs it (a failed StartInstance is a 500 for the route); a ConfigError
            # names the setting the operator must fix and carries no secret.
            from ..config import ConfigError

            return (str(exc) if isinstance(exc, ConfigError) else f"{method} failed: {type(exc).__name__}"), None
        log.error("rpc %s failed: %s; the request is refused with 500", method, type(exc).__name__)
        eid = _event_id(params)
        core.abort(eid, "failed")
        return None, {"Data": FAULT, "EventId": eid}


def _encode(core: Core, packer: Any, msgid: Any, method: Any, error: Any, result: Any) -> bytes:
    try:
        return bytes(packer.pack([1, msgid, error, result]))
    except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
        log.error("rpc %s: cannot encode the answer (%s); the request is refused with 500", method, type(exc).__name__)
        if method in EVENT_METHODS and isinstance(result, dict):
            core.abort(result.get("EventId"), "unencodable")
            return bytes(packer.pack([1, msgid, None, {"Data": FAULT, "EventId": result.get("EventId")}]))
        return bytes(packer.pack([1, msgid, f"{method} failed: cannot encode the answer", None]))


def _event_id(params: Any) -> Any:
    first = params[0] if isinstance(params, list) and params else None
    return first.get("EventId") if isinstance(first, dict) else None
