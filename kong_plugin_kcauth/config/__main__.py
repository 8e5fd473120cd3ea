"""`python -m kong_plugin_kcauth.config`: the config reference table docs/configuration.md carries."""

from .schema import reference_markdown
from .settings import kong_schema

print(reference_markdown(kong_schema()), end="")
