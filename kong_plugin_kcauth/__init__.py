"""kcauth: a Kong Gateway plugin that guards APIs with Keycloak access tokens."""

__version__ = "0.2.0"
