"""kcauth's plugin class served by kong-pdk's stock dedicated server, without kcauth's listener.
Used only by a test that shows why kcauth ships its own listener (see kong_plugin_kcauth/server.py)."""

from kong_pdk.cli import start_dedicated_server

from kong_plugin_kcauth import __version__
from kong_plugin_kcauth.config import kong_schema
from kong_plugin_kcauth.handler import Plugin
from kong_plugin_kcauth.server import PRIORITY

if __name__ == "__main__":
    start_dedicated_server("kcauth", Plugin, __version__, PRIORITY, kong_schema())
