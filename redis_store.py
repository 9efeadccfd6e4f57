"""History in a Redis Stream, which is also the message bus between servers.

With `--redis-url`, every accepted message goes to one Redis Stream, and
every server, the one that accepted it included, delivers messages in the
stream's order. So the order, the ids, history and resume all come from one
mechanism, however many servers share the Redis (SPEC §5, §7):

    hub.post -> append() -> _pending -> writer thread --XADD--> stream
                                                                  |
    hub._deliver <------------ follower thread <---XREAD BLOCK----+

Threads: the hub's callers append to `_pending`; the *writer* (owned here)
is the only one that removes from it; the *follower* (owned here) is the
only one that reads the stream for delivery. `_lock` guards `_pending`,
`_dropped`, `_online`, `_delivered_seq` and `_ids`; it is never held during a
Redis call, nor while calling the hub.

When Redis is lost (SPEC §5), chat goes on live: the writer delivers what is
waiting itself, with ids made here, and from then on `append` hands each new
message straight back to the hub. They wait in `_pending` (bounded) and are
written in order as soon as Redis answers again. Every entry carries its
origin server and a per-server sequence number, so an entry delivered during
the outage, or written twice because a reply was lost, is delivered once.
"""

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from store import IdClock, Message, StoreUnavailable, id_key, messages_after

log = logging.getLogger(__name__)

# Every Redis key of the project, in one place (cluster.py uses the rest).
STREAM_KEY = "chat:messages"  # stream: the messages, in their one order
EVENTS_CHANNEL = "chat:events"  # pub/sub: joins, leaves, typing (never stored)
NAMES_KEY = "chat:names"  # hash: online username -> "<server id>:<session>"
SERVERS_KEY = "chat:servers"  # set: ids of servers that may hold names
ALIVE_KEY = "chat:server:{}:alive"  # string with a TTL, refreshed by a live server

