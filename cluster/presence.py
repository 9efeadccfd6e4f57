"""Presence and live events shared between servers through Redis.

Several `server.py` processes on one Redis behave as one chat server.
Messages travel through the message stream (cluster/store.py); this module
carries the rest, each change one Lua script (cluster/keys.py), so a name and
the event that announces it can never disagree:

- **Names and rooms.** `claim` is HSETNX of the name and its first room + a
  `joined` event (with the room); `set_rooms` is "if this token holds it"
  HSET of every room the user is in now (one value: the set, sorted, by
  commas) + a `rooms` event; `release` is "if this token still holds it"
  HDEL + a `left` event. Of two servers claiming one name at once exactly
  one wins; a name online anywhere is taken everywhere, and every server
  knows everyone's rooms (`ListRooms`, `ListUsers`, "who is in #rust").
- **Live events** (joins, changes of rooms, leaves, typing, direct messages) go to
  the capped stream `chat:events`, which every server follows; that half of
  the cluster, and how a server that missed events resyncs, is in
  cluster/events.py.
- **Liveness.** A heartbeat says we are alive, reaps dead servers, and
  claims again what Redis lost (cluster/liveness.py).

**A name is never online twice.** While other servers share the Redis, a
claim this server cannot confirm there (Redis unreachable, out of memory,
emptied) refuses the join (`ClaimUnconfirmed`: UNAVAILABLE, the client
retries); cluster/liveness.py covers a server cut off, reaped, or on a
Redis emptied. Alone on its Redis, a server keeps its claims here while
Redis is unreachable and the join path does not wait on Redis
(`link.reachable`); the heartbeat claims them again, with their `joined`
in their latest rooms, when Redis answers, and retries releases and
changes of rooms that failed. A change of rooms never waits long: one
quick call on the user's reader thread, or none if another thread is
sending that name's rooms (it sends the latest when its call returns).

Threads (all owned here): the *publisher* and the *follower* of live events
(cluster/events.py); the *heartbeat* beats, reaps, retries releases and
changes of rooms, and re-claims. `_names` guards `_claims` (and each `Claim`'s
fields), `_unreleased`, `_inflight` and `_closing`, never held during a
Redis call. Without `--redis-url` the server uses `remote.Alone` instead.
"""

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass

import redis

from cluster.events import LiveEvents, rooms_field
from cluster.follow import StreamFollower
from cluster.keys import (
    EPOCH_KEY,
    EVENTS_KEY,
    EVENTS_MAX,
    PRESENCE_KEYS,
    QUICK_TIMEOUT_S,
    SERVERS_KEY,
    SETTLING_KEY,
    RedisLink,
    alive_key,
)  # fmt: skip
from cluster.liveness import Liveness
from cluster.order import Progress
from cluster.remote import ClaimUnconfirmed
from sanitize import LOBBY

log = logging.getLogger(__name__)

OUTBOX_MAX_EVENTS = 10_000  # typing events waiting for Redis; beyond, dropped


@dataclass(slots=True)
class Claim:
    """One of our users' names, as claimed in Redis. Guarded by `Cluster._names`."""

    token: str  # "<server id>:<session>"
    rooms: str  # the rooms the user is in now, as Redis keeps them (`rooms_field`)
    rooms_sent: bool = True  # Redis has `rooms` (False: a change still to send)
    sending: bool = False  # a thread is sending the rooms now: the others leave it to it


