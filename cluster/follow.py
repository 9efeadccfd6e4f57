"""One thread that reads Redis streams in order, from where it left off, and never dies.

The message streams (cluster/store.py: the lobby's and the bus of the other
rooms) and the events stream (cluster/presence.py) are each followed by a
`StreamFollower`. It hands what each read brought to its owner's
`handle(batches)`: {stream key: entries}, each stream's in its order, each
entry once; then it marks in `progress` (cluster/order.py) how far each
stream was handed on. One call for every stream read at once lets the owner
hand on one stream's entries while another's wait. It reads in two modes:

- **at the tail**: one `XREAD BLOCK` over its streams from the last id seen
  in each, waiting for news;
- **going back**: at the tail, a quiet second also checks that no stream's
  last id went below our position (Redis emptied): if one did, it is read
  again from its start (`_check_went_back`);
- **catching up** (at start, after any Redis error, and after a full batch,
  when it may be far behind): the CATCH_UP script, which returns the next
  entries *and*, at the same instant, whether entries after our position
  were trimmed (MAXLEN) before we read them, and how many. Then the owner's
  `gap(missed)` is told, and never otherwise: a message that was not
  trimmed is never reported missing.

To count what was trimmed, the follower keeps, per stream, how many entries
the stream had ever been given up to its position (XINFO's entries-added).
If `resync` is given (one stream only), it is called at start and after
every discontinuity (an error, a gap) and returns a fresh position: the
owner rebuilds its view (the cluster: who is online) and reading resumes
from there.

A failing `handle` loses its batch (logged once per kind of failure), never
the thread: the position moves past the batch first.
"""

import logging
import threading

import redis

from cluster.keys import FOLLOW_BLOCK_MS, RedisLink, entry_fields
from cluster.order import Progress
from store import id_key

log = logging.getLogger(__name__)

FOLLOW_BATCH_MAX = 500  # entries per read; a full batch means we may be behind
RETRY_S = 0.5  # after a Redis error, wait this long before reading again
FAILURES_LOGGED_MAX = 100  # kinds of handler failure remembered as already logged


class StreamFollower:
    """Follows `keys` (one stream's key, or several) on its own thread; see the module docstring."""

    def __init__(
        self, link: RedisLink, keys, name: str, handle, gap=None, resync=None, settle=None,
        progress=None,
    ):  # fmt: skip
        self._link = link
        self._keys = (keys,) if isinstance(keys, str) else tuple(keys)
        self._handle = handle  # handle({key: [(id, fields dict)], oldest first})
        self._gap = gap or (lambda missed: None)  # gap(missed): entries trimmed unread
        self._resync = resync  # resync() -> (position, entries added), or None (one stream)
        # settle(): returns once what was just read may be handed on, or raises RedisError
        # (--redis-replicas: once replicas hold it); the position moves only after it.
        self._settle = settle or (lambda: None)
        self._progress = progress or Progress()  # what was handed on: another follower waits
        # Per stream: (last id read, entries ever added up to it). Owned by the thread once started.
        self._at: dict[str, tuple[str, int]] = dict.fromkeys(self._keys, ("0-0", 0))
        self._stopped = threading.Event()
        self._failures: set[str] = set()  # kinds of failure logged (this thread only)
        self._thread = threading.Thread(target=self._run, name=name)

    def start(self, position: str | None = None, added: int = 0) -> None:
        """Read one stream from after `position` (`added` entries up to it), or from a resync."""
        if position is not None:
            self._at[self._keys[0]] = (position, added)
        self._thread.start()

    def start_at(self, tails: dict[str, tuple[str, int]]) -> None:
        """Read each stream from after its (position, entries added)."""
        self._at.update(tails)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stopped.set()
        for key in self._keys:
            self._progress.stop(key)  # the other follower must not wait for us now
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        for key, (position, _) in self._at.items():
            self._progress.passed(key, position)  # what came before we followed is not ours
        behind = True  # catch up (and check for trimming) before blocking at the tail
        needs_resync = self._resync is not None
        while not self._stopped.is_set():
            try:
                if needs_resync:
                    self._at[self._keys[0]] = self._resync()
                    self._progress.passed(self._keys[0], self._at[self._keys[0]][0])
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
        """Wait for news at the tail; True if a batch was full (we may be behind)."""
        positions = {key: position for key, (position, _) in self._at.items()}
        reply = self._link.client.xread(positions, count=FOLLOW_BATCH_MAX, block=FOLLOW_BLOCK_MS)
        if not reply:
            self._check_went_back()  # quiet: or are new entries below our position?
            return False
        self._settle()
        self._take(dict(reply))
        return any(len(entries) == FOLLOW_BATCH_MAX for _, entries in reply)

    def _check_went_back(self) -> None:
        """Start again from a stream's start if its ids went back below our position.

        Redis restarted empty, FLUSHALL, or an entry dated in the future then
        removed: new entries get ids below the last we read, and XREAD from
        there would wait for the clock to catch up. Dedupe (the owner's) keeps
        an entry read twice from being delivered twice.
        """
        for key in self._keys:
            last, _ = self._link.run("tail", [key], [], self._link.client)
            position = self._at[key][0]
            if id_key(last) < id_key(position):
                log.warning("stream %s went back (%s, we read up to %s): reading it from its start",
                            key, last, position)  # fmt: skip
                self._at[key] = ("0-0", 0)
                if self._resync is not None:
                    raise _Resync()

    def _catch_up(self) -> bool:
        """Read on in each stream with the trimming check; True while more may wait."""
        batches = {}
        for key in self._keys:
            args = [self._at[key][0], FOLLOW_BATCH_MAX]
            raw, first, added, length = self._link.run("catch_up", [key], args, self._link.client)
            missed = self._trimmed(key, first, added, length)
            if missed:
                self._gap(missed)
                if self._resync is not None:
                    raise _Resync()
            batches[key] = [(entry_id, entry_fields(flat)) for entry_id, flat in raw]
        if any(batches.values()):
            self._settle()
        self._take(batches)
        return any(len(entries) == FOLLOW_BATCH_MAX for entries in batches.values())

    def _trimmed(self, key: str, first: str, added: int, length: int) -> int:
        """How many entries after our position in `key` were trimmed before we read them."""
        position, added_before = self._at[key]
        if first == "0-0" or id_key(first) <= id_key(position):
            return 0  # our position is still in the stream: nothing unread is gone
        missed = added - added_before - length  # given after our position, minus still there
        self._at[key] = (position, added - length)  # counted up to just before `first`
        return max(missed, 0)  # negative: the stream was recreated, nothing to report

    def _take(self, batches: dict[str, list]) -> None:
        batches = {key: entries for key, entries in batches.items() if entries}
        if not batches:
            return
        for key, entries in batches.items():  # first: a failing handler cannot stall us
            self._at[key] = (entries[-1][0], self._at[key][1] + len(entries))
        try:
            self._handle(batches)
        except Exception as error:  # noqa: BLE001 - logged, and the next batch comes
            self._log_once(error)
        for key, entries in batches.items():
            self._progress.passed(key, entries[-1][0])

    def _log_once(self, error: Exception) -> None:
        kind = f"{type(error).__name__}: {error}"
        if kind in self._failures or len(self._failures) >= FAILURES_LOGGED_MAX:
            return
        self._failures.add(kind)
        log.exception("following %s: %s (going on)", ", ".join(self._keys), kind)


class _Resync(Exception):
    """Raised inside the loop: our view has a hole, rebuild it."""
