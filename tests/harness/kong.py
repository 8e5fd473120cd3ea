"""Kong's side of the plugin-server protocol, emulated for tests.

Written from Kong 3.9.3's source (github Kong/kong, tag 3.9.3); each piece names its origin
(what nginx answers before any of it runs: tests/harness/nginx.py):
- kong/runloop/plugin_servers/process.lua: the query command's JSON (first plugin only), the
  start command run as `exec <cmd>` with stdout and stderr merged;
- kong/runloop/plugin_servers/rpc/mp_rpc.lua: `Rpc:call` (one MessagePack-RPC request per call
  on a pooled Unix socket connection), `bridge_loop` (HandleEvent, then one typed Step per PDK
  call until "ret"), `must_fix` (header multimaps: a single value becomes a one-element array),
  `get_step_method` (StepMultiMap, StepError, ...), and `Rpc:handle_event`: an RPC error is only
  logged and the request goes on to be proxied (FAIL-OPEN), except "no plugin instance", which
  resets the instance and retries;
- kong/runloop/plugin_servers/plugin.lua: `get_instance_id` (instances keyed per worker by plugin
  id and `__seq__`, a failed StartInstance raises a Lua error, a replaced instance is closed) and
  the `exposed_api` overrides;
- kong/init.lua `execute_collecting_plugins_iterator`: plugins run by priority in coroutines, a Lua
  error becomes 500 {"message":"An unexpected error occurred"}, a `delayed_response` stops the
  remaining plugins;
- kong/pdk/response.lua `exit`: inside the access phase the response is stored and the plugin's
  coroutine yields, so the plugin server never gets a Step for it;
- kong/pdk/service/request.lua `set_headers` / `set_header` / `clear_header` and
  kong/pdk/private/checks.lua: header type checks (a bad value is a Lua error) and replacement
  semantics (an empty array removes the header, "" becomes " ");
- kong/plugins/acl/handler.lua and groups.lua: the bundled ACL plugin (priority 950) for a request
  without a consumer: no `authenticated_groups` → 401, not allowed → 403.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from . import kong_schema, nginx

UNEXPECTED = {"message": "An unexpected error occurred"}
# kong/pdk/response.lua: kong.response.error's default messages.
_ERROR_MESSAGES = {401: "Unauthorized", 403: "Forbidden"}


class RpcError(Exception):
    """What `Rpc:call` returns as its second value: a transport or server-side error."""


class LuaError(Exception):
    """A Lua runtime error inside a plugin's coroutine (Kong answers 500)."""


# --- the plugin server process (process.lua) ---------------------------------------------------

_DUMPS: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the plugin server's supervisor, hub and workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(sorted(children.get(current, [])))
    return tree


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The resident memory in MB of a process and its descendants (a plugin server: its
    supervisor, hub and workers), summed; `VmHWM`: each one's peak so far, summed."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def _socket_file(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_ctime_ns


