"""The per-client join buckets stay bounded and cost O(1) per new client however many exist."""

from __future__ import annotations

import time

from waitroom_ticketing.ratelimit import RateLimiter


def test_a_flood_of_new_clients_keeps_the_table_bounded_and_each_new_client_cheap() -> None:
    limiter = RateLimiter(rate_per_s=0.01, burst=1)  # nobody refills during the test
    for n in range(100_000):
        limiter.acquire(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", 0.0)
    assert limiter.clients == 100_000

    started = time.perf_counter()
    for n in range(20_000):
        assert limiter.acquire(f"new-{n}", 1.0) == 0.0  # a new client gets its burst
    per_client_s = (time.perf_counter() - started) / 20_000
    assert limiter.clients == 100_000
    # a scan of the table per new client (the old eviction) costs milliseconds at this size
    assert per_client_s < 0.0005, f"{per_client_s * 1e6:.0f} µs per new client"


def test_an_active_client_is_not_evicted_by_a_flood_and_stays_limited() -> None:
    limiter = RateLimiter(rate_per_s=0.01, burst=1, max_clients=3)
    assert limiter.acquire("busy", 0.0) == 0.0
    for n in range(10):
        limiter.acquire(f"other-{n}", 0.0)
        assert limiter.acquire("busy", 0.0) > 0  # still remembered: its burst is spent
    assert limiter.clients == 3