class Cluster(LiveEvents, Liveness):
    """Names, rooms, presence and live events shared through Redis; see the module docstring.

    Its live events (typing, direct messages, following the others) are in cluster/events.py;
    its heartbeat (liveness, reaping, claiming again) in cluster/liveness.py.
    """

    def __init__(self, link: RedisLink, server_id: str, progress: Progress | None = None):
        self._link = link
        self.server_id = server_id
        self._hub = None
        self._started = time.monotonic()  # reset by start()
        self._seen_peers = False  # another server has used this Redis since we started
        self._epoch = ""  # the Redis life we know (EPOCH_KEY); written by the heartbeat only
        self._emptied = False  # Redis was emptied and our names are not claimed again yet
        self._last_contact = time.monotonic()  # when the last heartbeat that Redis took was sent
        self._slow_logged_at = -1e9  # when a slow heartbeat was last logged (heartbeat thread)
        self._names = threading.Condition()  # guards the four fields below
        self._claims: dict[str, Claim] = {}  # name -> claim, for our online clients
        self._unreleased: dict[str, str] = {}  # token -> name: releases Redis has not had
        self._inflight = 0  # claims talking to Redis now: close() waits for them
        self._closing = False
        self._outbox: queue.Queue = queue.Queue(maxsize=OUTBOX_MAX_EVENTS)
        self._acks_lock = threading.Lock()  # guards _acks
        self._acks: dict[str, threading.Event] = {}  # direct messages of ours awaiting an ack
        self._stopped = threading.Event()
        # Shared with the store (its `progress`): joins and leaves keep their place
        # among messages (cluster/order.py).
        self._progress = progress or Progress()
        self._follower = StreamFollower(
            link, EVENTS_KEY, "cluster-follower", self._on_events, resync=self._resync,
            progress=self._progress,
        )  # fmt: skip
        self._threads = [
            threading.Thread(target=self._publish_loop, name="cluster-publisher"),
            threading.Thread(target=self._heartbeat_loop, name="cluster-heartbeat"),
            threading.Thread(target=self._watchdog_loop, name="cluster-watchdog"),
        ]

    def start(self, hub) -> None:
        self._hub = hub
        self._started = time.monotonic()
        self._heartbeat()  # before the first join: are we alone on this Redis?
        self._follower.start()  # resyncs first: who is online elsewhere
        for thread in self._threads:
            thread.start()

    # -- names: called by the session, outside any lock ------------------------

    def claim(self, name: str, room: str = LOBBY) -> str | None:
        """Claim `name` everywhere, announcing the join in `room`. The token, or None if taken.

        Raises ClaimUnconfirmed if others share the Redis and it cannot say now.
        """
        joined_ms = int(time.time() * 1000)  # "who was first" after Redis is emptied
        token = f"{self.server_id}:{uuid.uuid4().hex[:8]}:{joined_ms}"
        with self._names:
            if self._closing:
                return token  # the hub refuses the join; nothing may reach Redis now
            self._inflight += 1
            stale = [t for t, n in self._unreleased.items() if n == name]
        won = None
        try:
            won = self._claim_in_redis(name, token, room, stale)
            if won is None and self._link.shared:
                raise ClaimUnconfirmed(name)  # another server might give it too
        finally:
            with self._names:
                self._inflight -= 1
                self._names.notify_all()
                if won or (won is None and not self._link.shared):
                    self._claims[name] = Claim(token, room)
        return None if won is False else token

    def _claim_in_redis(self, name: str, token: str, room: str, stale: list) -> bool | None:
        """True if won, False if taken, None if Redis could not say (alone: kept here)."""
        if not self._link.reachable:
            return None  # alone: the heartbeat claims it when Redis answers
        try:
            for old in stale:  # our own earlier session of this name: free it first
                self._release_in_redis(name, old)
            keys = [*PRESENCE_KEYS, EPOCH_KEY, SETTLING_KEY]
            args = [name, token, self.server_id, room, self._epoch]
            result = self._run_keys("claim", keys, args)
        except redis.RedisError as error:
            if not isinstance(error, redis.ResponseError):  # it answered (out of memory)
                self._link.mark_down()
            log.warning("cannot claim %s in Redis: %s", name, error)
            return None
        return None if result == -1 else bool(result)

    def release(self, name: str, token: str) -> None:
        """Free `name` everywhere, announcing the leave (retried if Redis is away)."""
        with self._names:
            if self._holds(name, token):
                del self._claims[name]
            if self._closing:
                return  # close() frees all our names in one script
            self._unreleased[token] = name
        if self._link.reachable:
            try:
                self._release_in_redis(name, token)
            except redis.RedisError:
                self._link.mark_down()  # the heartbeat retries it

    def _release_in_redis(self, name: str, token: str) -> None:
        self._run("release", name, token, self.server_id)
        with self._names:
            self._unreleased.pop(token, None)

    def _holds(self, name: str, token: str) -> bool:
        """Under `_names`: is `token` our current claim of `name`?"""
        claim = self._claims.get(name)
        return claim is not None and claim.token == token

    # -- rooms ----------------------------------------------------------------

    def set_rooms(self, name: str, token: str, rooms: list[str]) -> None:
        """Our user is in `rooms` now (the hub did it here): tell Redis, without waiting long.

        Called on the user's reader thread, outside the hub's lock. At most
        one quick call; if Redis is away, the heartbeat sends the latest rooms.
        """
        with self._names:
            if not self._holds(name, token):
                return
            claim = self._claims[name]
            claim.rooms, claim.rooms_sent = rooms_field(rooms), False
        self._send_rooms(name)

    def _send_rooms(self, name: str) -> None:
        """Send `name`'s latest rooms until Redis has them; one thread at a time per name.

        A change that comes while another thread's call is in flight only
        marks the rooms unsent: that thread sees it when its call returns and
        sends again, so older rooms can never land after newer ones.
        """
        while self._link.reachable:
            with self._names:
                claim = self._claims.get(name)
                if claim is None or claim.sending or claim.rooms_sent:
                    return
                claim.sending, claim.rooms_sent = True, True
                token, rooms = claim.token, claim.rooms
            try:
                sent = self._run("rooms", name, token, self.server_id, rooms) == 1
            except redis.RedisError:
                self._link.mark_down()
                sent = False
            with self._names:
                claim.sending = False
                if not sent:  # Redis away, or it lost the name: reconcile, then retry
                    claim.rooms_sent = False
                    return

    def _retry_rooms(self) -> None:
        with self._names:
            due = [name for name, claim in self._claims.items() if not claim.rooms_sent]
        for name in due:
            self._send_rooms(name)

    def _run(self, script: str, *args):
        return self._run_keys(script, PRESENCE_KEYS, list(args))

    def _run_keys(self, script: str, keys: list, args: list):
        return self._link.run(script, keys, [EVENTS_MAX, *args])

    def close(self) -> None:
        """Leave the cluster: every name of ours freed (with its `left`), our keys gone."""
        with self._names:
            self._closing = True
            self._names.wait_for(lambda: self._inflight == 0, timeout=2 * QUICK_TIMEOUT_S)
        self._stopped.set()
        self._follower.stop(timeout=5)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        try:
            args = [self.server_id, alive_key(self.server_id)]
            self._run_keys("leave", [*PRESENCE_KEYS, SERVERS_KEY], args)
        except redis.RedisError as error:
            log.warning("could not leave the cluster cleanly: %s", error)
