"""What a token is: the rules of everything signed that kcauth reads, pure (no I/O, no state).

- `claims.py`: strict JSON (no NaN, no lone surrogates), times, claim paths, roles and scopes;
- `jws.py`: the one JWS layer: parse, header policy, the signature with a given key;
- `jwk.py`: which entries of a key set may verify which token;
- over the JWS layer, each token type's claim rules: `access.py` (Keycloak access tokens),
  `logout.py` (back-channel logout tokens, not-before pushes), `dpop.py` (DPoP proofs),
  `secevent.py` (Security Event Tokens of a Shared Signals transmitter).
Rules answer what they refuse (`access.refusal`, `logout.logout_refusal`) before any key is
looked at; the key is the caller's (idp/keys.py `KeySet.verify`).

May import: `config`, `errors`.
"""