WRITE_BATCH_MAX = 200  # messages per pipelined XADD round trip
FOLLOW_BATCH_MAX = 500  # entries per XREAD
FOLLOW_BLOCK_MS = 1000  # XREAD waits this long for news, then loops (to see close())
PENDING_MAX = 100_000  # messages kept while Redis is away; beyond, the oldest drop
RETRY_S = 0.5  # how often the writer and follower retry a lost Redis
REDIS_TIMEOUT_S = 2.0  # a Redis call never blocks longer than this (beyond XREAD's block)


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
        self.redis = connect(url)
        self.server_id = uuid.uuid4().hex[:12]
        self._max_messages = max_messages
        self._pending_max = pending_max
        self._deliver = None  # the hub's callback, given to start()
        newest = self._newest_id()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits here for work
        self._ids = IdClock(after=newest)  # ids for messages delivered during an outage
        self._seq = itertools.count(1)
        self._pending: deque[Pending] = deque()
        self._dropped = 0  # overflowed `_pending` since last reported
        self._online = True  # False while Redis is lost: deliver before writing
        self._delivered_seq = 0  # highest own seq already delivered by us
        self._closing = False
        self._closed = threading.Event()  # set by close(): the follower stops
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer")
        self._follower = threading.Thread(
            target=self._follow_loop, args=(newest,), name="redis-follower"
        )

    def _newest_id(self) -> str:
        try:
            newest = self.redis.xrevrange(STREAM_KEY, count=1)
        except redis.RedisError as error:
            raise StoreUnavailable(f"cannot reach Redis: {error}") from error
        return newest[0][0] if newest else "0-0"

    def start(self, deliver) -> None:
        """Begin writing and following; `deliver(messages)` fans out, in order."""
        self._deliver = deliver
        self._writer.start()
        self._follower.start()

    def append(self, username: str, text: str, timestamp: int) -> list[Message]:
        """Queue a message for the stream; return what the caller must deliver now.

        Normally nothing: the follower delivers it from the stream. While Redis
        is away, this message. If the buffer fills before the writer has
        noticed that Redis is away, everything still waiting, so that what
        overflows was at least delivered.
        """
        with self._lock:
            deliver_now = []
            if len(self._pending) >= self._pending_max:
                if self._online:
                    deliver_now = self._strand_locked()
                self._pending.popleft()
                self._dropped += 1
            pending = Pending(next(self._seq), username, text, timestamp)
            if not self._online:  # Redis is away: deliver now, write later
                pending.id = self._ids.next()
                self._delivered_seq = pending.seq
                deliver_now.append(pending.message())
            self._pending.append(pending)
            self._wake.notify()
        return deliver_now

    def history(self, limit: int, after_id: str | None = None) -> list[Message]:
        """Stored messages, plus those delivered but not yet written, oldest first.

        NOTE: the pending snapshot is taken *before* reading Redis: an entry
        leaves `_pending` only once written, so each is in one or both.
        """
        if after_id:
            id_key(after_id)  # refuse a malformed id before Redis sees it
        with self._lock:
            unwritten = {(self.server_id, p.seq): p.message() for p in self._pending if p.id}
        try:
            stored = self._read_stream(limit, after_id)
        except redis.RedisError as error:
            log.warning("history from Redis failed (%s); replaying unwritten messages only", error)
            stored = {}
        merged = {**unwritten, **stored}  # the same message, written, wins
        return messages_after(sorted(merged.values(), key=lambda m: id_key(m.id)), after_id, limit)

    def _read_stream(self, limit: int, after_id: str | None) -> dict:
        if after_id:
            entries = self.redis.xrange(STREAM_KEY, min=f"({after_id}")
        elif limit > 0:
            entries = self.redis.xrevrange(STREAM_KEY, count=limit)[::-1]
        else:
            entries = []
        stored = {}
        for entry_id, fields in entries:
            stored.setdefault(_origin(entry_id, fields), _message(entry_id, fields))
        return stored

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending (for up to `timeout` seconds) and stop both threads."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._closed.set()
        for thread in (self._writer, self._follower):
            if thread.is_alive():
                thread.join(timeout)
        with self._lock:
            if self._pending:
                log.error("store closed with %d messages unwritten", len(self._pending))
        self.redis.close()

    # -- the writer thread ------------------------------------------------

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
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.error("Redis lost (%s): chat goes on, %d messages waiting", error, waiting)
                    self._go_offline()
                if self._sleep_unless_closing(RETRY_S):
                    log.error("store closed during a Redis outage")
                    return
                continue
            with self._lock:
                while self._pending and self._pending[0].seq <= batch[-1].seq:
                    self._pending.popleft()
                self._online = True
            if outage_since is not None:
                lost_s, outage_since = time.monotonic() - outage_since, None
                log.warning("Redis back after %.1f s: writing %d waiting messages", lost_s, waiting)

    def _write(self, batch: list[Pending]) -> None:
        """XADD a batch in one round trip; ids already delivered are kept if the stream allows."""
        pipe = self.redis.pipeline(transaction=False)
        for p in batch:
            self._xadd(pipe, p, p.id or "*")
        retry = []
        for p, result in zip(batch, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(result, redis.ConnectionError | redis.TimeoutError):
                raise result
            if isinstance(result, redis.ResponseError):
                retry.append(p)  # another server wrote past our outage id: take a new one
        if retry:
            pipe = self.redis.pipeline(transaction=False)
            for p in retry:
                self._xadd(pipe, p, "*")
            pipe.execute()

    def _xadd(self, pipe, p: Pending, entry_id: str) -> None:
        fields = {"username": p.username, "message": p.text, "timestamp": p.timestamp,
                  "server": self.server_id, "seq": p.seq}  # fmt: skip
        pipe.xadd(STREAM_KEY, fields, id=entry_id, maxlen=self._max_messages, approximate=True)

    def _go_offline(self) -> None:
        """Redis is lost: deliver what was waiting for the stream, with our own ids."""
        with self._lock:
            stranded = self._strand_locked()
        if stranded:
            self._deliver(stranded)

    def _strand_locked(self) -> list[Message]:
        """Go offline: give every undelivered message an id of ours; return them."""
        self._online = False
        stranded = [p for p in self._pending if p.id is None]
        for p in stranded:
            p.id = self._ids.next()
            self._delivered_seq = p.seq
        return [p.message() for p in stranded]

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

    # -- the follower thread ----------------------------------------------

    def _follow_loop(self, last_id: str) -> None:
        seen: dict[str, int] = {}  # origin server -> highest seq delivered (this thread only)
        while not self._closed.is_set():
            try:
                reply = self.redis.xread(
                    {STREAM_KEY: last_id}, count=FOLLOW_BATCH_MAX, block=FOLLOW_BLOCK_MS
                )
            except redis.RedisError:
                self._closed.wait(RETRY_S)  # the writer logs the outage; we wait for Redis
                continue
            entries = reply[0][1] if reply else []
            if entries:
                last_id = entries[-1][0]
                self._deliver_new(entries, seen)

    def _deliver_new(self, entries, seen: dict) -> None:
        with self._lock:
            self._ids.advance_past(entries[-1][0])  # outage ids stay above the stream
            delivered_seq = self._delivered_seq
        fresh, missed = [], 0
        for entry_id, fields in entries:
            if "server" not in fields:  # written by another tool: nothing to dedupe
                fresh.append(_message(entry_id, fields))
                continue
            origin, seq = _origin(entry_id, fields)
            if seq <= seen.get(origin, 0):
                continue  # written twice (a lost reply); delivered already
            if origin in seen:
                missed += seq - seen[origin] - 1  # trimmed before we read them
            seen[origin] = seq
            if origin == self.server_id and seq <= delivered_seq:
                continue  # we delivered it ourselves during an outage
            fresh.append(_message(entry_id, fields))
        if missed:
            log.error("fell behind the stream's MAXLEN: %d messages not delivered", missed)
        if fresh:
            self._deliver(fresh)


def _origin(entry_id: str, fields: dict) -> tuple[str, int]:
    """(server, seq) of an entry; entries from other tools count as their own origin."""
    if "server" in fields:
        return fields["server"], int(fields["seq"])
    return entry_id, 0


def _message(entry_id: str, fields: dict) -> Message:
    return Message(entry_id, fields["username"], fields["message"], int(fields["timestamp"]))


def connect(url: str) -> redis.Redis:
    """One client per process, shared by all threads; strings decoded here."""
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_TIMEOUT_S + FOLLOW_BLOCK_MS / 1000,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # we retry ourselves, visibly
    )
    try:
        client.ping()
    except redis.RedisError as error:
        raise StoreUnavailable(f"cannot reach Redis at {url}: {error}") from error
    return client