class PluginServerProcess:
    """The plugin server, started with the exact command line Kong would be configured with."""

    def __init__(self, prefix: Path, start_cmd: str, query_cmd: str, socket_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.prefix = prefix
        self.start_cmd = start_cmd
        self.query_cmd = query_cmd
        self.socket_path = socket_path
        self.env = {**os.environ, **(env or {})}
        self.log_path = prefix / "pluginserver.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def query(self) -> dict[str, Any]:
        """process.lua query_external_plugin_info: JSON-decode stdout, keep the first plugin. Kong
        runs it once when it starts; the same command in the same environment prints the same
        dump, so the harness runs each once (tests/e2e and tests/pluginserver run `--dump` itself)."""
        key = (self.query_cmd, tuple(sorted(self.env.items())))
        out = _DUMPS.get(key)
        if out is None:
            out = _DUMPS[key] = subprocess.run(self.query_cmd, shell=True, capture_output=True, env=self.env,
                                               timeout=60, check=True).stdout
        dump = json.loads(out)
        return (dump.get("Plugins") if isinstance(dump, dict) else dump)[0]

    def spawn(self) -> None:
        """process.lua: ngx_pipe.spawn("exec " .. start_command, { merge_stderr = true }), and
        nothing else: Kong does not wait for the socket."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["/bin/sh", "-c", "exec " + self.start_cmd], stdout=log,
                                     stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        log.close()

    def start(self, timeout: float = 20.0) -> None:
        """`spawn`, then wait until the socket takes connections (what a test needs before it
        starts; Kong itself does not wait)."""
        before = _socket_file(self.socket_path)  # a predecessor's (a reload), or a stale one
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"plugin server exited at start:\n{self.log()}")
            if _socket_file(self.socket_path) not in (None, before):
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(str(self.socket_path))
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"plugin server did not listen on {self.socket_path}:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def tree_pids(self) -> list[int]:
        """The process Kong started, then its hub and workers (pluginserver/supervisor.py)."""
        return process_tree(self.proc.pid) if self.proc else []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# --- MessagePack-RPC client (mp_rpc.lua Rpc:call) ------------------------------------------------

class Rpc:
    """One request per call on a pooled connection, as Kong's cosockets with keepalive."""

    def __init__(self, socket_path: Path, timeout: float,
                 on_server_pid: Callable[[Any], None] | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.on_server_pid = on_server_pid  # plugin.lua rpc_notifications.serverPid
        self._ids = itertools.count(1)
        self._pool: list[socket.socket] = []
        self._lock = threading.Lock()
        self.calls: list[str] = []  # method names, for round-trip counting
        self.traffic: Counter[tuple[str, str]] = Counter()  # (method, "out" | "in"): bytes

    def call(self, method: str, *args: Any) -> Any:
        msgid = next(self._ids)
        self.calls.append(method)
        conn = self._checkout()
        try:
            # Lua strings are byte strings and lua-MessagePack packs them as MessagePack `str`
            # whatever their bytes (header values are such strings: see Request.multimap); only
            # must_fix's fix_raw bodies go out as `bin`, which is what Python bytes become here.
            request = msgpack.packb([0, msgid, method, list(args)], use_bin_type=True,
                                    unicode_errors="surrogateescape")
            conn.sendall(request)
            self.traffic[method, "out"] += len(request)
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                        unicode_errors="surrogateescape")
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    raise RpcError("no data")
                unpacker.feed(chunk)
                self.traffic[method, "in"] += len(chunk)
                for msg in unpacker:
                    if msg[0] == 2:  # notification [2, label, args]: mp_rpc.lua Rpc:notification
                        if msg[1] == "serverPid" and self.on_server_pid is not None:
                            self.on_server_pid(msg[2])
                        continue
                    if msg[0] != 1 or msg[1] != msgid:
                        raise RpcError("unexpected RPC response")
                    self._checkin(conn)
                    conn = None
                    if msg[2] is not None:
                        raise RpcError(str(msg[2]))
                    return msg[3]
        except OSError as exc:
            raise RpcError(f"socket: {exc}") from None
        finally:
            if conn is not None:
                conn.close()

    def _checkout(self) -> socket.socket:
        with self._lock:
            while self._pool:
                conn = self._pool.pop()
                if not _closed_by_peer(conn):
                    return conn
                # ngx_http_lua_socket_keepalive_close_handler: an idle pooled connection the
                # server closed (or wrote to) is closed and dropped; the next one is taken.
                conn.close()
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.socket_path))
        except OSError as exc:
            s.close()
            raise RpcError(f"trying to connect: {exc}") from None
        return s

    def _checkin(self, conn: socket.socket) -> None:
        with self._lock:
            self._pool.append(conn)

    def close(self) -> None:
        with self._lock:
            for s in self._pool:
                s.close()
            self._pool.clear()


def _closed_by_peer(conn: socket.socket) -> bool:
    """Whether an idle connection has been closed by the server (readable: end of file, or data
    nobody asked for)."""
    readable, _, _ = select.select([conn], [], [], 0)
    return bool(readable)


# --- a request as it flows through Kong ----------------------------------------------------------

Header = tuple[str, "str | bytes"]


