"""History store: where accepted chat messages are kept, and their ids.

The hub calls `append` once per accepted message, under its lock; that call
never blocks on the network. It returns the messages, with their ids, that
the hub must deliver now: here, the one appended; with Redis, usually none,
as the message will come back from the stream in order (the stream is also
the bus between servers).
The Chat handler calls `history` when a client joins, to replay what it
missed, as pages of at most HISTORY_PAGE messages: `for page in
store.history(limit, after_id)`. `start(deliver)` hands the store the hub's delivery callback.
`followed_from(room)` says up to which id a room's messages were stored before
this server began delivering them (all later ones reach the hub's `deliver`).

Two stores, one interface:

- `MemoryStore` (here): a bounded deque. Lost when the process exits.
- `RedisStore` (cluster/store.py): a Redis Stream, loaded only with `--redis-url`.

Ids look like Redis stream ids, "<milliseconds>-<sequence>", in both.

A message may carry its sender's `key` (one per line the client sends).
Both stores accept one message per sender and key for KEY_TTL_S: `append`
raises `Duplicate` with the first one (the hub echoes it to the sender
alone). `Recent` is that memory here; with Redis, a key in Redis
(cluster/lua_messages.py's WRITE) makes it hold across servers.
"""

import bisect
import itertools
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass

_ID_PATTERN = re.compile(r"(\d+)(?:-(\d+))?")


HISTORY_PAGE = 200  # messages per page of history: a join never holds more at once
# A line sent again with its key within this long is not taken twice. A client
# resends for seconds (a reconnect, a failover); ten minutes is the promise.
KEY_TTL_S = 900.0
RECENT_KEYS_MAX = 50_000  # (sender, key) pairs remembered here; beyond, the oldest go


class StoreUnavailable(Exception):
    """The configured store cannot be reached at start-up."""


class NotSent(Exception):
    """The message cannot get an id that holds for every server: send it again later.

    Raised by `RedisStore.append` while this server is cut off from a Redis
    that other servers share; never by `MemoryStore`.
    """


class HistoryUnavailable(Exception):
    """A resume cannot be answered whole now (Redis is away): the client should retry."""


class Duplicate(Exception):
    """This sender's line with this key was taken already: `first` is what it became."""

    def __init__(self, first):
        super().__init__("sent already")
        self.first = first


