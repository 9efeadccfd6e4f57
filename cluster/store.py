"""History in Redis Streams, which are also the message bus between servers.

With `--redis-url`, every accepted message goes to a Redis Stream, and
every server, the one that accepted it included, delivers messages in the
stream's order. So the order, the ids, history and resume all come from one
mechanism, however many servers share the Redis:

    hub.post -> append() -> _pending -> writer thread --XADD--> stream
                                                                  |
    hub.deliver <------ follower (cluster/follow.py) <--XREAD BLOCK-+

A lobby message is one XADD to `chat:messages`; a message of another room
is one script that XADDs it to `chat:bus` and to the room's own history
stream under one id (cluster/keys.py has the layout). The follower reads the
two followed streams, so each room has one order, its stream's, on every
server. History is read from the room's own stream (cluster/history.py).

Threads: the hub's callers append to `_pending`; the *writer* (owned here)
is the only one that removes from it; the *follower* is the only one that
reads the stream for delivery. `_lock` guards `_pending`, `_dropped`,
`_online`, `_delivered_seq`, `_unfollowed`, `_followed_own`, `_ids`,
`_recent` and `_keys`; it is never held during a Redis call, nor while calling the hub.
`_handing` orders the two threads that hand messages to the hub (the
follower, and the writer when Redis goes): each holds it from deciding
what is undelivered to handing it over, so no message is decided
undelivered by both, nor handed over out of order. It is taken before
`_lock`, never after, and never by the hub's callers.

When Redis is lost, what happens depends on whether we are alone on it
(`link.shared`, which the cluster's heartbeat keeps):

- **alone**: chat goes on live. The writer delivers what is waiting itself
  (written ones the follower had not read yet with their stream ids, the
  rest with ids made here), and `append` hands each new message straight back to
  the hub. They wait in `_pending` (bounded) and are written, in order and
  under those ids, as soon as Redis answers again.
- **shared**: an id made here would not hold (another server may give a
  lower one to a message its clients see first), so `append` raises
  `NotSent` and the client sends again later. What was already waiting is
  written when Redis is back and delivered from the stream, like any message.

Every entry carries its origin server and a per-server sequence number, so an
entry delivered during an outage, or written twice because a reply was lost,
is delivered once.

A line sent again with its key (its echo was lost) is taken once: here,
`_keys` remembers what each recent key became (or that it is on its way);
across servers, WRITE holds the key in Redis with the first id, and a line
whose key is held is not written: the writer echoes the first to its sender
(`echo`, the hub's) instead.
"""

import itertools
import logging
import threading
import uuid
from collections import deque

import redis

from cluster.entries import Pending
from cluster.follow import StreamFollower
from cluster.history import History
from cluster.keys import (
    FOLLOWED_KEYS,
    NOT_SENT_TEXT,
    STREAM_KEY,
    RedisLink,
    followed_key,
)
from cluster.order import Progress
from cluster.reading import Reading
from cluster.writer import Writer
from sanitize import LOBBY, shown_url
from store import Duplicate, IdClock, Message, NotSent, Recent, StoreUnavailable, id_key

log = logging.getLogger(__name__)

PENDING_MAX = 100_000  # messages kept while Redis is away; beyond, the oldest drop
RECENT_MAX = 500  # delivered messages kept for joins while Redis is away
ON_ITS_WAY = "on its way"  # in `_keys`: a line taken here, not delivered yet


