"""Ticket tokens (who may act on a ticket) and entry tokens (proof of admission for the site).

A ticket token is an HMAC of the ticket's identity under a server secret: any replica verifies it
without shared storage, and it never appears in the log. An entry token is a short-lived JWT signed
with an RSA key whose ``kid`` is in the JWKS, so the protected site verifies it offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TicketTokens:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def token_for(self, room_id: str, ticket_id: str) -> str:
        return _b64(hmac.new(self._key, f"ticket\x00{room_id}\x00{ticket_id}".encode(), hashlib.sha256).digest())

    def verify(self, room_id: str, ticket_id: str, token: str) -> bool:
        return hmac.compare_digest(self.token_for(room_id, ticket_id), token)

    def ticket_id_for_key(self, room_id: str, idempotency_key: str) -> str:
        """A retry with the same Idempotency-Key names the same ticket, on any replica."""
        digest = hmac.new(self._key, f"idem\x00{room_id}\x00{idempotency_key}".encode(), hashlib.sha256).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey | None  # None: a retired key, still published for verification
    public_key: rsa.RSAPublicKey


class EntryTokenSigner:
    ALGORITHM = "RS256"

    def __init__(self, keys: list[SigningKey], issuer: str, ttl_s: int, active_kid: str | None = None) -> None:
        signing = [k for k in keys if k.private_key is not None]
        if not signing:
            raise ValueError("no private signing key for entry tokens")
        if active_kid is None:
            active = max(signing, key=lambda k: k.kid)
        else:
            matches = [k for k in signing if k.kid == active_kid]
            if not matches:
                raise ValueError(f"active key {active_kid!r} not among the signing keys")
            active = matches[0]
        self._active = active
        self._keys = keys
        self._issuer = issuer
        self.ttl_s = ttl_s

    @property
    def active_kid(self) -> str:
        return self._active.kid

    @classmethod
    def from_dir(cls, path: Path, issuer: str, ttl_s: int, active_kid: str | None = None) -> EntryTokenSigner:
        """``<kid>.pem`` are private keys (the newest kid signs unless one is named); ``<kid>.pub.pem``
        are retired public keys kept in the JWKS until tokens signed with them have expired."""
        keys: list[SigningKey] = []
        for file in sorted(path.glob("*.pem")):
            data = file.read_bytes()
            if file.name.endswith(".pub.pem"):
                public = serialization.load_pem_public_key(data)
                if not isinstance(public, rsa.RSAPublicKey):
                    raise ValueError(f"{file.name}: only RSA keys are supported")
                keys.append(SigningKey(file.name.removesuffix(".pub.pem"), None, public))
            else:
                private = serialization.load_pem_private_key(data, password=None)
                if not isinstance(private, rsa.RSAPrivateKey):
                    raise ValueError(f"{file.name}: only RSA keys are supported")
                keys.append(SigningKey(file.stem, private, private.public_key()))
        if not keys:
            raise ValueError(f"no *.pem keys in {path}")
        return cls(keys, issuer, ttl_s, active_kid)

    @classmethod
    def ephemeral(cls, issuer: str, ttl_s: int) -> EntryTokenSigner:
        """Development only: a key that lives as long as the process."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        kid = "dev-" + _b64(hashlib.sha256(private.public_key().public_numbers().n.to_bytes(256, "big")).digest())[:8]
        return cls([SigningKey(kid, private, private.public_key())], issuer, ttl_s)

    def sign(self, room_id: str, ticket_id: str, queue_no: int, now: float) -> str:
        issued = int(now)
        claims = {
            "iss": self._issuer,
            "aud": room_id,
            "sub": ticket_id,
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.ttl_s,
            "queue_no": queue_no,
        }
        assert self._active.private_key is not None
        return jwt.encode(claims, self._active.private_key, algorithm=self.ALGORITHM, headers={"kid": self._active.kid})

    def jwks(self) -> dict[str, Any]:
        keys = []
        for key in self._keys:
            jwk = RSAAlgorithm.to_jwk(key.public_key, as_dict=True)
            jwk.update({"kid": key.kid, "use": "sig", "alg": self.ALGORITHM})
            keys.append(jwk)
        return {"keys": keys}


def write_private_key(path: Path) -> None:
    """Write a new RSA private key as PEM (used by the dev stack and tests)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
