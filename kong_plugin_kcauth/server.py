"""The plugin server command Kong runs: `kcauth-pluginserver`.

kong.conf (or KONG_* environment), with both socket settings explicit:

    plugins = bundled,kcauth
    pluginserver_names = kcauth
    pluginserver_kcauth_socket = /usr/local/kong/kcauth.socket
    pluginserver_kcauth_start_cmd = kcauth-pluginserver --kong-prefix /usr/local/kong --socket-name kcauth.socket
    pluginserver_kcauth_query_cmd = kcauth-pluginserver --dump

`kcauth-pluginserver --ready` (with the same --kong-prefix and --socket-name) is the kubelet's
probe of a plugin server run beside Kong (a sidecar): exit 0 once the server answers Kong's
protocol, else non-zero with one line saying why.

It is kong-pdk's dedicated server for the one plugin `kcauth`, with deliberate changes:
- kcauth's own event handling and listener (pluginserver/bridge.py): nothing an event carries can drop Kong's
  connection (Kong would proxy the request), and no event leaves a thread or greenlet behind;
- the default socket name is `kcauth.socket`, the name Kong derives for a server called `kcauth`
  (kong-pdk would pick `kcauth.sock`, and Kong would then never reach it);
- `-m` (multiprocessing) is refused, because it loses the process-wide key and token caches, and
  `-g` (gevent) monkey-patches the standard library first, or blocking I/O would stall every
  request in the process;
- the dump carries the config record's entity checks (rules between fields, enforced by Kong),
  `--priority` moves the plugin before or after Kong's bundled auth plugins, and `--metrics`
  serves Prometheus metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

NAME = "kcauth"

# Runs after ip-restriction (990), so refused networks cost no token check, and before ACL (950),
# request-size-limiting (951), rate limiting (910) and request-transformer (801), so those see the
# identity it establishes. Below Kong's bundled auth plugins (1050 to 1450), which keeps their
# order when combined with it.
PRIORITY = 980

_PARENT = os.getppid()  # read as early as possible: Kong may already be gone when serving starts

PluginInfo = tuple[type, dict[str, Any], str]  # the class, its config record, its version

# How long `--ready` waits for the answer in all. Well under the probe's timeoutSeconds
# (deploy/kubernetes/ sets 5; the kubelet's default of 1 s is too short for Python's start plus
# this), so the probe fails with the reason rather than the kubelet's bare timeout.
READY_TIMEOUT = 2.0


def main(argv: list[str] | None = None) -> None:
    run(argv, load_plugin=_kcauth)


def _kcauth() -> PluginInfo:
    from . import __version__
    from .config import settings as config
    from .handler import Plugin

    return Plugin, config.kong_config_record(), __version__


def options(argv: list[str], name: str, priority: int) -> argparse.Namespace:
    """The command line, kong-pdk's options (single-dash spellings too) and kcauth's own."""
    from . import __version__

    parser = argparse.ArgumentParser(prog=f"{name}-pluginserver",
                                     description=f"The {name} plugin server, run by Kong Gateway.")
    parser.add_argument("-p", "--kong-prefix", "-kong-prefix", dest="prefix", default="/usr/local/kong/",
                        help="directory of the Unix socket (default: %(default)s)")
    parser.add_argument("--socket-name", dest="socket_name", default=f"{name}.socket",
                        help="socket file name, Kong's default for this server (default: %(default)s)")
    parser.add_argument("--dump", "-dump", action="store_true", help="print the plugin's info for Kong and exit")
    parser.add_argument("--ready", action="store_true",
                        help="exit 0 if the server on the socket answers Kong's protocol within "
                             "--ready-timeout, else 1 with the reason (a probe for a sidecar)")
    parser.add_argument("--ready-timeout", type=float, default=READY_TIMEOUT, metavar="SECONDS",
                        help="how long --ready waits for the answer (default: %(default)s)")
    parser.add_argument("--server", choices=("core", "kong-pdk"), default="core",
                        help="core (default): kcauth's own single-threaded core on gevent; kong-pdk: "
                             "kong-pdk's server, in threads or, with -g, gevent mode")
    parser.add_argument("-g", "--gevent", action="store_true", help="kong-pdk's gevent mode (the core always is)")
    parser.add_argument("-m", "--multiprocessing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more logging")
    parser.add_argument("--listen-queue-size", type=int, default=4096, help="socket backlog (default: %(default)s)")
    parser.add_argument("--no-lua-style", action="store_true", help=argparse.SUPPRESS)  # always Python style
    parser.add_argument("--priority", type=int, default=priority,
                        help="the plugin's priority in --dump (default: %(default)s; Kong's bundled auth "
                             "plugins run at 1050 to 1450)")
    parser.add_argument("--metrics", metavar="HOST:PORT", default=None,
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off)")
    parser.add_argument("--workers", type=int, default=0, metavar="N",
                        help="processes serving Kong's nginx workers with the core (default: Kong's nginx "
                             "worker count, from the prefix's nginx.conf, else one per core)")
    parser.add_argument("--version", "-version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.multiprocessing:
        parser.exit(2, f"{parser.prog}: multiprocessing mode loses the key and token caches between "
                       "requests; use the default core, or --server kong-pdk with or without -g\n")
    if not (args.dump or args.ready) and not os.path.isdir(args.prefix):
        parser.exit(2, f"{parser.prog}: the Kong prefix {args.prefix} does not exist\n")
    args.gevent = args.gevent or args.server == "core"
    return args


def run(argv: list[str] | None, load_plugin: Callable[[], PluginInfo], name: str = NAME,
        priority: int = PRIORITY) -> None:
    """Serve one plugin class the kcauth way. `load_plugin` (called after the gevent decision,
    so that its imports are patched) returns the class, its config record and its version; the
    benchmark and the fault tests serve their plugins through this too."""
    args = options(list(sys.argv[1:] if argv is None else argv), name, priority)
    if args.ready:
        raise SystemExit(_report_readiness(os.path.join(args.prefix, args.socket_name), args.ready_timeout, name))
    if args.server == "core" and not args.dump:
        return _supervise(args, load_plugin, name)
    if args.gevent:
        from gevent import monkey

        monkey.patch_all()
    plugin, record, version = load_plugin()
    info = plugin_info(name, plugin, record, version, args.priority)
    if args.dump:
        sys.stdout.write(json.dumps([info]))
        return
    _watch_parent()
    server = _kong_pdk_server(name, args, plugin, record, version)
    if args.metrics:
        from .decision import wiring
        from .ops import metrics

        metrics.serve(args.metrics, events=lambda: server.running, key_sets=wiring.key_sets)
    sys.stderr.write(f"{name}-pluginserver {version}: kong-pdk server{' (gevent)' if args.gevent else ''} "
                     f"listening at {os.path.join(args.prefix, args.socket_name)}\n")
    from .pluginserver import bridge

    try:
        bridge.listener_class()(server, args.prefix, sock_name=args.socket_name, use_gevent=args.gevent,
                                listen_queue_size=args.listen_queue_size).serve_forever()
    except KeyboardInterrupt:
        pass


def _report_readiness(path: str, timeout: float, name: str) -> int:
    reason = readiness(path, timeout)
    if reason is None:
        return 0
    sys.stderr.write(f"{name}-pluginserver: not ready: {reason}\n")
    return 1


def readiness(path: str, timeout: float = READY_TIMEOUT) -> str | None:
    """None when the plugin server at `path` answers one harmless call of Kong's protocol
    (`plugin.GetStatus`: kcauth's core and kong-pdk's server both answer it; no instance or event
    is touched) within `timeout` seconds in all; else why not, in one line. The socket file alone
    proves nothing: a killed server leaves it behind."""
    import msgpack

    deadline = time.monotonic() + timeout
    silent = f"no answer from {path} within {timeout:g} s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(path)
            conn.sendall(msgpack.packb([0, 1, "plugin.GetStatus", []]))
        except FileNotFoundError:
            return f"no socket at {path}"
        except ConnectionRefusedError:
            return f"nothing listens at {path} (a stale socket file)"
        except TimeoutError:
            return silent
        except OSError as exc:
            return f"cannot reach {path}: {exc.strerror or exc}"
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        while (left := deadline - time.monotonic()) > 0:
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                return silent
            except OSError as exc:
                return f"connection to {path} lost: {exc.strerror or exc}"
            if not chunk:
                return f"{path} closed the connection without an answer"
            unpacker.feed(chunk)
            for message in unpacker:
                if not _notification(message):  # kcauth's core announces its pid first
                    return _verdict(message)
        return silent


def _notification(message: Any) -> bool:
    return isinstance(message, list) and len(message) == 3 and message[0] == 2


def _verdict(message: Any) -> str | None:
    """None for the answer to request 1 without an error, else what is wrong with it."""
    if not (isinstance(message, list) and len(message) == 4 and message[:2] == [1, 1]):
        return "the answer is not Kong's MessagePack-RPC"
    return None if message[2] is None else f"the server answered with an error: {str(message[2])[:200]}"


def _supervise(args: argparse.Namespace, load_plugin: Callable[[], PluginInfo], name: str) -> None:
    """kcauth's core: the socket bound first (before anything heavy is imported: Kong's
    connections are refused only while the interpreter starts), then the supervisor's hub and
    workers (pluginserver/supervisor.py)."""
    import base64
    import tempfile

    from .pluginserver import hub, supervisor

    path = os.path.join(args.prefix, args.socket_name)
    listener = supervisor.bind(path, args.listen_queue_size)
    workers = args.workers or supervisor.nginx_workers(args.prefix) or supervisor.usable_cores()
    address = hub.hub_address(os.getpid())
    os.environ["KCAUTH_NODE_STORE"] = address  # revocation/node.py, in every worker
    os.environ["KCAUTH_NODE_SECRET"] = base64.b64encode(os.urandom(32)).decode()
    metrics_dir = None
    if args.metrics:
        metrics_dir = tempfile.mkdtemp(prefix="kcauth-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client at import
    sys.stderr.write(f"{name}-pluginserver: core server listening at {path} "
                     f"({workers} worker{'s' if workers > 1 else ''})\n")
    sys.stderr.flush()
    try:
        supervisor.Supervisor(
            listener, path, workers,
            worker_main=lambda channel, _index: _core_worker(channel, args, load_plugin, name),
            hub_main=lambda: hub.run(address, args.metrics, metrics_dir),
            parent=_PARENT, metrics_dir=metrics_dir,
        ).run()
    finally:
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)


def _core_worker(channel: Any, args: argparse.Namespace, load_plugin: Callable[[], PluginInfo], name: str) -> None:
    """One worker (a child of the supervisor): gevent first, then the plugin and kcauth's core,
    serving the connections the supervisor hands it."""
    from gevent import monkey

    monkey.patch_all()
    plugin, record, version = load_plugin()
    from .pluginserver import core

    server = core.Core(name, plugin, plugin_info(name, plugin, record, version, args.priority))
    if args.metrics:
        from .decision import wiring
        from .ops import metrics

        metrics.record_for_node(events=lambda: server.running, key_sets=wiring.key_sets)
    core.serve_channel(server, channel)


PHASES = ("certificate", "rewrite", "log", "access", "preread", "response")


def plugin_info(name: str, plugin: type, record: dict[str, Any], version: str, priority: int) -> dict[str, Any]:
    """What `--dump` tells Kong (kong/runloop/plugin_servers/process.lua): Name, Version, Priority,
    Phases (the handler methods the class has) and the config record, entity checks included."""
    return {"Name": name, "Phases": [p for p in PHASES if hasattr(plugin, p)], "Priority": priority,
            "Version": version, "Schema": {"name": name, "fields": [{"config": record}]}}


def _kong_pdk_server(name: str, args: argparse.Namespace, plugin: type, record: dict[str, Any],
                     version: str) -> Any:
    from kong_pdk.logger import Logger
    from kong_pdk.module import Module

    from .pluginserver import bridge

    # The shape kong-pdk's Module reads: what a plugin file would define at module level.
    spec = type("Spec", (), {"Plugin": plugin, "Schema": record["fields"], "version": version,
                             "priority": args.priority})
    server = bridge.server_class(args.gevent)(
        loglevel=Logger.WARNING - args.verbose, use_gevent=args.gevent, name=f"{name} version {version}",
        lua_style=False,
    )
    server.plugins[name] = Module(name, module=spec)
    server.records[name] = record
    return server


def _watch_parent() -> None:
    """End the process when Kong, its parent, is gone. kong-pdk's own watchdog calls sys.exit()
    from a thread, which ends only that thread and leaves an orphaned server running. A server
    whose parent is already init (pid 1: systemd, tini, `docker --init`, or Kong's "managed
    externally" mode without a start command) is not Kong's child: nothing to watch."""
    parent = _PARENT
    if parent == 1:
        return

    def watch() -> None:
        # Orphans are adopted by init (pid 1) or a subreaper: either way the parent changes.
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="kcauth-parent-watch").start()


if __name__ == "__main__":
    main()