class RedisStore(History, Writer, Reading):
    """Redis Streams as history and bus; see the module docstring.

    Its history reads (`history`) are in cluster/history.py, its writer
    thread in cluster/writer.py, what its follower reads back in
    cluster/reading.py.
    """

    def __init__(
        self, url: str, max_messages: int = 10_000, pending_max: int = PENDING_MAX, replicas=0
    ):
        self.description = f"in Redis at {shown_url(url)} (stream {STREAM_KEY})"
        self.redis = RedisLink(url)  # shared with cluster/presence.py; raises StoreUnavailable
        self.server_id = uuid.uuid4().hex[:12]
        self._max_messages = max_messages
        self._pending_max = pending_max
        # --redis-replicas: a message is delivered (echoed too) only once this many
        # replicas hold it, so a failover loses none that anyone saw. It also makes
        # a server alone on Redis refuse, like a shared one: its own ids are on no replica.
        self._replicas = replicas
        self._deliver = None  # the hub's callback, given to start()
        self._echo = None  # the hub's callback for a line sent again, given to start()
        self._start_at = self._tails()  # key -> (last id, entries added): the follower starts there
        self._lock = threading.Lock()
        self._handing = threading.Lock()  # see the module docstring: taken before _lock
        self._wake = threading.Condition(self._lock)  # the writer waits here for work
        newest = max((at[0] for at in self._start_at.values()), key=id_key)
        self._ids = IdClock(after=newest)  # ids for messages delivered in an outage
        self._seq = itertools.count(1)
        self._pending: deque[Pending] = deque()
        self._dropped = 0  # overflowed `_pending` since last reported
        self._online = True  # False once the writer found Redis lost, until a write succeeds
        self._delivered_seq = 0  # highest own seq already delivered by us
        # (seq, message) written and answered, not yet read back by the follower: if
        # Redis goes now, a server alone on it delivers these itself (going offline).
        self._unfollowed: deque[tuple[int, Pending]] = deque()
        self._followed_own: dict[str, int] = {}  # followed stream -> our highest seq read back
        # The writer's own (cluster/writer.py): the seq Redis last said it wrote, and
        # (when, message with its id) written in the last RESTORE_WINDOW_S, oldest first.
        self._acked_seq = 0
        self._written_log: deque[tuple[float, Pending]] = deque()
        self._recent: deque[Message] = deque(maxlen=RECENT_MAX)  # delivered, newest last
        self._keys = Recent()  # (sender, key) -> its Message once delivered, else ON_ITS_WAY
        # (followed stream, origin) -> highest seq delivered from it (follower only)
        self._seen: dict[tuple[str, str], int] = {}
        self._closing = False
        self._writer = threading.Thread(target=self._write_loop, name="redis-writer")
        # How far each stream was handed on, ours and the cluster's events (Cluster
        # takes this one): each side shows an entry after what it names (cluster/order.py).
        self.progress = Progress()
        self._follower = StreamFollower(
            self.redis, FOLLOWED_KEYS, "redis-follower", self._deliver_new, gap=_log_trimmed,
            settle=self._await_replicas if replicas else None, progress=self.progress,
        )  # fmt: skip

    def _tails(self) -> dict[str, tuple[str, int]]:
        try:
            return {key: tuple(self.redis.run("tail", [key], [])) for key in FOLLOWED_KEYS}
        except redis.RedisError as error:
            self.redis.close()
            raise StoreUnavailable(f"cannot read the stream in Redis: {error}") from error

    def start(self, deliver, echo=None) -> None:
        """Begin writing and following; `deliver(messages)` fans out, in order.

        `echo(message)` tells its sender alone that a line sent again was `message`.
        """
        self._deliver = deliver
        self._echo = echo or (lambda message: None)
        self._writer.start()
        self._follower.start_at(self._start_at)

    def followed_from(self, room: str) -> str:
        """The id up to which `room`'s messages were in Redis before we followed its stream."""
        return self._start_at[followed_key(room)][0]

    def reachable(self) -> bool:
        return self.redis.reachable

    def accepting(self) -> bool:
        """Can a message be taken now? Not while cut off from a Redis others share."""
        return not (self._strict() and not (self._online and self.redis.reachable))

    def _strict(self) -> bool:
        """Must messages be refused while Redis is away? Not if alone and without replicas."""
        return self.redis.shared or self._replicas > 0

    def watch(self, callback) -> None:
        """`callback()` whenever `accepting()` may have changed (any thread)."""
        self.redis.watch(callback)

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._pending)

    def append(
        self,
        username: str,
        text: str,
        timestamp: int,
        room: str = LOBBY,
        action=False,
        key: str = "",
    ) -> list[Message]:
        """Queue a message for the stream; return what the caller must deliver now.

        Normally nothing: the follower delivers it from the stream. Alone on
        a lost Redis: this message, and if the buffer fills before the writer
        noticed the loss, everything still waiting, so what overflows was at
        least delivered. Raises NotSent if cut off from a shared Redis, and
        Duplicate if this sender's `key` was delivered already (a line still
        on its way is taken once: nothing to do).
        """
        with self._lock:
            first = self._keys.get(username, key) if key else None
            if first == ON_ITS_WAY:
                return []
            if first is not None:
                raise Duplicate(first)
            shared = self._strict()
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
            pending = Pending(next(self._seq), username, text, timestamp, room, bool(action))
            pending.key = key
            self._keys.remember(username, key, ON_ITS_WAY)
            if not self._online:  # alone, Redis away: deliver now, write later
                pending.id = self._ids.next()
                self._delivered_seq = pending.seq
                deliver_now.append(pending.message())
                self._recent.append(deliver_now[-1])
                self._keys.remember(username, key, deliver_now[-1])
            self._pending.append(pending)
            self._wake.notify()
        return deliver_now

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


def _log_trimmed(missed: int) -> None:
    log.error("fell behind the stream's MAXLEN: %d messages not delivered", missed)