@dataclass
class Request:
    headers: list[Header]
    method: str = "GET"
    path: str = "/"
    query: str = ""
    body: bytes = b""
    ctx_shared: dict[str, Any] = field(default_factory=dict)
    delayed_response: tuple[int, Any, dict[str, Any]] | None = None
    pdk_calls: list[str] = field(default_factory=list)
    consumer: dict[str, Any] | None = None  # ngx.ctx.authenticated_consumer
    credential: dict[str, Any] | None = None  # ngx.ctx.authenticated_credential
    serialized: dict[str, Any] = field(default_factory=dict)
    scheme: str = "http"  # ngx.var.scheme
    server_port: int = 8000  # ngx.var.server_port: the proxy listener
    trusted: bool = False  # the client address is in Kong's trusted_ips (kong.ip.is_trusted)

    def header(self, name: str) -> str | None:
        """_REQUEST.get_header: the first value."""
        values = self.multimap().get(name.lower())
        return values[0] if values else None

    def host(self) -> str:
        """ngx.var.host: the Host header's host in lower case, without its port; else the
        server_name (Kong's is `kong`)."""
        raw = (self.header("host") or "").lower()
        if raw.startswith("["):
            return raw[:raw.find("]") + 1] or "kong"
        return raw.partition(":")[0] or "kong"

    def forwarded(self, what: str) -> Any:
        """kong/pdk/request.lua get_forwarded_scheme/host/port/path: X-Forwarded-* count only
        from a trusted address."""
        if what == "scheme":
            proto = self.header("x-forwarded-proto") if self.trusted else None
            return proto.lower() if proto else self.scheme
        if what == "path":
            forwarded = self.header("x-forwarded-path") if self.trusted else None
            return forwarded or self.path
        host = self.header("x-forwarded-host") if self.trusted else None
        if what == "host":
            if host is None:
                return self.host()
            host = host.rpartition("@")[2] if "@" in host else host
            return host.partition(":")[0].lower()
        if self.trusted:  # port
            port = _lua_tonumber(self.header("x-forwarded-port"))
            if port is not None and 1 <= port <= 65535:
                return port
            if host is not None:
                host = host.rpartition("@")[2] if "@" in host else host
                port = _lua_tonumber(host.partition(":")[2]) if ":" in host else None
                if port is not None and 1 <= port <= 65535:
                    return port
        return self.server_port

    def multimap(self, max_headers: int = 100) -> dict[str, list[Any]]:
        """ngx.req.get_headers(): lower-cased names, first 100 headers, then must_fix."""
        out: dict[str, list[Any]] = {}
        for name, value in self.headers[:max_headers]:
            if isinstance(value, bytes):  # raw client bytes: packed back byte for byte as `str`
                value = value.decode("utf-8", "surrogateescape")
            out.setdefault(name.lower(), []).append(value)
        return out

    def set_header(self, name: str, value: Any) -> None:
        """ngx.req.set_header after checks.normalize_multi_header."""
        values = value if isinstance(value, list) else [value]
        values = [" " if v == "" else (v if isinstance(v, (str, bytes)) else _lua_tostring(v))
                  for v in values]
        self.headers = [(n, v) for n, v in self.headers if n.lower() != name.lower()]
        self.headers.extend((name, v) for v in values)


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]
    proxied: bool
    upstream_headers: list[Header]
    ctx_shared: dict[str, Any]
    pdk_calls: list[str]
    errors: list[str]
    consumer: dict[str, Any] | None = None
    credential: dict[str, Any] | None = None
    serialized: dict[str, Any] = field(default_factory=dict)  # kong.log.set_serialize_value

    def upstream(self, name: str) -> list[str | bytes]:
        return [v for n, v in self.upstream_headers if n.lower() == name.lower()]


def _nginx_front(req: Request, buffers: tuple[int, int]) -> nginx.Answer | None:
    target = req.path + (f"?{req.query}" if req.query else "")
    return nginx.front(req.headers, buffers, request_line=f"{req.method} {target} HTTP/1.1")


