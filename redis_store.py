"""History in a Redis Stream, which is also the message bus between servers.

With `--redis-url`, every accepted message goes to one Redis Stream, and
every server, the one that accepted it included, delivers messages in the
stream's order. So the order, the ids, history and resume all come from one
mechanism, however many servers share the Redis:

    hub.post -> append() -> _pending -> writer thread --XADD--> stream
                                                                  |
    hub.deliver <------ follower (redis_follow.py) <--XREAD BLOCK-+

Threads: the hub's callers append to `_pending`; the *writer* (owned here)
is the only one that removes from it; the *follower* is the only one that
reads the stream for delivery. `_lock` guards `_pending`, `_dropped`,
`_online`, `_delivered_seq`, `_ids` and `_recent`; it is never held during
a Redis call, nor while calling the hub.

When Redis is lost, what happens depends on whether we are alone on it
(`link.shared`, which the cluster's heartbeat keeps):

- **alone**: chat goes on live. The writer delivers what is waiting itself,
  with ids made here, and `append` hands each new message straight back to
  the hub. They wait in `_pending` (bounded) and are written, in order and
  under those ids, as soon as Redis answers again.
- **shared**: an id made here would not hold (another server may give a
  lower one to a message its clients see first), so `append` raises
  `NotSent` and the client sends again later. What was already waiting is
  written when Redis is back and delivered from the stream, like any message.

Every entry carries its origin server and a per-server sequence number, so an
entry delivered during an outage, or written twice because a reply was lost,
is delivered once. History is read a page at a time (`XRANGE ... COUNT`);
while Redis is known to be away, joins are answered from what this server
has: a small cache of recent messages and the unwritten ones.
"""

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from redis_entries import origin, to_message
from redis_follow import StreamFollower
from redis_keys import STREAM_KEY, RedisLink
from store import (
    HISTORY_PAGE,
    IdClock,
    Message,
    NotSent,
    StoreUnavailable,
    id_key,
    messages_after,
    pages,
)

log = logging.getLogger(__name__)

WRITE_BATCH_MAX = 200  # messages per pipelined XADD round trip
PENDING_MAX = 100_000  # messages kept while Redis is away; beyond, the oldest drop
RECENT_MAX = 500  # delivered messages kept for joins while Redis is away
RETRY_S = 0.5  # how often the writer retries a lost Redis
NOT_SENT_TEXT = "cut off from the Redis the other servers share"


@dataclass(slots=True)
class Pending:
    """A message accepted here and not yet written; `id` is set once delivered."""

    seq: int  # this server's sequence number: dedupes writes and outage deliveries
    username: str
    text: str
    timestamp: int
    id: str | None = None

    def message(self) -> Message:
        return Message(self.id, self.username, self.text, self.timestamp)


