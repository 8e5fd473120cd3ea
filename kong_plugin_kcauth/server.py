"""The plugin server command Kong runs: `kcauth-pluginserver`.

kong.conf (or KONG_* environment), with both socket settings explicit:

    plugins = bundled,kcauth
    pluginserver_names = kcauth
    pluginserver_kcauth_socket = /usr/local/kong/kcauth.socket
    pluginserver_kcauth_start_cmd = kcauth-pluginserver --kong-prefix /usr/local/kong --socket-name kcauth.socket
    pluginserver_kcauth_query_cmd = kcauth-pluginserver --dump

It is kong-pdk's dedicated server for the one plugin `kcauth`, with three deliberate changes:
- the default socket name is `kcauth.socket`, the name Kong derives for a server called `kcauth`
  (kong-pdk would pick `kcauth.sock`, and Kong would then never reach it);
- requests are decoded tolerantly: a client header that is not valid UTF-8 would otherwise make
  kong-pdk's decoder raise, drop Kong's connection, and Kong would proxy the request unchecked;
- `-m` (multiprocessing) is refused, because it loses the process-wide key and token caches, and
  `-g` (gevent) monkey-patches the standard library first, or blocking I/O would stall every
  request in the process.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
import sys
from collections.abc import Callable
from typing import Any

NAME = "kcauth"

# Runs after ip-restriction (990), so refused networks cost no token check, and before ACL (950),
# request-size-limiting (951), rate limiting (910) and request-transformer (801), so those see the
# identity it establishes. Below Kong's bundled auth plugins (1050 to 1450), which keeps their
# order when combined with it.
PRIORITY = 980

_PARENT = os.getppid()  # read as early as possible: Kong may already be gone when serving starts


def main(argv: list[str] | None = None) -> None:
    run(argv, load_plugin=_kcauth)


def _kcauth() -> tuple[type, list[dict[str, Any]], str]:
    from . import __version__, schema
    from .handler import Plugin

    return Plugin, schema.kong_schema(), __version__


def run(argv: list[str] | None, load_plugin: Callable[[], tuple[type, list[dict[str, Any]], str]],
        name: str = NAME, priority: int = PRIORITY) -> None:
    """Serve one plugin class the kcauth way. `load_plugin` (called after the gevent decision,
    so that its imports are patched) returns the class, its schema and its version; the
    benchmark serves its comparison plugins through this too."""
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-m", "--multiprocessing"} & set(args):
        sys.exit(f"{name}: multiprocessing mode loses the key and token caches between requests; "
                 "use the default (threads) or -g (gevent)")
    if {"-g", "--gevent"} & set(args):
        from gevent import monkey

        monkey.patch_all()
    if "--no-lua-style" not in args:
        args.append("--no-lua-style")  # PDK errors raise, so none is silently ignored
    if "--socket-name" not in args:
        args += ["--socket-name", f"{name}.socket"]
    sys.argv = [name + "-pluginserver", *args]
    _serve(name, priority, *load_plugin())


def _serve(name: str, priority: int, plugin: type, plugin_schema: list[dict[str, Any]], version: str) -> None:
    from kong_pdk import cli
    from kong_pdk.logger import Logger
    from kong_pdk.module import Module
    from kong_pdk.server import PluginServer

    options = cli.parse(dedicated=True)

    # The shape kong-pdk's Module reads: what a plugin file would define at module level.
    spec = type("Spec", (), {"Plugin": plugin, "Schema": plugin_schema, "version": version, "priority": priority})

    server = PluginServer(
        loglevel=Logger.WARNING - options.verbose,
        use_gevent=options.gevent,
        name=f"{name} version {version}",
        lua_style=False,
    )
    server.plugins[name] = Module(name, module=spec)
    if options.dump:
        sys.stdout.write(json.dumps([server.get_plugin_info(name)]))
        return
    _watch_parent()
    listener = _listener_class()(
        server, options.prefix, sock_name=options.socket_name, use_gevent=options.gevent,
        listen_queue_size=options.listen_queue_size,
    )
    try:
        listener.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.cleanup()


def _watch_parent() -> None:
    """End the process when Kong, its parent, is gone. kong-pdk's own watchdog calls sys.exit()
    from a thread, which ends only that thread and leaves an orphaned server running."""
    parent = _PARENT

    def watch() -> None:
        # Orphans are adopted by init (pid 1) or a subreaper: either way the parent changes.
        while os.getppid() == parent and parent != 1:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="kcauth-parent-watch").start()


def _listener_class() -> type:
    import msgpack
    from kong_pdk.exception import PDKException, PluginServerException
    from kong_pdk.listener import UnixStreamServer

    from .schema import ConfigError

    @functools.lru_cache(maxsize=64)
    def method_name(rpc: str) -> str:
        # "plugin.StepMultiMap" -> "step_multi_map", the PluginServer method serving it.
        return re.sub(r"(?<!^)([A-Z])", r"_\1", rpc.partition(".")[2]).lower()

    class Listener(UnixStreamServer):  # type: ignore[misc]
        """kong-pdk's listener with a decoder that cannot be made to fail by client bytes."""

        def handle(self, conn: Any, address: Any, *_: Any) -> None:
            packer = msgpack.Packer(unicode_errors="surrogateescape")
            unpacker = msgpack.Unpacker(strict_map_key=False, unicode_errors="surrogateescape")
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    if not (isinstance(message, list) and len(message) == 4 and message[0] == 0):
                        return  # not a MessagePack-RPC request: drop the connection
                    _, msgid, method, params = message
                    conn.sendall(packer.pack(self._dispatch(msgid, method, params)))

        def _dispatch(self, msgid: int, method: Any, params: Any) -> list[Any]:
            if not isinstance(method, str) or not method.startswith("plugin."):
                return [1, msgid, f"RPC for {method} is not supported", None]
            try:
                result = getattr(self.ps, method_name(method))(*params)
            except (PluginServerException, PDKException, ConfigError) as exc:
                # Kong logs this; a ConfigError names the setting the operator must fix.
                return [1, msgid, str(exc), None]
            except Exception as exc:  # noqa: BLE001 - answer Kong rather than drop it
                self.logger.error(f"rpc {method} failed: {type(exc).__name__}")
                return [1, msgid, f"{method} failed: {type(exc).__name__}", None]
            return [1, msgid, None, result]

    return Listener


if __name__ == "__main__":
    main()
