"""kcauth's side of Kong's plugin-server protocol, on kong-pdk's instance management.

Kong (kong/runloop/plugin_servers/rpc/mp_rpc.lua) sends `plugin.HandleEvent`, then one typed
`plugin.Step` per PDK call the handler makes, until the handler answers "ret"; after
`kong.response.exit` it sends nothing more. Any RPC error, or a dropped connection, and Kong only
logs it and PROXIES the request. So, beyond kong-pdk's own server:

- `EventServer` runs each event's handler on a pair of one-way queues (a thread per event, or a
  greenlet with `-g`): a handler never blocks on a put, so it ends as soon as it returns, also
  after `kong.response.exit`, when nobody reads its "ret" (kong-pdk's gevent mode parks the
  greenlet on an unbuffered channel forever, ~10 KB per refused request). An event whose Step
  never comes (Kong gave up) is dropped after `STEP_WAIT`; one whose handler does not answer
  within `HANDLER_WAIT` is answered 503. No global lock is held while a handler runs (kong-pdk's
  serializes handlers until their first PDK call and wedges if one raises before it).
- `Listener` decodes tolerantly (client header bytes need not be UTF-8) and never drops Kong's
  connection because of an event: a message that cannot be dispatched or encoded becomes that
  event's answer, a 500 through `kong.response.exit`, and the event is cleaned up. Only
  "no plugin instance" stays an RPC error, which makes Kong start the instance and retry.
"""

from __future__ import annotations

import functools
import gc
import queue
import re
import threading
from typing import Any

import msgpack

RET = "ret"
TERMINAL = frozenset({"kong.response.exit", "kong.response.error"})
HANDLER_WAIT = 50.0  # below Kong's 60 s socket timeout (lua_socket_read_timeout), after which it proxies
STEP_WAIT = 65.0  # Kong gave up on the event by then
EVENT_METHODS = frozenset({"plugin.HandleEvent"}) | {f"plugin.Step{kind}" for kind in (
    "", "Error", "Credential", "Consumer", "MemoryStats", "Route", "Service", "MultiMap", "Plugin")}


def exit_call(status: int, message: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An event's answer as Kong runs it: `kong.response.exit(status, {message}, headers)`."""
    return {"Method": "kong.response.exit", "Args": [status, {"message": message}, headers or {}]}


FAULT = exit_call(500, "An unexpected error occurred")
TOO_SLOW = exit_call(503, "The request could not be authenticated in time", {"Retry-After": "5"})


class EventGone(Exception):
    """A Step for an event that is no longer running."""


def server_class(use_gevent: bool) -> type:
    """kong-pdk's PluginServer with kcauth's event handling (imports kong-pdk, so call it after
    the gevent decision)."""
    from kong_pdk.exception import PluginServerException
    from kong_pdk.pdk import Kong as PdkKong
    from kong_pdk.server import PluginServer

    if use_gevent:
        import gevent
        import gevent.queue

        make_queue: Any = gevent.queue.Queue
        spawn: Any = gevent.spawn
    else:
        make_queue = queue.SimpleQueue

        def spawn(target: Any, *args: Any) -> None:
            threading.Thread(target=target, args=args, daemon=True, name="kcauth-event").start()

    class End:
        """One side of an event: it puts into one one-way queue and gets from the other, waiting
        at most `wait` seconds before `expired()` decides what getting gives."""

        def __init__(self, inbox: Any, outbox: Any, wait: float, expired: Any) -> None:
            self.inbox, self.outbox, self.wait, self.expired = inbox, outbox, wait, expired

        def put(self, value: Any) -> None:
            self.outbox.put(value)

        def get(self) -> Any:
            try:
                return self.inbox.get(timeout=self.wait)
            except queue.Empty:
                return self.expired()

    class EventServer(PluginServer):  # type: ignore[misc]
        event_id: int  # kong-pdk's counter, set by its __init__
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._lock = threading.Lock()
            self.running = 0
            self.records: dict[str, dict[str, Any]] = {}  # plugin name → its config record

        def get_plugin_info(self, name: str) -> dict[str, Any]:
            """kong-pdk's info, with the whole config record (entity checks included)."""
            info: dict[str, Any] = super().get_plugin_info(name)
            if name in self.records:
                info["Schema"]["fields"][0]["config"] = self.records[name]
            return info

        def handle_event(self, event: dict[str, Any]) -> dict[str, Any]:
            iid = event.get("InstanceId")
            instance = self.instances.get(iid)
            if instance is None:
                # Kong expects the error to start with "no plugin instance" (mp_rpc.lua).
                raise PluginServerException(f"no plugin instance #{iid}")
            handler = getattr(instance.cls, str(event.get("EventName")), None)
            with self._lock:
                eid = self.event_id
                self.event_id = eid + 1
            if handler is None:
                return {"Data": RET, "EventId": eid}
            to_plugin, to_server = make_queue(), make_queue()

            def kong_gave_up() -> Any:
                self.events.pop(eid, None)
                raise EventGone(f"event {eid}: Kong sent no Step")

            channel = End(to_server, to_plugin, HANDLER_WAIT, lambda: None)  # None: answer TOO_SLOW
            spawn(self._run, handler, End(to_plugin, to_server, STEP_WAIT, kong_gave_up))
            return self._answer(eid, channel, channel.get())

        def _step(self, data: dict[str, Any], is_error: bool) -> dict[str, Any]:
            eid = data.get("EventId")
            channel = self.events.get(eid)
            if channel is None or not isinstance(eid, int):
                raise EventGone(f"event id {eid} not found")
            value = data.get("Data")
            channel.put((None, value) if is_error else (value, None))
            return self._answer(eid, channel, channel.get())

        def _answer(self, eid: int, channel: Any, data: Any) -> dict[str, Any]:
            if data is None:
                self.abort(eid)
                data = TOO_SLOW
            if data == RET or (isinstance(data, dict) and data.get("Method") in TERMINAL):
                self.events.pop(eid, None)
            else:
                self.events[eid] = channel
            return {"Data": data, "EventId": eid}

        def abort(self, eid: Any) -> None:
            """End an event Kong will hear no more of: its handler's pending PDK call fails, so
            it finishes (and its thread or greenlet ends)."""
            channel = self.events.pop(eid, None)
            if channel is not None:
                channel.put((None, "the event was aborted"))

        def _run(self, handler: Any, channel: Any) -> None:
            with self._lock:
                self.running += 1
            try:
                handler(PdkKong(channel, False).kong)
                channel.put(RET)
            except BaseException:  # noqa: BLE001 - "ret" would make Kong proxy the request
                channel.put(FAULT)
            finally:
                with self._lock:
                    self.running -= 1

        def get_status(self, *args: Any) -> dict[str, Any]:
            status: dict[str, Any] = super().get_status(*args)
            status.update(Events=len(self.events), Running=self.running, Threads=threading.active_count(),
                          Greenlets=_live_greenlets() if use_gevent else 0)
            return status

    return EventServer


def _live_greenlets() -> int:
    from greenlet import greenlet

    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet) and not obj.dead)


