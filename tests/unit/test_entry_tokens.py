"""Entry tokens: ES256 by default, RS256 selectable, rotation across both, and re-signing only when due."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from waitroom_ticketing.tokens import EntryTokenSigner, SigningKey, new_private_key, write_private_key

TTL_S = 60


def verify(token: str, jwks: dict[str, Any], audience: str) -> dict[str, Any]:
    """What a protected site does: pick the JWKS key by kid and verify with that key's algorithm."""
    header = jwt.get_unverified_header(token)
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    assert header["alg"] == jwk["alg"]
    claims: dict[str, Any] = jwt.decode(token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], audience=audience)
    return claims


def write_public_key(private_pem: Path, target: Path) -> None:
    private = serialization.load_pem_private_key(private_pem.read_bytes(), password=None)
    target.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def age(path: Path, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))


def test_the_development_key_is_p256_and_its_tokens_verify_as_es256_against_the_jwks() -> None:
    signer = EntryTokenSigner.ephemeral("waitroom", TTL_S)
    assert signer.algorithm == "ES256"
    [jwk] = signer.jwks()["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    claims = verify(signer.sign("shop", "t-1", 4, time.time()), signer.jwks(), "shop")
    assert claims["sub"] == "t-1" and claims["queue_no"] == 4 and claims["exp"] - claims["iat"] == TTL_S


def test_an_rsa_key_directory_signs_rs256(tmp_path: Path) -> None:
    write_private_key(tmp_path / "rsa-1.pem", "RS256")
    signer = EntryTokenSigner.from_dir(tmp_path, "waitroom", TTL_S)
    assert signer.algorithm == "RS256"
    [jwk] = signer.jwks()["keys"]
    assert (jwk["kty"], jwk["alg"]) == ("RSA", "RS256")
    assert verify(signer.sign("shop", "t-1", 1, time.time()), signer.jwks(), "shop")["aud"] == "shop"


def test_rotation_from_rs256_to_es256_keeps_old_tokens_verifiable_through_the_jwks(tmp_path: Path) -> None:
    write_private_key(tmp_path / "2026-10.pem", "RS256")
    age(tmp_path / "2026-10.pem", 3600)
    old = EntryTokenSigner.from_dir(tmp_path, "waitroom", TTL_S)
    issued_before = old.sign("shop", "t-1", 1, time.time())

    write_private_key(tmp_path / "2026-11.pem", "ES256")
    rotated = EntryTokenSigner.from_dir(tmp_path, "waitroom", TTL_S)
    assert rotated.active_kid == "2026-11" and rotated.algorithm == "ES256"
    jwks = rotated.jwks()
    assert {(k["kid"], k["alg"]) for k in jwks["keys"]} == {("2026-10", "RS256"), ("2026-11", "ES256")}
    assert verify(issued_before, jwks, "shop")["sub"] == "t-1"  # a token of the old key still verifies
    assert jwt.get_unverified_header(rotated.sign("shop", "t-2", 2, time.time()))["kid"] == "2026-11"

    # Retire the RSA key: only its public half stays, so tokens it signed verify until they expire.
    write_public_key(tmp_path / "2026-10.pem", tmp_path / "2026-10.pub.pem")
    (tmp_path / "2026-10.pem").unlink()
    retired = EntryTokenSigner.from_dir(tmp_path, "waitroom", TTL_S)
    assert retired.active_kid == "2026-11"
    assert verify(issued_before, retired.jwks(), "shop")["sub"] == "t-1"


def test_the_newest_key_file_signs_not_the_greatest_kid(tmp_path: Path) -> None:
    write_private_key(tmp_path / "k9.pem", "ES256")
    age(tmp_path / "k9.pem", 600)
    write_private_key(tmp_path / "k10.pem", "ES256")
    assert EntryTokenSigner.from_dir(tmp_path, "waitroom", TTL_S).active_kid == "k10"
    assert EntryTokenSigner.from_dir(tmp_path, "waitroom", TTL_S, active_kid="k9").active_kid == "k9"


def test_keys_that_cannot_sign_es256_or_rs256_are_refused_at_start(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.pem").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ValueError, match="P-256"):
        EntryTokenSigner.from_dir(tmp_path, "waitroom", TTL_S)


def test_a_token_is_re_signed_only_past_half_its_lifetime_and_exp_stays_ahead_of_every_heartbeat() -> None:
    signer = EntryTokenSigner.ephemeral("waitroom", TTL_S)
    interval_s = 5.0
    start = 1_000_000.0
    tokens = []
    for beat in range(int(600 / interval_s)):  # ten minutes of heartbeats every 5 s
        now = start + beat * interval_s
        token = signer.sign("shop", "t-1", 1, now)
        claims = jwt.decode(token, options={"verify_signature": False})
        # the token handed out now is good until well after the next heartbeat is due
        assert claims["exp"] - now >= TTL_S / 2
        assert claims["exp"] > now + interval_s
        tokens.append(token)
    assert len(set(tokens)) == 600 / (TTL_S / 2)  # one signature per half lifetime, not per heartbeat


def test_the_cache_of_issued_tokens_is_bounded_and_forgets_ended_tickets() -> None:
    key = new_private_key("ES256")
    signer = EntryTokenSigner([SigningKey("k", key, key.public_key())], "waitroom", TTL_S, max_cached=3)
    first = signer.sign("shop", "t-0", 0, 100.0)
    for n in range(1, 5):
        signer.sign("shop", f"t-{n}", n, 100.0)
    assert signer.cached == 3
    assert signer.sign("shop", "t-0", 0, 101.0) != first  # evicted: signed anew (a later iat)
    kept = signer.sign("shop", "t-4", 4, 101.0)
    signer.forget("shop", "t-4")
    assert signer.sign("shop", "t-4", 4, 102.0) != kept
