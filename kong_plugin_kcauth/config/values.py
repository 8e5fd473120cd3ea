"""What settings hold, as the rest of kcauth reads them: the algorithms a config may name, the
header names no claim may take, a PEM private key, a CA file, the provider's origin. Pure, but
for reading the CA file when an instance starts."""

from __future__ import annotations

import os
import ssl
from typing import Any

# Asymmetric JWS algorithms only: HMAC would make the key set's public keys into shared secrets,
# and `none` is no signature at all, so neither can be named in a config.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)

# Headers a claim must never be written into: they change how the request is routed, framed or
# authenticated upstream, or Kong sets them itself (kong/templates/nginx_kong.lua proxy_set_header).
RESERVED_HEADERS = frozenset({
    "host", "authorization", "proxy-authorization", "content-length", "content-type",
    "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer", "cookie",
    "expect", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
    "x-forwarded-port", "x-forwarded-path", "x-forwarded-prefix", "x-real-ip", "via", "x-kong-request-id",
})

# Kong's identity headers (kong/constants.lua HEADERS), set by its auth plugins' `set_consumer`
# (kong/plugins/key-auth/handler.lua), ACL and oauth2: an upstream trusts them as Kong's, so a
# client's copy never reaches it (decision/headers.py, handler.set_identity).
KONG_IDENTITY_HEADERS = ("X-Consumer-ID", "X-Consumer-Custom-ID", "X-Consumer-Username",
                         "X-Credential-Identifier", "X-Anonymous-Consumer", "X-Consumer-Groups",
                         "X-Authenticated-Groups", "X-Authenticated-Scope", "X-Authenticated-Userid")


def load_signing_key(pem: str) -> tuple[Any, str]:
    """The private key of a PEM and the JWS alg it signs with (RS256 or ES256)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return key, "ES256"
    raise ValueError("must be an RSA key of 2048 bits or more, or an EC P-256 key")


def load_assertion_key(pem: str, algorithm: str) -> Any:
    """The private key of a PEM, if it signs with `algorithm` (ES256: EC P-256, EdDSA: Ed25519,
    RS256 and PS256: RSA of 2048 bits or more); ValueError naming what is wrong, never the key."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("not an unencrypted PEM private key") from None
    if not fits(key, algorithm):
        raise ValueError(f"the key does not sign {algorithm} ({_FITS[algorithm]})")
    return key


def load_public_key(pem: str) -> Any:
    """The public key of a PEM that signs one of the assertion's algorithms (ValueError otherwise)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError("not a PEM public key") from None
    if not any(fits(key, algorithm) for algorithm in _FITS):
        raise ValueError("must be an EC P-256, Ed25519 or RSA (2048 bits or more) public key")
    return key


_FITS = {"ES256": "an EC P-256 key", "EdDSA": "an Ed25519 key", "RS256": "an RSA key of 2048 bits or more",
         "PS256": "an RSA key of 2048 bits or more"}


def fits(key: Any, algorithm: str) -> bool:
    """Whether `key` (private or public) is of the type, curve and size `algorithm` signs with."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if algorithm == "ES256":
        return isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) and \
            key.curve.name == "secp256r1"
    if algorithm == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey))
    if algorithm in ("RS256", "PS256"):
        return isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size >= 2048
    return False


def load_ca_bundle(path: str) -> str:
    """A PEM file of CA certificates that TLS can use (ValueError otherwise)."""
    if not os.path.isfile(path):
        raise ValueError(f"no file at {path}")
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError):
        raise ValueError(f"{path} holds no usable PEM CA certificate") from None
    return path


def rewrite_origin(url: str, rewrite: tuple[str, str] | None) -> str:
    """Swap the issuer's origin for the provider's internal one (`provider_url`)."""
    if rewrite and url.startswith(rewrite[0] + "/"):
        return rewrite[1] + url[len(rewrite[0]):]
    return url
