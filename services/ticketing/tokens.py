"""Ticket tokens (who may act on a ticket) and entry tokens (proof of admission for the site).

A ticket token is an HMAC of the ticket's identity under a server secret: any replica verifies it
without shared storage, and it never appears in the log. An entry token is a short-lived JWT signed
with a P-256 key (ES256, the default: a signature costs a fraction of RSA's) or an RSA key (RS256,
for verifiers that need it), whose ``kid`` is in the JWKS, so the protected site verifies it
offline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class RandomTicketIds:
    """Random version-4 UUIDs for tickets, from the OS's randomness read 4 KiB at a time.

    ``uuid.uuid4()`` reads 16 bytes with ``os.urandom``, and that call lets go of the GIL for its
    syscall: once per join the API's thread then waited for the sequencer's thread to hand the
    GIL back (py-spy of the join row: 12 % of the API thread's samples in ``uuid4``). The ids are
    as random as ``uuid4``'s. The pool belongs to one process: after a fork it is read anew, so
    two API workers never hand out the same ids.
    """

    CHUNK = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        self._pid = -1

    def __call__(self) -> str:
        if self._at >= len(self._pool) or self._pid != os.getpid():
            self._pool, self._at, self._pid = os.urandom(self.CHUNK), 0, os.getpid()
        raw = self._pool[self._at : self._at + 16]
        self._at += 16
        return str(uuid.UUID(bytes=raw, version=4))


new_ticket_id = RandomTicketIds()


class TicketTokens:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def token_for(self, room_id: str, ticket_id: str) -> str:
        return _b64(hmac.new(self._key, f"ticket\x00{room_id}\x00{ticket_id}".encode(), hashlib.sha256).digest())

    def verify(self, room_id: str, ticket_id: str, token: str) -> bool:
        """Whether ``token`` is the ticket's; any other text (non-ASCII included) is simply not."""
        try:
            provided = token.encode("ascii")
        except UnicodeEncodeError:
            return False  # a real token is base64url: compare_digest would raise on such a str
        return hmac.compare_digest(self.token_for(room_id, ticket_id).encode(), provided)

    def ticket_id_for_key(self, room_id: str, idempotency_key: str) -> str:
        """A retry with the same Idempotency-Key names the same ticket, on any replica."""
        digest = hmac.new(self._key, f"idem\x00{room_id}\x00{idempotency_key}".encode(), hashlib.sha256).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))


