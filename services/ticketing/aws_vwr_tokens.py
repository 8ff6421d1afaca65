"""The AWS facade's token sets: RS256 JWTs with the claims AWS's ``generate_token`` issues.

Each set is three JWTs over the same claims (``aud`` = event id, ``sub`` = request id,
``queue_position``, ``iss``, ``iat``, ``nbf``, ``exp``) that differ only in ``token_use``
(``access``, ``refresh``, ``id``). The facade's key is its own (not the entry-token keys): AWS
publishes one RSA key as a bare JWK at ``/public_key``, and sites verify against that.

RS256 (PKCS#1 v1.5) signatures are deterministic, so the same claims give byte-identical tokens on
every replica that holds the key; a small cache only spares the signing work for repeated calls.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

TOKEN_USES = ("access", "refresh", "id")


@dataclass(frozen=True, slots=True)
class Claims:
    event_id: str
    request_id: str
    queue_position: int
    issuer: str
    issued_at: int
    expires: int

    def as_dict(self, token_use: str) -> dict[str, Any]:
        return {
            "aud": self.event_id,
            "sub": self.request_id,
            "queue_position": self.queue_position,
            "token_use": token_use,
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "exp": self.expires,
            "iss": self.issuer,
        }


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str
    refresh_token: str
    id_token: str


class AwsVwrKey:
    """One RSA key: signs token sets and publishes its public half as a JWK."""

    def __init__(self, private_key: rsa.RSAPrivateKey, *, max_cached: int = 50_000) -> None:
        if private_key.key_size < 2048:
            raise ValueError(f"the AWS VWR key must have at least 2048 bits, not {private_key.key_size}")
        self._private = private_key
        public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        # AWS's kid is 32 hex digits (a UUID's); this one is as long, and names the key itself.
        self.kid = hashlib.sha256(public_der).hexdigest()[:32]
        self._max_cached = max_cached
        self._cache: OrderedDict[tuple[Claims, bool], TokenSet] = OrderedDict()

    @classmethod
    def from_file(cls, path: Path) -> AwsVwrKey:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path.name}: the AWS VWR key must be an RSA private key (RS256)")
        return cls(key)

    @classmethod
    def ephemeral(cls) -> AwsVwrKey:
        """Development only: a key that lives as long as the process."""
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def public_jwk(self) -> dict[str, Any]:
        """The public key as AWS's ``/public_key`` returns it: ``kty``, ``alg``, ``kid``, ``n``, ``e``."""
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._private.public_key(), as_dict=True)
        return {"alg": "RS256", "e": jwk["e"], "kid": self.kid, "kty": "RSA", "n": jwk["n"]}

    def token_set(self, claims: Claims, *, kid_in_header: bool = True) -> TokenSet:
        """The three tokens; AWS's private ``generate_token`` leaves ``kid`` out of the header."""
        cache_key = (claims, kid_in_header)
        cached = self._cache.get(cache_key)
        if cached is not None:
            self._cache.move_to_end(cache_key)
            return cached
        headers = {"kid": self.kid} if kid_in_header else None
        tokens = TokenSet(
            *(jwt.encode(claims.as_dict(use), self._private, algorithm="RS256", headers=headers) for use in TOKEN_USES)
        )
        self._cache[cache_key] = tokens
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        return tokens
