"""Ticket tokens, entry-token keys and rotation, and the settings' refusal of unsafe defaults."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from waitroom_ticketing.ratelimit import RateLimiter
from waitroom_ticketing.settings import DEV_ADMIN_TOKEN, TicketingSettings
from waitroom_ticketing.tokens import EntryTokenSigner, RandomTicketIds, TicketTokens, write_private_key


def test_a_ticket_token_verifies_only_for_its_own_room_and_ticket() -> None:
    tokens = TicketTokens("secret-one")
    token = tokens.token_for("room", "ticket-a")
    assert tokens.verify("room", "ticket-a", token)
    assert not tokens.verify("room", "ticket-b", token)
    assert not tokens.verify("other-room", "ticket-a", token)
    assert not TicketTokens("secret-two").verify("room", "ticket-a", token)


def test_ticket_ids_are_random_version_4_uuids_each_once_across_refills_of_the_pool() -> None:
    ids = RandomTicketIds()
    drawn = [ids() for _ in range(3 * RandomTicketIds.CHUNK // 16 + 5)]  # the pool read four times
    assert len(set(drawn)) == len(drawn)
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in drawn)


def test_a_forked_worker_does_not_hand_out_the_ids_its_parent_has_in_its_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = RandomTicketIds()
    parent()  # the pool is read in the parent
    state = (parent._pool, parent._at, parent._pid)
    parents_next = {parent() for _ in range(10)}  # what the parent hands out next, from that pool
    child = RandomTicketIds()
    child._pool, child._at, child._pid = state  # what a fork copies
    monkeypatch.setattr(os, "getpid", lambda: state[2] + 1)
    assert {child() for _ in range(10)}.isdisjoint(parents_next)


def test_an_idempotency_key_names_the_same_ticket_on_every_replica_and_differs_per_room() -> None:
    one, two = TicketTokens("shared-secret"), TicketTokens("shared-secret")
    assert one.ticket_id_for_key("room", "key-12345") == two.ticket_id_for_key("room", "key-12345")
    assert one.ticket_id_for_key("room", "key-12345") != one.ticket_id_for_key("other", "key-12345")


def _public_pem(private_pem: Path, target: Path) -> None:
    private = serialization.load_pem_private_key(private_pem.read_bytes(), password=None)
    target.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def test_the_newest_key_signs_and_retired_keys_stay_in_the_jwks_for_rotation(tmp_path: Path) -> None:
    write_private_key(tmp_path / "2026-10-01.pem")
    write_private_key(tmp_path / "2026-11-01.pem")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    write_private_key(scratch / "old.pem")
    _public_pem(scratch / "old.pem", tmp_path / "2026-09-01.pub.pem")

    signer = EntryTokenSigner.from_dir(tmp_path, issuer="waitroom", ttl_s=30)
    assert signer.active_kid == "2026-11-01"
    jwks = signer.jwks()
    assert sorted(k["kid"] for k in jwks["keys"]) == ["2026-09-01", "2026-10-01", "2026-11-01"]

    token = signer.sign("room", "ticket", 7, now=time.time())
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["RS256"], audience="room")
    assert claims["sub"] == "ticket" and claims["exp"] - claims["iat"] == 30 and claims["queue_no"] == 7

    pinned = EntryTokenSigner.from_dir(tmp_path, issuer="waitroom", ttl_s=30, active_kid="2026-10-01")
    assert jwt.get_unverified_header(pinned.sign("r", "t", 1, 0))["kid"] == "2026-10-01"
    with pytest.raises(ValueError, match="not among"):
        EntryTokenSigner.from_dir(tmp_path, issuer="waitroom", ttl_s=30, active_kid="2026-09-01")


def test_a_key_folder_without_keys_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no \\*.pem keys"):
        EntryTokenSigner.from_dir(tmp_path, issuer="waitroom", ttl_s=30)


def test_production_refuses_missing_default_and_short_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WAITROOM_ENV", "production")
    monkeypatch.setenv("WAITROOM_TICKETING_JWT_KEYS_DIR", str(tmp_path))
    with pytest.raises(ValidationError, match="admin_token must be set"):
        TicketingSettings()
    monkeypatch.setenv("WAITROOM_TICKETING_ADMIN_TOKEN", DEV_ADMIN_TOKEN)
    monkeypatch.setenv("WAITROOM_TICKETING_TICKET_SECRET", "a-long-enough-ticket-secret")
    with pytest.raises(ValidationError, match="development default"):
        TicketingSettings()
    monkeypatch.setenv("WAITROOM_TICKETING_ADMIN_TOKEN", "short")
    with pytest.raises(ValidationError, match="at least 16"):
        TicketingSettings()
    monkeypatch.setenv("WAITROOM_TICKETING_ADMIN_TOKEN", "a-real-admin-token-of-length")
    monkeypatch.delenv("WAITROOM_TICKETING_JWT_KEYS_DIR")
    with pytest.raises(ValidationError, match="jwt_keys_dir"):
        TicketingSettings()
    monkeypatch.setenv("WAITROOM_TICKETING_JWT_KEYS_DIR", str(tmp_path))
    settings = TicketingSettings()
    assert settings.admin_token is not None
    assert "a-real-admin-token" not in repr(settings), "secrets must not appear in reprs or logs"


def test_development_accepts_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAITROOM_ENV", "development")
    settings = TicketingSettings()
    assert settings.admin_token is not None and settings.admin_token.get_secret_value() == DEV_ADMIN_TOKEN


def test_the_rate_limiter_refills_at_its_rate_and_caps_at_its_burst() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=2)
    assert limiter.acquire("a", 0.0) == 0 and limiter.acquire("a", 0.0) == 0
    assert limiter.acquire("a", 0.0) == pytest.approx(0.5)
    assert limiter.acquire("b", 0.0) == 0, "clients have their own buckets"
    assert limiter.acquire("a", 0.5) == 0
    assert limiter.acquire("a", 100.0) == 0 and limiter.acquire("a", 100.0) == 0
    assert limiter.acquire("a", 100.0) > 0
    assert RateLimiter(0, 1).acquire("a", 0.0) == 0, "rate 0 disables the limit"
