"""One thread that reads one Redis stream in order, from where it left off, and never dies.

The message stream (redis_store.py) and the events stream (cluster.py) are
each followed by a `StreamFollower`. It hands batches of entries to its
owner's `handle(entries)`, in the stream's order, each entry once. It reads
in two modes:

- **at the tail**: `XREAD BLOCK` from the last id seen, waiting for news;
- **catching up** (at start, after any Redis error, and after a full batch,
  when it may be far behind): the CATCH_UP script, which returns the next
  entries *and*, at the same instant, whether entries after our position
  were trimmed (MAXLEN) before we read them, and how many. Then the owner's
  `gap(missed)` is told, and never otherwise: a message that was not
  trimmed is never reported missing.

To count what was trimmed, the follower keeps `_added`: how many entries
the stream had ever been given up to its position (XINFO's entries-added).
If `resync` is given, it is called at start and after every discontinuity
(an error, a gap) and returns a fresh position: the owner rebuilds its view
(the cluster: who is online) and reading resumes from there.

A failing `handle` loses its batch (logged once per kind of failure), never
the thread: the position moves past the batch first.
"""

import logging
import threading

import redis

from redis_keys import FOLLOW_BLOCK_MS, RedisLink, entry_fields
from store import id_key

log = logging.getLogger(__name__)

FOLLOW_BATCH_MAX = 500  # entries per read; a full batch means we may be behind
RETRY_S = 0.5  # after a Redis error, wait this long before reading again
FAILURES_LOGGED_MAX = 100  # kinds of handler failure remembered as already logged


class StreamFollower:
    """Follows `key` on its own thread; see the module docstring."""

    def __init__(self, link: RedisLink, key: str, name: str, handle, gap=None, resync=None):
        self._link = link
        self._key = key
        self._handle = handle  # handle(entries): [(id, fields dict)], oldest first
        self._gap = gap or (lambda missed: None)  # gap(missed): entries trimmed unread
        self._resync = resync  # resync() -> (position, entries added), or None
        self._position, self._added = "0-0", 0  # owned by the thread once started
        self._stopped = threading.Event()
        self._failures: set[str] = set()  # kinds of failure logged (this thread only)
        self._thread = threading.Thread(target=self._run, name=name)

    def start(self, position: str | None = None, added: int = 0) -> None:
        """Read from after `position` (with `added` entries up to it), or from a resync."""
        if position is not None:
            self._position, self._added = position, added
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        behind = True  # catch up (and check for trimming) before blocking at the tail
        needs_resync = self._resync is not None
        while not self._stopped.is_set():
            try:
                if needs_resync:
                    self._position, self._added = self._resync()
                    needs_resync = False
                behind = self._catch_up() if behind else self._read_tail()
                self._link.mark_up()
            except _Resync:
                needs_resync, behind = True, True
            except redis.RedisError:
                self._link.mark_down()  # the store's writer and the heartbeat log outages
                needs_resync, behind = self._resync is not None, True
                self._stopped.wait(RETRY_S)
            except Exception as error:  # a bug must not stop delivery for good
                self._log_once(error)
                behind = True
                self._stopped.wait(RETRY_S)

    def _read_tail(self) -> bool:
        """Wait for news at the tail; True if the batch was full (we may be behind)."""
        reply = self._link.client.xread(
            {self._key: self._position}, count=FOLLOW_BATCH_MAX, block=FOLLOW_BLOCK_MS
        )
        entries = reply[0][1] if reply else []
        self._take(entries)
        return len(entries) == FOLLOW_BATCH_MAX

    def _catch_up(self) -> bool:
        """Read on with the trimming check; True while more may wait."""
        args = [self._position, FOLLOW_BATCH_MAX]
        raw, first, added, length = self._link.run("catch_up", [self._key], args, self._link.client)
        missed = self._trimmed(first, added, length)
        if missed:
            self._gap(missed)
            if self._resync is not None:
                raise _Resync()
        self._take([(entry_id, entry_fields(flat)) for entry_id, flat in raw])
        return len(raw) == FOLLOW_BATCH_MAX

    def _trimmed(self, first: str, added: int, length: int) -> int:
        """How many entries after our position were trimmed before we read them."""
        if first == "0-0" or id_key(first) <= id_key(self._position):
            return 0  # our position is still in the stream: nothing unread is gone
        missed = added - self._added - length  # given after our position, minus still there
        self._added = added - length  # from now on: counted up to just before `first`
        return max(missed, 0)  # negative: the stream was recreated, nothing to report

    def _take(self, entries: list) -> None:
        if not entries:
            return
        self._position = entries[-1][0]  # first: a failing handler cannot stall us
        self._added += len(entries)
        try:
            self._handle(entries)
        except Exception as error:  # noqa: BLE001 - logged, and the next batch comes
            self._log_once(error)

    def _log_once(self, error: Exception) -> None:
        kind = f"{type(error).__name__}: {error}"
        if kind in self._failures or len(self._failures) >= FAILURES_LOGGED_MAX:
            return
        self._failures.add(kind)
        log.exception("following %s: %s (going on)", self._key, kind)


class _Resync(Exception):
    """Raised inside the loop: our view has a hole, rebuild it."""