@functools.lru_cache(maxsize=64)
def method_name(rpc: str) -> str:
    """"plugin.StepMultiMap" -> "step_multi_map", the PluginServer method serving it."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", rpc.partition(".")[2]).lower()


def listener_class() -> type:
    from kong_pdk.exception import PDKException, PluginServerException
    from kong_pdk.listener import UnixStreamServer

    from ..config import ConfigError

    class Listener(UnixStreamServer):  # type: ignore[misc]
        def handle(self, conn: Any, address: Any, *_: Any) -> None:
            packer = msgpack.Packer(unicode_errors="surrogateescape")
            unpacker = msgpack.Unpacker(strict_map_key=False, unicode_errors="surrogateescape")
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    unpacker.feed(data)
                    for message in unpacker:
                        if not (isinstance(message, list) and len(message) == 4 and message[0] == 0):
                            return  # not a MessagePack-RPC request (not Kong): drop the connection
                        _, msgid, method, params = message
                        conn.sendall(self._encode(packer, msgid, method, self._dispatch(method, params)))
            except (ValueError, OSError, msgpack.exceptions.BufferFull):
                return  # undecodable bytes (not Kong) or a connection Kong closed

        def _dispatch(self, method: Any, params: Any) -> tuple[Any, Any]:
            """(error, result) of one RPC."""
            if not isinstance(method, str) or not method.startswith("plugin."):
                return f"RPC for {method} is not supported", None
            event = method in EVENT_METHODS
            try:
                return None, getattr(self.ps, method_name(method))(*params)
            except PluginServerException as exc:
                if not event or "no plugin instance" in str(exc):
                    return str(exc), None
                error = type(exc).__name__
            except (PDKException, ConfigError) as exc:
                if not event:
                    return str(exc), None  # Kong logs it; a ConfigError names the setting to fix
                error = type(exc).__name__
            except EventGone:
                return None, {"Data": FAULT, "EventId": _event_id(params)}
            except Exception as exc:  # noqa: BLE001 - answer Kong rather than drop it
                if not event:
                    return f"{method} failed: {type(exc).__name__}", None
                error = type(exc).__name__
            self.logger.error(f"rpc {method} failed: {error}; the request is refused with 500")
            self.ps.abort(_event_id(params))
            return None, {"Data": FAULT, "EventId": _event_id(params)}

        def _encode(self, packer: msgpack.Packer, msgid: Any, method: Any, outcome: tuple[Any, Any]) -> bytes:
            error, result = outcome
            try:
                return bytes(packer.pack([1, msgid, error, result]))
            except (TypeError, ValueError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
                self.logger.error(f"rpc {method}: cannot encode the answer ({type(exc).__name__}); "
                                  "the request is refused with 500")
                if method in EVENT_METHODS and isinstance(result, dict):
                    self.ps.abort(result.get("EventId"))
                    return bytes(packer.pack([1, msgid, None, {"Data": FAULT, "EventId": result.get("EventId")}]))
                return bytes(packer.pack([1, msgid, f"{method} failed: cannot encode the answer", None]))

    return Listener


def _event_id(params: Any) -> Any:
    first = params[0] if isinstance(params, list) and params else None
    return first.get("EventId") if isinstance(first, dict) else None
