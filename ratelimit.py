"""Token bucket: how many chat messages one client may send, and when.

The server keeps one bucket per connected client and asks it once per chat
message, on that client's reader thread (SPEC §3.3). Nothing else touches a
client's bucket, so it needs no lock. Typing events never go through it.

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

    def _refill(self) -> None:
        """Step 2: add what flowed in since the last call."""
        now = self._clock()
        elapsed = max(0.0, now - self._last_refill)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last_refill = now