def _lua_tostring(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _check_header_value(name: Any, value: Any) -> None:
    """kong/pdk/private/checks.lua validate_header(s): wrong types are Lua errors."""
    if not isinstance(name, str):
        raise LuaError(f"invalid header name {name!r}")
    if isinstance(value, list):
        if not all(isinstance(v, (str, bytes)) for v in value):
            raise LuaError(f"invalid header value in array {name!r}")
    elif not isinstance(value, (str, bytes, int, float, bool)):
        raise LuaError(f"invalid header value for {name!r}")


@dataclass
class PluginEntity:
    """A plugin row of Kong's database / declarative config."""

    name: str
    config: dict[str, Any]
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    route_id: str | None = None
    service_id: str | None = None
    seq: int = 0
    # False: the config reaches StartInstance without Kong's validation, as if written past the
    # Admin API (a direct database write, an older schema): what the plugin's own checks face.
    validated: bool = True


class Kong:
    """The gateway: plugin entities, per-worker instances, and the access phase."""

    def __init__(self, server: PluginServerProcess, workers: int = 1, rpc_timeout: float = 10.0,
                 consumers: list[dict[str, Any]] | None = None,
                 large_client_header_buffers: tuple[int, int] = nginx.LARGE_CLIENT_HEADER_BUFFERS,
                 env: dict[str, str] | None = None) -> None:
        self.server = server
        # The environment of `kong start`, which Kong's env vault reads (kong/vaults/env/init.lua).
        self.env: dict[str, str] = dict(os.environ) if env is None else env
        # kong.conf nginx_http_large_client_header_buffers (number, size in bytes): nginx's front.
        self.large_client_header_buffers = large_client_header_buffers
        # The consumers entity table (declarative `consumers:`), for kong.client.load_consumer.
        self.consumers: list[dict[str, Any]] = list(consumers or [])
        self.info = server.query()
        self.name: str = self.info["Name"]
        self.priority: int = self.info["Priority"]
        self.config_field = self.info["Schema"]["fields"][0]["config"]
        self.rpc = Rpc(server.socket_path, rpc_timeout, on_server_pid=self._server_pid)
        self.server_pid: int | None = None
        self.workers = workers
        self._worker = itertools.cycle(range(workers))
        self._seq = itertools.count(1)
        # plugin.lua running_instances, one table per nginx worker
        self._instances: list[dict[str, dict[str, Any]]] = [{} for _ in range(workers)]
        # Reentrant: the serverPid notification (_server_pid) can arrive on the StartInstance call
        # made while the lock is held.
        self._lock = threading.RLock()
        self.error_log: list[str] = []

    # -- configuration (Admin API / declarative config) --

    def plugin(self, config: dict[str, Any], route_id: str | None = None) -> PluginEntity:
        """Validate and default a config as Kong does on insert; raises ValueError if invalid."""
        full = kong_schema.apply_defaults(self.config_field, config)
        problems = kong_schema.validate_config(self.config_field, full)
        if problems:
            raise ValueError("; ".join(problems))
        return PluginEntity(self.name, full, route_id=route_id or str(uuid.uuid4()), seq=next(self._seq))

    def update(self, entity: PluginEntity, config: dict[str, Any]) -> PluginEntity:
        new = self.plugin(config, entity.route_id)
        new.id = entity.id
        return new

    # -- the access phase (kong/init.lua) --

    def request(self, entity: PluginEntity, headers: Iterable[Header] = (),
                acl_allow: list[str] | None = None, worker: int | None = None, *, method: str = "GET",
                path: str = "/", query: str = "", body: bytes = b"",
                acl_always_use_authenticated_groups: bool = False,
                authenticated_by: tuple[dict[str, Any], dict[str, Any]] | None = None,
                nginx: bool = True, scheme: str = "http", trusted: bool = False) -> Response:
        """One request through Kong. First what nginx refuses while reading the request header
        (tests/harness/nginx.py): then Kong's answer, no plugin running. `nginx=False` skips that,
        for tests of the plugin's own handling of what nginx refuses first (defense in depth)."""
        req = Request(headers=list(headers), method=method, path=path, query=query, body=body, scheme=scheme,
                      trusted=trusted)
        refused = _nginx_front(req, self.large_client_header_buffers) if nginx else None
        if refused is not None:
            return Response(refused.status, refused.body, refused.headers, False, [], req.ctx_shared,
                            req.pdk_calls, [])
        if authenticated_by is not None:
            # Another auth plugin ran first (higher priority), as key-auth's set_consumer does:
            # kong.client.authenticate, then its identity headers on the service request.
            req.consumer, req.credential = authenticated_by
            req.set_header("X-Consumer-ID", req.consumer["id"])
            req.set_header("X-Consumer-Username", req.consumer.get("username") or [])
            req.set_header("X-Credential-Identifier", req.credential["id"])
            req.set_header("X-Anonymous-Consumer", [])
        errors: list[str] = []
        worker = next(self._worker) if worker is None else worker
        try:
            self._handle_event(entity, req, worker, errors)
        except LuaError as exc:  # execute_collecting_plugins_iterator: coroutine failed
            errors.append(str(exc))
            req.delayed_response = (500, UNEXPECTED, {})
        if req.delayed_response is None and acl_allow is not None:
            self._acl(req, acl_allow, acl_always_use_authenticated_groups)
        self.error_log.extend(errors)
        if req.delayed_response is not None:
            status, payload, hdrs = req.delayed_response
            return Response(status, payload, {k: str(v) for k, v in (hdrs or {}).items()}, False, [],
                            req.ctx_shared, req.pdk_calls, errors, req.consumer, req.credential, req.serialized)
        return Response(200, None, {}, True, req.headers, req.ctx_shared, req.pdk_calls, errors,
                        req.consumer, req.credential, req.serialized)

    def status(self) -> dict[str, Any]:
        """plugin.GetStatus: kong-pdk's status, plus kcauth's counts of live events, running
        handlers, threads and greenlets (bridge.py)."""
        result: dict[str, Any] = self.rpc.call("plugin.GetStatus")
        return result

    def _handle_event(self, entity: PluginEntity, req: Request, worker: int, errors: list[str]) -> None:
        """mp_rpc.lua Rpc:handle_event."""
        try:
            instance_id = self._instance_id(entity, worker)
        except RpcError as exc:  # plugin.lua get_instance_id: error(err) → Lua error
            raise LuaError(f"starting instance: {exc}") from None
        try:
            self._bridge_loop(instance_id, "access", req)
        except RpcError as exc:
            if "no plugin instance" in str(exc).lower():
                self._reset_instances()
                errors.append(f"warn: {exc}")
                return self._handle_event(entity, req, worker, errors)
            errors.append(str(exc))  # kong.log.err(err), and the request goes on: FAIL-OPEN

    def _bridge_loop(self, instance_id: int, phase: str, req: Request) -> None:
        step = self.rpc.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": phase})
        event_id = step["EventId"]
        while step["Data"] != "ret":
            method, args = step["Data"]["Method"], step["Data"].get("Args") or []
            req.pdk_calls.append(method)
            result, err = self._call_pdk(req, method, args)
            if req.delayed_response is not None and method in ("kong.response.exit", "kong.response.error"):
                return  # the plugin's coroutine yielded: no Step is ever sent
            if result is None and err is not None:
                step_method, data = "plugin.StepError", err
            else:
                step_method, data = _STEP_METHODS.get(method, "plugin.Step"), result
            step = self.rpc.call(step_method, {"EventId": event_id, "Data": data})

    def _instance_id(self, entity: PluginEntity, worker: int) -> int:
        """plugin.lua get_instance_id (the wait-for-claim loop is a lock here)."""
        with self._lock:
            running = self._instances[worker]
            info = running.get(entity.id)
            if info and info["seq"] == entity.seq:
                return info["id"]
            conf = kong_schema.kong_config_for_instance(
                self.config_field, entity.config, plugin_id=entity.id, seq=entity.seq,
                route_id=entity.route_id, service_id=entity.service_id, validate=entity.validated,
                resolve_reference=self.vault_get)
            status = self.rpc.call("plugin.StartInstance", {"Name": self.name, "Config": json.dumps(conf)})
            running[entity.id] = {"id": status["Id"], "seq": entity.seq}
            if info:
                try:
                    self.rpc.call("plugin.CloseInstance", info["id"])
                except RpcError:
                    pass  # "don't care if there's an error, maybe other thread closed it first"
            return status["Id"]

    def vault_get(self, reference: str) -> str | None:
        """kong.vault.get for the env vault (kong/pdk/vault.lua parse_reference, then
        kong/vaults/env/init.lua get): `{vault://env/<resource>}` is the variable named by the
        resource in upper case with `-` as `_`; None when there is none (Kong then sends "")."""
        match = re.fullmatch(r"\{vault://env/([^/?#}]+)\}", reference)
        if match is None:
            raise ValueError(f"only the env vault's plain references are emulated: {reference}")
        return self.env.get(match.group(1).replace("-", "_").upper())

    def _server_pid(self, pid: Any) -> None:
        """plugin.lua rpc_notifications:serverPid: a new pid on a connection forgets every
        instance started through this Rpc (Kong starts them again on their next request)."""
        with self._lock:
            changed = self.server_pid is not None and pid != self.server_pid
            self.server_pid = pid
        if changed:
            self._reset_instances()

    def _reset_instances(self) -> None:
        with self._lock:
            for running in self._instances:
                running.clear()

    # -- the PDK functions the plugin may call (exposed_api and kong.pdk) --

    def _call_pdk(self, req: Request, method: str, args: list[Any]) -> tuple[Any, Any]:
        if method == "kong.request.get_headers":
            # kong/pdk/request.lua _REQUEST.get_headers: lua_max_req_headers (100) without an
            # argument, else 1 to 1000 lines; the rest of the request's lines are not handed over.
            limit = args[0] if args else 100
            if not isinstance(limit, int) or not 1 <= limit <= 1000:
                return None, "max_headers must be a number between 1 and 1000"
            return req.multimap(limit), None
        if method == "kong.request.get_header":
            values = req.multimap().get(str(args[0]).lower().replace("_", "-"))
            return (values[0] if values else None), None
        if method == "kong.request.get_method":
            return req.method, None
        if method == "kong.request.get_path":
            return req.path, None
        if method == "kong.request.get_scheme":
            return req.scheme, None
        if method == "kong.request.get_host":
            return req.host(), None
        if method == "kong.request.get_port":
            return req.server_port, None
        if method.startswith("kong.request.get_forwarded_") and method[27:] in ("scheme", "host", "port", "path"):
            return req.forwarded(method[27:]), None
        if method == "kong.request.get_raw_query":
            return req.query, None
        if method == "kong.request.get_raw_body":
            return req.body, None  # must_fix fix_raw: sent as MessagePack bin
        if method == "kong.client.load_consumer":
            return self._load_consumer(args), None
        if method == "kong.client.authenticate":
            consumer, credential = (list(args) + [None, None])[:2]
            if consumer is None and credential is None:
                raise LuaError("either credential or consumer must be provided")
            req.consumer, req.credential = consumer, credential
            return None, None
        if method == "kong.client.get_consumer":
            return req.consumer, None
        if method == "kong.client.get_credential":
            return req.credential, None
        if method == "kong.service.request.set_headers":
            headers = args[0] if args else None
            if not isinstance(headers, dict):
                raise LuaError("headers must be a table")
            for k, v in headers.items():
                _check_header_value(k, v)
            for k, v in sorted(headers.items()):
                req.set_header(k, v)
            return None, None
        if method == "kong.service.request.set_header":
            _check_header_value(args[0], args[1])
            req.set_header(args[0], args[1])
            return None, None
        if method == "kong.service.request.clear_header":
            req.set_header(args[0], [])
            return None, None
        if method == "kong.ctx.shared.set":
            req.ctx_shared[args[0]] = args[1]
            return None, None
        if method == "kong.ctx.shared.get":
            return req.ctx_shared.get(args[0]), None
        if method == "kong.response.exit":
            status, body, headers = (list(args) + [None, None, None])[:3]
            if not isinstance(status, int) or not 100 <= status <= 599:
                raise LuaError("code must be a number between 100 and 599")
            req.delayed_response = (status, body, headers or {})
            return None, None
        if method == "kong.response.error":
            status = args[0]
            message = args[1] if len(args) > 1 and args[1] else _ERROR_MESSAGES.get(status, "")
            req.delayed_response = (status, {"message": message}, (args[2] if len(args) > 2 else None) or {})
            return None, None
        if method == "kong.log.set_serialize_value":
            # kong/pdk/log.lua: kept for the log phase's kong.log.serialize() under that key.
            key, value = (list(args) + [None, None])[:2]
            if not isinstance(key, str):
                raise LuaError("key must be a string")
            req.serialized[key] = value
            return None, None
        if method.startswith("kong.log."):
            level = method.rsplit(".", 1)[1]
            self.error_log.append(f"[{level}] " + " ".join(str(a) for a in args))
            return None, None
        # mp_rpc.lua call_pdk_method: unknown method → logged, nil result, plugin.Step
        self.error_log.append(f"could not find pdk method: {method}")
        return None, None

    def _load_consumer(self, args: list[Any]) -> dict[str, Any] | None:
        """kong/pdk/client.lua load_consumer: by id (a UUID), else by username if asked."""
        consumer_id, by_username = (list(args) + [None, False])[:2]
        if not isinstance(consumer_id, str):
            raise LuaError("consumer_id must be a string")
        is_uuid = _is_uuid(consumer_id)
        if not is_uuid and not by_username:
            raise LuaError("cannot load a consumer with an id that is not a uuid")
        for consumer in self.consumers:
            if is_uuid and consumer.get("id") == consumer_id:
                return consumer
        if by_username:
            return next((c for c in self.consumers if c.get("username") == consumer_id), None)
        return None

    # -- the bundled ACL plugin, priority 950 (runs after the plugin) --

    def _acl(self, req: Request, allow: list[str], always_use_authenticated_groups: bool = False) -> None:
        groups = req.ctx_shared.get("authenticated_groups")
        if req.consumer is not None and req.credential is not None and not always_use_authenticated_groups:
            groups = req.consumer.get("acl_groups")  # an authenticated consumer: its own groups
        if not isinstance(groups, list):
            req.delayed_response = (401, {"message": "Unauthorized"}, {})
        elif not set(groups) & set(allow):
            req.delayed_response = (403, {"message": "You cannot consume this service"}, {})
        else:
            req.set_header("X-Authenticated-Groups", ", ".join(g for g in groups if g in allow))


_STEP_METHODS = {
    "kong.client.get_credential": "plugin.StepCredential",
    "kong.client.load_consumer": "plugin.StepConsumer",
    "kong.client.get_consumer": "plugin.StepConsumer",
    "kong.client.authenticate": "plugin.StepCredential",
    "kong.node.get_memory_stats": "plugin.StepMemoryStats",
    "kong.router.get_route": "plugin.StepRoute",
    "kong.router.get_service": "plugin.StepService",
    "kong.request.get_query": "plugin.StepMultiMap",
    "kong.request.get_headers": "plugin.StepMultiMap",
    "kong.response.get_headers": "plugin.StepMultiMap",
    "kong.service.response.get_headers": "plugin.StepMultiMap",
}


def _lua_tonumber(value: Any) -> int | None:
    """tonumber(v, 10) of a header value: decimal digits only, else nil."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def kcauth_commands(prefix: Path, extra: str = "") -> tuple[str, str, Path]:
    """The start and query commands of the README's kong.conf, for a given prefix. One worker
    unless `extra` says otherwise: this emulator is one process, so all its connections come from
    one peer pid, which the supervisor routes to one worker (tests/pluginserver/test_workers.py
    runs nginx workers as processes of their own)."""
    socket_path = prefix / "kcauth.socket"
    if "--workers" not in extra and "kong-pdk" not in extra:
        extra = f"--workers 1 {extra}"
    start = f"kcauth-pluginserver --kong-prefix {shlex.quote(str(prefix))} --socket-name kcauth.socket {extra}".strip()
    return start, "kcauth-pluginserver --dump", socket_path
