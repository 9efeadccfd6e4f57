"""Token bucket: how many chat messages one client may send, and when.

The server asks a bucket once per chat message, on the sender's reader
thread, and once per join, on the joining stream's pool thread. Buckets
live in `Buckets`, keyed by user name (messages) or by client address
(joins), so reconnecting does not refill them. Typing events never go
through a bucket.

The algorithm, in steps:

1. A bucket holds at most `burst` tokens and starts full.
2. Tokens flow in at `rate` per second. There is no timer: when the bucket
   is asked, it first adds `elapsed seconds * rate`, capped at `burst`.
   An idle client costs nothing.
3. A message costs one token. With a token in the bucket, take it and allow.
4. Without one, refuse, and say how long until the next token arrives:
   `(1 - tokens) / rate` seconds. The sender is told to retry then.

The clock is injected (`time.monotonic` by default, never wall time, which
can jump), so tests drive time by hand.
"""

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Allow `burst` messages at once, then `rate` per second on average."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # step 1: start full
        self._last_refill = clock()

    def try_take(self) -> float:
        """Take a token. Return 0.0 if allowed, else the seconds to wait."""
        self._refill()
        if self._tokens >= 1:  # step 3
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate  # step 4

    def give_back(self) -> None:
        """Return a token taken for something that turned out free (a good password)."""
        self._tokens = min(self.burst, self._tokens + 1)

    def _refill(self) -> None:
        """Step 2: add what flowed in since the last call."""
        now = self._clock()
        elapsed = max(0.0, now - self._last_refill)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last_refill = now


class Buckets:
    """One TokenBucket per key (a name, an address), kept while it matters.

    A bucket that has been left alone long enough to be full again is the
    same as a new one, so it is forgotten then: memory stays bounded by the
    keys active in the last `burst / rate` seconds.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._full_after_s = burst / rate  # idle this long, a bucket is full again
        self._lock = threading.Lock()  # guards _buckets, _last_used, _next_prune
        self._buckets: dict[str, TokenBucket] = {}
        self._last_used: dict[str, float] = {}
        self._next_prune = clock() + self._full_after_s

    def try_take(self, key: str) -> float:
        """Take a token from `key`'s bucket: 0.0 if allowed, else the seconds to wait."""
        with self._lock:
            now = self._clock()
            if now >= self._next_prune:
                self._prune(now)
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
            self._last_used[key] = now
            return bucket.try_take()

    def give_back(self, key: str) -> None:
        """Return a token to `key`'s bucket, if it is still kept (else it is full anyway)."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.give_back()

    def _prune(self, now: float) -> None:
        for key in [k for k, used in self._last_used.items() if now - used >= self._full_after_s]:
            del self._buckets[key], self._last_used[key]
        self._next_prune = now + self._full_after_s