class RedisStore:
    """A Redis Stream as history and bus; see the module docstring."""

    def __init__(self, url: str, max_messages: int = 10_000, pending_max: int = PENDING_MAX):
        self.description = f"in Redis at {url} (stream {STREAM_KEY})"
        self.redis = RedisLink(url)  # shared with cluster.py; raises StoreUnavailable
        self.server_id = uuid.uuid4().hex[:12]
        self._max_messages = max_messages
        self._pending_max = pending_max
        self._deliver = None  # the hub's callback, given to start()
        self._start_at = self._tail()  # (last id, entries added): the follower starts there
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits here for work
        self._ids = IdClock(after=self._start_at[0])  # ids for messages delivered in an outage
        self._seq = itertools.count(1)
        self._pending: deque[Pending] = deque()
        self._dropped = 0  # overflowed `_pending` since last reported
        self._online = True  # False once the writer found Redis lost, until a write succeeds
        self._delivered_seq = 0  # highest own seq already delivered by us
        self._recent: deque[Message] = deque(maxlen=RECENT_MAX)  # delivered, newest last
        self._seen: dict[str, int] = {}  # origin -> highest seq delivered (follower only)
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer")
        self._follower = StreamFollower(
            self.redis, STREAM_KEY, "redis-follower", self._deliver_new, gap=_log_trimmed
        )

    def _tail(self) -> tuple[str, int]:
        try:
            return tuple(self.redis.run("tail", [STREAM_KEY], []))
        except redis.RedisError as error:
            self.redis.close()
            raise StoreUnavailable(f"cannot read the stream in Redis: {error}") from error

    def start(self, deliver) -> None:
        """Begin writing and following; `deliver(messages)` fans out, in order."""
        self._deliver = deliver
        self._writer.start()
        self._follower.start(*self._start_at)

    def append(self, username: str, text: str, timestamp: int) -> list[Message]:
        """Queue a message for the stream; return what the caller must deliver now.

        Normally nothing: the follower delivers it from the stream. Alone on
        a lost Redis: this message, and if the buffer fills before the writer
        noticed the loss, everything still waiting, so what overflows was at
        least delivered. Raises NotSent if cut off from a shared Redis.
        """
        with self._lock:
            shared = self.redis.shared
            if shared and not (self._online and self.redis.reachable):
                raise NotSent(NOT_SENT_TEXT)
            deliver_now = []
            if len(self._pending) >= self._pending_max:
                if shared:
                    raise NotSent(NOT_SENT_TEXT)  # not delivered: never dropped either
                if self._online:
                    deliver_now = self._strand_locked()
                self._pending.popleft()
                self._dropped += 1
            pending = Pending(next(self._seq), username, text, timestamp)
            if not self._online:  # alone, Redis away: deliver now, write later
                pending.id = self._ids.next()
                self._delivered_seq = pending.seq
                deliver_now.append(pending.message())
                self._recent.append(deliver_now[-1])
            self._pending.append(pending)
            self._wake.notify()
        return deliver_now

    # -- history: pages, oldest first ------------------------------------------

    def history(self, limit: int, after_id: str | None = None) -> Iterator[list[Message]]:
        """Pages of stored messages, plus those delivered but not yet written.

        The last `limit`, or every kept message after `after_id` (a ValueError
        now if it is malformed). NOTE: the unwritten snapshot is taken *before*
        reading Redis: an entry leaves `_pending` only once written, so each
        message is in one or both, and the copies are merged by origin.
        """
        if after_id:
            id_key(after_id)  # refuse a malformed id before anything is read
        with self._lock:
            unwritten = {(self.server_id, p.seq): p.message() for p in self._pending if p.id}
        if not self.redis.reachable:  # known lost: do not wait on Redis during a join
            return pages(self._cached(unwritten, limit, after_id))
        if after_id:
            return self._pages_after(after_id, unwritten)
        return pages(self._last(limit, unwritten))

    def _last(self, limit: int, unwritten: dict) -> list[Message]:
        if limit <= 0:
            return []
        try:
            entries = self.redis.quick.xrevrange(STREAM_KEY, count=limit)[::-1]
        except redis.RedisError as error:
            return self._history_failed(error, unwritten, limit, None)
        stored = {origin(i, fields): to_message(i, fields) for i, fields in entries}
        return _merge(unwritten, stored)[-limit:]

    def _pages_after(self, after_id: str, unwritten: dict) -> Iterator[list[Message]]:
        """Read on a page at a time: only one page is ever held here."""
        position = after_id
        while True:
            try:
                entries = self.redis.quick.xrange(
                    STREAM_KEY, min=f"({position}", count=HISTORY_PAGE
                )
            except redis.RedisError as error:
                yield from pages(self._history_failed(error, unwritten, 0, position))
                return
            for entry_id, fields in entries:
                unwritten.pop(origin(entry_id, fields), None)  # written meanwhile: once
            if entries:
                yield [to_message(entry_id, fields) for entry_id, fields in entries]
                position = entries[-1][0]
            if len(entries) < HISTORY_PAGE:
                break
        yield from pages(messages_after(_merge(unwritten, {}), position, 0))

    def _history_failed(self, error, unwritten: dict, limit: int, after_id) -> list[Message]:
        self.redis.mark_down()
        log.warning("history from Redis failed (%s): replaying what this server has", error)
        return self._cached(unwritten, limit, after_id)

    def _cached(self, unwritten: dict, limit: int, after_id: str | None) -> list[Message]:
        """History from memory: recent deliveries and unwritten messages."""
        with self._lock:
            by_id = {m.id: m for m in self._recent}
        by_id.update((m.id, m) for m in unwritten.values())  # stranded ones are in both
        return messages_after(sorted(by_id.values(), key=lambda m: id_key(m.id)), after_id, limit)

    def reachable(self) -> bool:
        """False while the writer finds Redis lost (for metrics)."""
        return self._online  # a plain read: one bool, set by the writer

    def pending_writes(self) -> int:
        """Accepted messages not yet written (for metrics)."""
        with self._lock:
            return len(self._pending)

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending (for up to `timeout` seconds) and stop both threads."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._follower.stop(timeout)
        if self._writer.is_alive():
            self._writer.join(timeout)
        with self._lock:
            if self._pending:
                log.error("store closed with %d messages unwritten", len(self._pending))
        self.redis.close()

    # -- the writer thread ------------------------------------------------------

    def _write_loop(self) -> None:
        outage_since = None  # monotonic time Redis was lost; None while it answers
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return  # closing, and everything is written
                batch = list(itertools.islice(self._pending, WRITE_BATCH_MAX))
                waiting, dropped, self._dropped = len(self._pending), self._dropped, 0
            if dropped:
                log.error("history buffer full: %d messages dropped unwritten", dropped)
            try:
                self._write(batch)
            except redis.RedisError as error:
                self.redis.mark_down()
                if outage_since is None:
                    outage_since = time.monotonic()
                    self._go_offline(error, waiting)
                if self._sleep_unless_closing(RETRY_S):
                    log.error("store closed during a Redis outage")
                    return
                continue
            self.redis.mark_up()
            with self._lock:
                while self._pending and self._pending[0].seq <= batch[-1].seq:
                    self._pending.popleft()
                self._online = True
            if outage_since is not None:
                lost_s, outage_since = time.monotonic() - outage_since, None
                log.warning("Redis back after %.1f s: writing %d waiting messages", lost_s, waiting)

    def _write(self, batch: list[Pending]) -> None:
        """XADD a batch in one round trip; ids already delivered are kept if the stream allows."""
        pipe = self.redis.client.pipeline(transaction=False)
        for p in batch:
            self._xadd(pipe, p, p.id or "*")
        retry = []
        for p, result in zip(batch, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, redis.ConnectionError | redis.TimeoutError):
                raise result
            if isinstance(result, redis.ResponseError):
                retry.append(p)  # another server wrote past our outage id: take a new one
        if retry:
            pipe = self.redis.client.pipeline(transaction=False)
            for p in retry:
                self._xadd(pipe, p, "*")
            pipe.execute()

    def _xadd(self, pipe, p: Pending, entry_id: str) -> None:
        fields = {"username": p.username, "message": p.text, "timestamp": p.timestamp,
                  "server": self.server_id, "seq": p.seq}  # fmt: skip
        pipe.xadd(STREAM_KEY, fields, id=entry_id, maxlen=self._max_messages, approximate=True)

    def _go_offline(self, error, waiting: int) -> None:
        """Redis is lost. Alone: deliver what waits, with our own ids. Shared: refuse."""
        with self._lock:
            shared = self.redis.shared
            self._online = False
            stranded = [] if shared else self._strand_locked()
        if shared:
            log.error("Redis lost (%s): refusing messages, %d to write", error, waiting)
        else:
            log.error("Redis lost (%s): chat goes on, %d messages waiting", error, waiting)
        if stranded:
            self._deliver(stranded)

    def _strand_locked(self) -> list[Message]:
        """Go offline: give every undelivered message an id of ours; return them."""
        self._online = False
        stranded = [p for p in self._pending if p.id is None]
        for p in stranded:
            p.id = self._ids.next()
            self._delivered_seq = p.seq
        messages = [p.message() for p in stranded]
        self._recent.extend(messages)
        return messages

    def _sleep_unless_closing(self, wait_s: float) -> bool:
        """Sleep `wait_s`, True at once if closing.

        NOTE: append() notifies `_wake` for every message. Sleep to the
        deadline through those, or an outage retries Redis per message.
        """
        deadline = time.monotonic() + wait_s
        with self._lock:
            while not self._closing and (left := deadline - time.monotonic()) > 0:
                self._wake.wait(left)
            return self._closing

    # -- the follower's handler ---------------------------------------------------

    def _deliver_new(self, entries: list) -> None:
        """Follower thread: deliver entries not delivered yet, in the stream's order."""
        with self._lock:
            self._ids.advance_past(entries[-1][0])  # outage ids stay above the stream
            delivered_seq = self._delivered_seq
        fresh = []
        for entry_id, fields in entries:
            source, seq = origin(entry_id, fields)
            if seq:  # one of our servers: dedupe by (server, seq)
                if seq <= self._seen.get(source, 0):
                    continue  # written twice (a lost reply); delivered already
                self._seen[source] = seq
                if source == self.server_id and seq <= delivered_seq:
                    continue  # we delivered it ourselves during an outage
            fresh.append(to_message(entry_id, fields))
        if fresh:
            with self._lock:
                self._recent.extend(fresh)
            self._deliver(fresh)


def _merge(unwritten: dict, stored: dict) -> list[Message]:
    """Both sets of messages, keyed by origin (the stored copy wins), oldest first."""
    return sorted({**unwritten, **stored}.values(), key=lambda m: id_key(m.id))


def _log_trimmed(missed: int) -> None:
    log.error("fell behind the stream's MAXLEN: %d messages not delivered", missed)
