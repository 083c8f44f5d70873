"""Per-merchant token buckets.

Each merchant has a bucket of ``burst`` tokens that refills at ``rate``
tokens per second; a request takes one token or is refused with the time
until one is back. Rate and burst are passed on every call, so a merchant's
own values (from its record) and the defaults (``Settings.rate_limit_per_s``,
``Settings.rate_limit_burst``) need no registration, and a change applies at
once.

The buckets live in this process's memory: with N ingress processes behind a
load balancer a merchant gets up to N times the configured rate. That is the
intended trade (no shared store on the request path); size the limits per
process.

Memory is bounded. A bucket that has been idle long enough to be full again is
indistinguishable from a new one, so it is dropped; and at most
``merchants_max`` buckets are kept: when another merchant arrives, the least
recently used bucket goes. Dropping a bucket can only give its merchant a full
bucket early, never refuse anyone.

Call ``take`` from the event loop's thread; it never awaits, so calls are
atomic with respect to one another. It raises nothing: the caller turns a
refusal into ``Problem(429, "rate-limited", ..., headers={"Retry-After": ...})``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ledger import limits

# Floors for nonsensical arguments, so a bad override makes the limiter as
# strict as it gets instead of dividing by zero: one request per hour.
RATE_PER_S_MIN = 1.0 / 3600.0
# Float error could turn an exact 2 s wait into 2.0000000001 and so a
# Retry-After of 3; waits within this of an integer round down to it.
_ROUNDING_SLACK_S = 1e-9


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_at: float  # clock reading when ``tokens`` was computed
    full_at: float  # clock reading from which the bucket is full again


class RateLimiter:
    """Token buckets keyed by merchant id, with an injectable monotonic clock."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        merchants_max: int = limits.RATE_LIMIT_MERCHANTS_MAX,
    ) -> None:
        if merchants_max < 1:
            raise ValueError("merchants_max must be at least 1")
        self._clock = clock
        self._merchants_max = merchants_max
        # Least recently used first: eviction pops from the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many merchants have a bucket now."""
        return len(self._buckets)

    def take(self, merchant_id: str, rate: float, burst: float) -> float | None:
        """Take one token: ``None`` if allowed, else whole seconds to wait (>= 1).

        ``rate`` is tokens per second, ``burst`` the bucket size. The wait is
        rounded up, so a client that waits that long (``Retry-After``) finds
        a token.
        """
        rate = rate if rate >= RATE_PER_S_MIN else RATE_PER_S_MIN  # also catches NaN
        rate = rate if math.isfinite(rate) else float(limits.RATE_LIMIT_PER_S_CEILING)
        burst = burst if burst >= 1.0 else 1.0  # also catches NaN
        burst = burst if math.isfinite(burst) else float(limits.RATE_LIMIT_BURST_CEILING)
        now = self._clock()
        self._evict_idle(now)

        bucket = self._buckets.get(merchant_id)
        if bucket is None:
            tokens = burst
            if len(self._buckets) >= self._merchants_max:
                self._buckets.popitem(last=False)
        else:
            # max(): an injected clock that steps back must not drain a bucket.
            elapsed = max(0.0, now - bucket.updated_at)
            tokens = min(burst, bucket.tokens + elapsed * rate)
            self._buckets.move_to_end(merchant_id)

        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        full_at = now + (burst - tokens) / rate
        if bucket is None:
            self._buckets[merchant_id] = _Bucket(tokens, now, full_at)
        else:
            bucket.tokens, bucket.updated_at, bucket.full_at = tokens, now, full_at
        if allowed:
            return None
        wait_s = (1.0 - tokens) / rate
        return float(max(1, math.ceil(wait_s - _ROUNDING_SLACK_S)))

    def _evict_idle(self, now: float) -> None:
        # The least recently used buckets are the likeliest to be full. Each
        # bucket is evicted at most once, so this costs O(1) amortized.
        while self._buckets:
            merchant_id, bucket = next(iter(self._buckets.items()))
            if bucket.full_at > now:
                return
            del self._buckets[merchant_id]
