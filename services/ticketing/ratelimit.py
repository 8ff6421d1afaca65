"""Per-client token buckets for joins: a surge is queued, a single client flooding joins is not."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by client, at most ``max_clients`` of them.

    The buckets are kept in the order they were last used (a dict re-inserted on use), so a new
    client beyond the bound evicts the least recently used one in O(1). An evicted client starts
    again with a full burst: under a flood of distinct addresses the bound on memory wins over
    remembering the quietest client's last few joins.
    """

    MAX_CLIENTS = 100_000

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    @property
    def clients(self) -> int:
        return len(self._buckets)

    def acquire(self, client: str, now: float) -> float:
        """0 if allowed, else seconds until a token is available."""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.pop(client, None)
        if bucket is None:
            while len(self._buckets) >= self.max_clients:
                del self._buckets[next(iter(self._buckets))]  # the least recently used
            bucket = _Bucket(float(self.burst), now)
        self._buckets[client] = bucket  # now the most recently used
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate
