"""History store: where accepted chat messages are kept, in memory or in Redis.

The hub calls `append` once per accepted message, under its lock, to get the
message's id; that call never blocks on the network. The Chat handler calls
`history` when a client joins, to replay what it missed. Nothing else
touches the store, and only this module imports `redis`.

Two stores, one interface:

- `MemoryStore`: a bounded deque. Lost when the process exits.
- `RedisStore`: a Redis Stream (`XADD ... MAXLEN ~ N`). `append` only puts
  the message in a bounded *pending* buffer; one writer thread sends the
  buffer to Redis in pipelined batches. If Redis goes away the buffer simply
  grows, chat goes on live, and the writer retries until Redis is back, then
  writes everything in order, each message with the id it was delivered with.

Ids look like Redis stream ids, "<milliseconds>-<sequence>", and are made
here (`IdClock`) so that a message can be delivered before it is written.
"""

import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)

STREAM_KEY = "chat:messages"  # the one Redis key: a stream of chat messages
WRITE_BATCH_MAX = 200  # messages per pipelined XADD round trip
PENDING_MAX = 100_000  # messages kept while Redis is away; beyond, the oldest drop
RETRY_S = 0.5  # how often the writer retries a lost Redis
REDIS_TIMEOUT_S = 2.0  # a Redis call never blocks longer than this

_ID_PATTERN = re.compile(r"(\d+)(?:-(\d+))?")


class StoreUnavailable(Exception):
    """The configured store cannot be reached at start-up."""


@dataclass(frozen=True, slots=True)
class Message:
    """One accepted chat message, as stored."""

    id: str
    username: str
    text: str
    timestamp: int  # Unix seconds


def id_key(message_id: str) -> tuple[int, int]:
    """Order ids as Redis does ("5-1" < "10-0"). Raise ValueError if malformed."""
    match = _ID_PATTERN.fullmatch(message_id)
    if match is None:
        raise ValueError(f"not a message id: {message_id!r}")
    return int(match[1]), int(match[2] or 0)


class IdClock:
    """Makes increasing ids "<ms>-0", one millisecond per message.

    Giving each message its own millisecond keeps ids sortable as tuples and
    as plain strings. Under a burst the clock runs a little ahead of wall
    time and catches up when the chat calms down. Not thread-safe: the hub
    calls it under its lock.
    """

    def __init__(self, after: str = "0-0"):
        self._last_ms = id_key(after)[0]

    def next(self) -> str:
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return f"{self._last_ms}-0"


def _after(messages, after_id: str | None, limit: int) -> list[Message]:
    """From `messages` (oldest first): all after `after_id`, else the last `limit`."""
    if after_id:
        cut = id_key(after_id)
        return [m for m in messages if id_key(m.id) > cut]
    return list(messages)[-limit:] if limit > 0 else []


class MemoryStore:
    """The last `max_messages` messages in a deque; nothing survives a restart."""

    description = "in memory (history is not persisted)"

    def __init__(self, max_messages: int = 10_000):
        self._ids = IdClock()
        self._lock = threading.Lock()  # guards _messages (append vs. history)
        self._messages: deque[Message] = deque(maxlen=max_messages)

    def append(self, username: str, text: str, timestamp: int) -> Message:
        with self._lock:
            message = Message(self._ids.next(), username, text, timestamp)
            self._messages.append(message)
        return message

    def history(self, limit: int, after_id: str | None = None) -> list[Message]:
        with self._lock:
            snapshot = list(self._messages)
        return _after(snapshot, after_id, limit)

    def close(self, timeout: float = 5.0) -> None:
        pass