Algorithm = Literal["ES256", "RS256"]
ALGORITHMS: tuple[Algorithm, ...] = ("ES256", "RS256")
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def algorithm_of(key: PublicKey) -> Algorithm:
    """ES256 for a P-256 key, RS256 for an RSA key (of at least 2048 bits); anything else is refused."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"EC keys must be P-256 for ES256, not {key.curve.name}")
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"RSA keys must have at least 2048 bits, not {key.key_size}")
        return "RS256"
    raise ValueError("entry-token keys are P-256 (ES256) or RSA (RS256)")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: PrivateKey | None  # None: a retired key, still published for verification
    public_key: PublicKey
    #: when the key was made (the key file's mtime): without an explicit active kid, the newest signs
    created_at: float = 0.0

    @property
    def algorithm(self) -> Algorithm:
        return algorithm_of(self.public_key)


@dataclass
class _Issued:
    token: str
    issued_at: float


class EntryTokenSigner:
    """Signs entry tokens with the active key; publishes every key (active and retired) in the JWKS.

    A token is re-signed only once the one issued for the same ticket is past half its lifetime, so a
    heartbeat every few seconds costs a signature only every ``ttl/2`` seconds while ``exp`` stays at
    least ``ttl/2`` ahead of any heartbeat (the cache holds at most ``max_cached`` tickets).
    """

    def __init__(
        self,
        keys: list[SigningKey],
        issuer: str,
        ttl_s: int,
        active_kid: str | None = None,
        *,
        max_cached: int = 200_000,
    ) -> None:
        signing = [k for k in keys if k.private_key is not None]
        if not signing:
            raise ValueError("no private signing key for entry tokens")
        if active_kid is None:
            # The newest key signs: by the key file's own date, never by the order of kid strings
            # ("k9" would beat "k10"); the kid only breaks a tie.
            active = max(signing, key=lambda k: (k.created_at, k.kid))
        else:
            matches = [k for k in signing if k.kid == active_kid]
            if not matches:
                raise ValueError(f"active key {active_kid!r} not among the signing keys")
            active = matches[0]
        for key in keys:
            algorithm_of(key.public_key)  # refuse unusable keys at start-up, not at the first admission
        self._active = active
        self._keys = keys
        self._issuer = issuer
        self.ttl_s = ttl_s
        self._max_cached = max_cached
        self._issued: dict[tuple[str, str], _Issued] = {}

    @property
    def active_kid(self) -> str:
        return self._active.kid

    @property
    def algorithm(self) -> Algorithm:
        return self._active.algorithm

    @property
    def cached(self) -> int:
        """Tickets whose last entry token is kept for reuse."""
        return len(self._issued)

    @classmethod
    def from_dir(cls, path: Path, issuer: str, ttl_s: int, active_kid: str | None = None) -> EntryTokenSigner:
        """``<kid>.pem`` are private keys (P-256 for ES256 or RSA for RS256; the newest file signs
        unless one is named); ``<kid>.pub.pem`` are retired public keys kept in the JWKS until tokens
        signed with them have expired."""
        keys: list[SigningKey] = []
        for file in sorted(path.glob("*.pem")):
            data = file.read_bytes()
            created = file.stat().st_mtime
            if file.name.endswith(".pub.pem"):
                public = serialization.load_pem_public_key(data)
                if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
                    raise ValueError(f"{file.name}: entry-token keys are P-256 (ES256) or RSA (RS256)")
                keys.append(SigningKey(file.name.removesuffix(".pub.pem"), None, public, created))
            else:
                private = serialization.load_pem_private_key(data, password=None)
                if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                    raise ValueError(f"{file.name}: entry-token keys are P-256 (ES256) or RSA (RS256)")
                keys.append(SigningKey(file.stem, private, private.public_key(), created))
        if not keys:
            raise ValueError(f"no *.pem keys in {path}")
        return cls(keys, issuer, ttl_s, active_kid)

    @classmethod
    def ephemeral(cls, issuer: str, ttl_s: int, algorithm: Algorithm = "ES256") -> EntryTokenSigner:
        """Development only: a key that lives as long as the process."""
        private = new_private_key(algorithm)
        public_der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        kid = "dev-" + _b64(hashlib.sha256(public_der).digest())[:8]
        return cls([SigningKey(kid, private, private.public_key())], issuer, ttl_s)

    def sign(self, room_id: str, ticket_id: str, queue_no: int, now: float) -> str:
        """The ticket's entry token: the one issued before while it is less than half its lifetime old."""
        key = (room_id, ticket_id)
        issued = self._issued.get(key)
        if issued is not None and now - issued.issued_at < self.ttl_s / 2 and now >= issued.issued_at:
            return issued.token
        token = self._sign(room_id, ticket_id, queue_no, now)
        self._remember(key, _Issued(token, float(int(now))))
        return token

    def forget(self, room_id: str, ticket_id: str) -> None:
        """The ticket ended: its token is never handed out again."""
        self._issued.pop((room_id, ticket_id), None)

    def _sign(self, room_id: str, ticket_id: str, queue_no: int, now: float) -> str:
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
        return jwt.encode(
            claims, self._active.private_key, algorithm=self._active.algorithm, headers={"kid": self._active.kid}
        )

    def _remember(self, key: tuple[str, str], issued: _Issued) -> None:
        self._issued.pop(key, None)
        self._issued[key] = issued  # insertion order = age: the oldest entry is first
        while len(self._issued) > self._max_cached:
            del self._issued[next(iter(self._issued))]

    def jwks(self) -> dict[str, Any]:
        """Every key, active and retired, with ``kid``, ``alg`` and ``use``."""
        keys = []
        for key in self._keys:
            public = key.public_key
            jwk: dict[str, Any]
            if isinstance(public, ec.EllipticCurvePublicKey):
                jwk = ECAlgorithm.to_jwk(public, as_dict=True)
            else:
                jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
            jwk.update({"kid": key.kid, "use": "sig", "alg": key.algorithm})
            keys.append(jwk)
        return {"keys": keys}


def new_private_key(algorithm: Algorithm = "ES256") -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_private_key(path: Path, algorithm: Algorithm = "RS256") -> None:
    """Write a new private key as PEM (used by the dev stack, tests and benches)."""
    private = new_private_key(algorithm)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
