"""The configuration: one definition, three views (Kong's schema, the typed config, the reference
in docs/configuration.md).

- `settings.py`: every field of the `config` record with its Kong attributes and description, the
  rules between fields (entity checks), and what is derived from them (`Config.for_issuer`,
  `client_credentials`, the provider's URLs). The one place a setting is defined.
- `schema.py`: the machinery: Kong's schema from the definition (`--dump`), Kong's validation
  again at instance start with Kong's messages (`load`, vault references as Kong treats them),
  the documented reference (`python -m kong_plugin_kcauth.config`).
- `luapattern.py`: Kong's Lua patterns, so the plugin enforces the very patterns Kong does.
- `__main__.py`: `python -m kong_plugin_kcauth.config` prints that reference;
- `values.py`: what settings hold, as the rest reads them: the algorithms a config may name,
  reserved header names, PEM keys, CA files, the provider origin rewrite.

May import: nothing of kcauth (the bottom layer, with ops and errors).
"""

from .schema import ConfigError
from .settings import REALM_NAME_MAX, Config, FeedConfig, IssuerEntry, RedisConfig, kong_config_record, kong_schema

__all__ = ["REALM_NAME_MAX", "Config", "ConfigError", "FeedConfig", "IssuerEntry", "RedisConfig",
           "kong_config_record", "kong_schema"]
