"""The plugin server command Kong runs: `kcauth-pluginserver`.

kong.conf (or KONG_* environment), with both socket settings explicit:

    plugins = bundled,kcauth
    pluginserver_names = kcauth
    pluginserver_kcauth_socket = /usr/local/kong/kcauth.socket
    pluginserver_kcauth_start_cmd = kcauth-pluginserver --kong-prefix /usr/local/kong --socket-name kcauth.socket
    pluginserver_kcauth_query_cmd = kcauth-pluginserver --dump

It is kong-pdk's dedicated server for the one plugin `kcauth`, with deliberate changes:
- kcauth's own event handling and listener (bridge.py): nothing an event carries can drop Kong's
  connection (Kong would proxy the request), and no event leaves a thread or greenlet behind;
- the default socket name is `kcauth.socket`, the name Kong derives for a server called `kcauth`
  (kong-pdk would pick `kcauth.sock`, and Kong would then never reach it);
- `-m` (multiprocessing) is refused, because it loses the process-wide key and token caches, and
  `-g` (gevent) monkey-patches the standard library first, or blocking I/O would stall every
  request in the process.
"""

from __future__ import annotations

import json
import os
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


def main(argv: list[str] | None = None) -> None:
    run(argv, load_plugin=_kcauth)


def _kcauth() -> tuple[type, list[dict[str, Any]], str]:
    from . import __version__, config
    from .handler import Plugin

    return Plugin, config.kong_schema(), __version__


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

    from . import bridge

    options = cli.parse(dedicated=True)

    # The shape kong-pdk's Module reads: what a plugin file would define at module level.
    spec = type("Spec", (), {"Plugin": plugin, "Schema": plugin_schema, "version": version, "priority": priority})

    server = bridge.server_class(options.gevent)(
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
    listener = bridge.listener_class()(
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


if __name__ == "__main__":
    main()