class RedisStore:
    """Messages in a Redis Stream, written behind the chat by one thread.

    Threads: the hub's callers append to `_pending`; the writer thread (owned
    by this store) is the only one that removes from it. `_lock` guards
    `_pending` and `_dropped`; it is never held during a Redis call.
    """

    def __init__(self, url: str, max_messages: int = 10_000):
        self.description = f"in Redis at {url} (stream {STREAM_KEY})"
        self._redis = connect(url)
        self._max_messages = max_messages
        self._ids = IdClock(after=self._last_stored_id())
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # writer waits here for work
        self._pending: deque[Message] = deque()
        self._dropped = 0  # overflowed the pending buffer since last reported
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer")
        self._writer.start()

    def _last_stored_id(self) -> str:
        """The newest id in the stream, so new ids continue after a restart."""
        try:
            newest = self._redis.xrevrange(STREAM_KEY, count=1)
        except redis.RedisError as error:
            raise StoreUnavailable(f"cannot reach Redis: {error}") from error
        return newest[0][0] if newest else "0-0"

    def append(self, username: str, text: str, timestamp: int) -> Message:
        with self._lock:
            message = Message(self._ids.next(), username, text, timestamp)
            if len(self._pending) >= PENDING_MAX:
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(message)
            self._wake.notify()
        return message

    def history(self, limit: int, after_id: str | None = None) -> list[Message]:
        """Stored messages plus those still pending, oldest first, no duplicates.

        NOTE: the pending snapshot is taken *before* reading Redis. A message
        leaves `_pending` only after it is written, so each one is in the
        snapshot, in Redis, or both; the merge drops the doubles.
        """
        with self._lock:
            pending = list(self._pending)
        try:
            stored = self._read_stream(limit, after_id)
        except redis.RedisError as error:
            log.warning("history from Redis failed (%s); replaying unwritten messages only", error)
            stored = []
        merged = {m.id: m for m in stored}
        merged.update((m.id, m) for m in pending)
        ordered = sorted(merged.values(), key=lambda m: id_key(m.id))
        return _after(ordered, after_id, limit)

    def _read_stream(self, limit: int, after_id: str | None) -> list[Message]:
        if after_id:
            id_key(after_id)  # refuse malformed ids before Redis sees them
            entries = self._redis.xrange(STREAM_KEY, min=f"({after_id}")
        elif limit > 0:
            entries = self._redis.xrevrange(STREAM_KEY, count=limit)[::-1]
        else:
            entries = []
        return [_from_entry(entry_id, fields) for entry_id, fields in entries]

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending (for up to `timeout` seconds) and stop the writer."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._writer.join(timeout)
        with self._lock:
            if self._pending:
                log.error("store closed with %d messages unwritten", len(self._pending))
        self._redis.close()

    # -- the writer thread ------------------------------------------------

    def _write_loop(self) -> None:
        outage_since = None  # monotonic time Redis was lost, None while it works
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return  # closing, and everything is written
                batch = list(self._pending)[:WRITE_BATCH_MAX]
                waiting, dropped, self._dropped = len(self._pending), self._dropped, 0
            if dropped:
                log.error("history buffer full: %d messages dropped unwritten", dropped)
            try:
                self._write(batch)
            except redis.RedisError as error:
                if outage_since is None:
                    outage_since = time.monotonic()
                    log.error("Redis lost (%s): chat goes on, %d messages waiting", error, waiting)
                if self._closing_now(RETRY_S):
                    log.error("store closed during a Redis outage")
                    return
                continue
            if outage_since is not None:
                log.warning(
                    "Redis back after %.1f s: writing %d waiting messages",
                    time.monotonic() - outage_since,
                    waiting,
                )
                outage_since = None
            with self._lock:
                while self._pending and id_key(self._pending[0].id) <= id_key(batch[-1].id):
                    self._pending.popleft()

    def _write(self, batch: list[Message]) -> None:
        """XADD a batch in one round trip, each message under its own id."""
        pipe = self._redis.pipeline(transaction=False)
        for m in batch:
            fields = {"username": m.username, "message": m.text, "timestamp": m.timestamp}
            pipe.xadd(STREAM_KEY, fields, id=m.id, maxlen=self._max_messages, approximate=True)
        for result in pipe.execute(raise_on_error=False):
            # An id "equal or smaller than the top item" was already written
            # by an earlier attempt whose reply was lost: that is success.
            if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                raise result
            if isinstance(result, redis.ConnectionError | redis.TimeoutError):
                raise result

    def _closing_now(self, wait_s: float) -> bool:
        """Sleep `wait_s` unless close() is called first; True if closing."""
        with self._lock:
            if not self._closing:
                self._wake.wait(wait_s)
            return self._closing


def connect(url: str) -> redis.Redis:
    """One client per process, shared by all threads; strings decoded here."""
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # we retry ourselves, visibly
    )
    try:
        client.ping()
    except redis.RedisError as error:
        raise StoreUnavailable(f"cannot reach Redis at {url}: {error}") from error
    return client


def _from_entry(entry_id: str, fields: dict) -> Message:
    return Message(entry_id, fields["username"], fields["message"], int(fields["timestamp"]))


def open_store(redis_url: str | None, max_messages: int):
    """The store the flags ask for. Raises StoreUnavailable if Redis is down."""
    if redis_url:
        return RedisStore(redis_url, max_messages)
    return MemoryStore(max_messages)