@dataclass(frozen=True, slots=True)
class Message:
    """One accepted chat message, as stored."""

    id: str
    username: str
    text: str
    timestamp: int  # Unix seconds
    room: str = "lobby"
    action: bool = False  # "/me waves"
    key: str = ""  # the sender's key for this line ("": none given)


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
    time and catches up when the chat calms down. Not thread-safe: its store
    calls it under the store's lock.
    """

    def __init__(self, after: str = "0-0"):
        self._last_ms = id_key(after)[0]

    def next(self) -> str:
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        return f"{self._last_ms}-0"

    def advance_past(self, message_id: str) -> None:
        """Make later ids greater than `message_id` (one seen in the stream)."""
        self._last_ms = max(self._last_ms, id_key(message_id)[0])


class Recent:
    """What became of each (sender, key) seen in the last KEY_TTL_S, bounded in number.

    Not thread-safe: its owner calls it under its own lock.
    """

    def __init__(self, ttl_s: float = KEY_TTL_S, max_keys: int = RECENT_KEYS_MAX):
        self._ttl_s = ttl_s
        self._max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str], tuple[float, object]] = OrderedDict()

    def get(self, sender: str, key: str, default=None):
        """What `remember` was given for this pair, if it is recent; else `default`."""
        self._expire()
        seen = self._seen.get((sender, key))
        return default if seen is None else seen[1]

    def remember(self, sender: str, key: str, value) -> None:
        if not key:
            return
        self._seen[(sender, key)] = (time.monotonic(), value)
        self._seen.move_to_end((sender, key))
        if len(self._seen) > self._max_keys:
            self._seen.popitem(last=False)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._ttl_s
        while self._seen and next(iter(self._seen.values()))[0] < cutoff:
            self._seen.popitem(last=False)


def messages_after(messages, after_id: str | None, limit: int) -> list[Message]:
    """From `messages` (oldest first): all after `after_id`, else the last `limit`."""
    if after_id:
        cut = id_key(after_id)
        return [m for m in messages if id_key(m.id) > cut]
    return list(messages)[-limit:] if limit > 0 else []


def pages(messages: list[Message], size: int = HISTORY_PAGE):
    """`messages` in pages of `size`, each dropped by us once handed out."""
    return (messages[start : start + size] for start in range(0, len(messages), size))


class MemoryStore:
    """The last `max_messages` messages of each room; nothing survives a restart."""

    description = "in memory (history is not persisted)"

    def __init__(self, max_messages: int = 10_000):
        self._ids = IdClock()  # one clock for all rooms: ids increase across rooms too
        self._max_messages = max_messages
        self._lock = threading.Lock()  # guards _rooms (append vs. history)
        self._rooms: dict[str, deque[Message]] = {}  # room -> its last messages
        self._keys = Recent()  # (sender, key) -> the Message it became; under _lock too
        self._before_start: dict[str, str] = {}  # room -> its last id when start() was called

    def start(self, deliver, echo=None) -> None:
        """The hub delivers what append() returns from now on; nothing arrives from elsewhere."""
        with self._lock:
            self._before_start = {room: kept[-1].id for room, kept in self._rooms.items() if kept}

    def reachable(self) -> bool:
        return True  # nothing to lose touch with

    def accepting(self) -> bool:
        return True  # every message gets an id that holds

    def watch(self, callback) -> None:
        pass  # accepting() never changes

    def pending_writes(self) -> int:
        return 0  # every message is stored as it is appended

    def can_resume(self, after_id: str) -> bool:
        return True  # everything kept is here

    def followed_from(self, room: str) -> str:
        """The id up to which `room`'s messages were here before the hub began delivering."""
        with self._lock:
            return self._before_start.get(room, "0-0")

    def append(
        self,
        username: str,
        text: str,
        timestamp: int,
        room: str = "lobby",
        action=False,
        key: str = "",
    ) -> list[Message]:
        """Store a message; return it for the hub to deliver now (always, here).

        Raises Duplicate if this sender's `key` was taken already.
        """
        with self._lock:
            if key and (first := self._keys.get(username, key)) is not None:
                raise Duplicate(first)
            message = Message(self._ids.next(), username, text, timestamp, room, action, key)
            self._room_locked(room).append(message)
            self._keys.remember(username, key, message)
        return [message]

    def history(
        self, limit: int, after_id: str | None = None, room: str = "lobby"
    ) -> Iterator[list[Message]]:
        """Pages (lists, oldest first) of `room`'s last `limit`, or of all after `after_id`.

        Raises ValueError at once for a malformed `after_id`. Each page is
        copied under the lock when it is asked for, so a slow joiner holds
        one page, never the whole history.
        """
        if after_id is None:  # the common join: copy only the last `limit`
            with self._lock:
                kept = self._room_locked(room)
                wanted = list(itertools.islice(reversed(kept), limit))[::-1]
            return pages(wanted)
        return self._pages_after(id_key(after_id), room)

    def _room_locked(self, room: str) -> deque[Message]:
        if room not in self._rooms:
            self._rooms[room] = deque(maxlen=self._max_messages)
        return self._rooms[room]

    def _pages_after(self, cut: tuple[int, int], room: str) -> Iterator[list[Message]]:
        while True:
            with self._lock:  # ids increase along the deque: find where `cut` falls
                kept = self._room_locked(room)
                start = bisect.bisect_right(kept, cut, key=lambda m: id_key(m.id))
                page = list(itertools.islice(kept, start, start + HISTORY_PAGE))
            if page:
                yield page
            if len(page) < HISTORY_PAGE:
                return
            cut = id_key(page[-1].id)

    def close(self, timeout: float = 5.0) -> None:
        pass
