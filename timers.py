"""One background thread that runs small callbacks at deadlines.

The server needs a few "if nothing happens within N seconds, do X" rules:
a typer who falls silent gets a TYPING_STOP, a stream that never says who it
is gets cancelled, an evicted client that will not read gets cut off. One
thread with a heap of deadlines serves them all, instead of a
`threading.Timer` (a whole thread) per rule per client.

Callbacks run on the timer thread, outside the timer's lock, so they may
take other locks (the hub's). They must be quick and must not raise.
"""

import heapq
import itertools
import logging
import threading
import time

log = logging.getLogger(__name__)


class Timer:
    """A scheduled callback; `cancel()` makes it a no-op if not yet run."""

    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback):
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True  # a plain store is atomic; the thread skips it later


class Timers:
    """Runs `callback` after `delay_s` seconds, on one shared thread."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()  # guards _heap and _closed
        self._changed = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # tie-breaker: equal deadlines run in order
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="timers", daemon=True)
        self._thread.start()

    def schedule(self, delay_s: float, callback) -> Timer:
        timer = Timer(self._clock() + delay_s, callback)
        with self._lock:
            heapq.heappush(self._heap, (timer.deadline, next(self._order), timer))
            self._changed.notify()
        return timer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._lock:
                due = self._wait_for_due()
                if due is None:
                    return
            if not due.cancelled:
                try:
                    due.callback()
                except Exception:  # a bug in one callback must not stop the rest
                    log.exception("timer callback failed")

    def _wait_for_due(self) -> Timer | None:
        """Under the lock: sleep until the earliest timer is due, pop it."""
        while not self._closed:
            if not self._heap:
                self._changed.wait()
                continue
            wait_s = self._heap[0][0] - self._clock()
            if wait_s <= 0:
                return heapq.heappop(self._heap)[2]
            self._changed.wait(wait_s)
        return None
