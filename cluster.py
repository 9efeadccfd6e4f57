"""Presence and live events shared between servers through Redis.

Several `server.py` processes on one Redis behave as one chat server.
Messages travel through the message stream (redis_store.py); this module
carries the rest, each change one Lua script (redis_keys.py), so a name and
the event that announces it can never disagree:

- **Names.** `claim` is HSETNX + a `joined` event; `release` is "if this
  token still holds it" HDEL + a `left` event. Of two servers claiming one
  name at once exactly one wins; a name online anywhere is taken everywhere.
- **Live events** (joins, leaves, typing) go to a capped stream,
  `chat:events`, which every server follows from the last id it has seen
  (redis_follow.py), skipping its own. A server cut off catches up on what
  it missed when Redis answers; if it missed too much (the cap trimmed it)
  or at start or after any error, it *resyncs*: one script returns who is
  online and the stream's position at the same instant, the hub announces
  the difference (`hub.resync_remote`), and reading goes on from there.
- **Liveness.** Every HEARTBEAT_S one script refreshes our alive key, counts
  the live peers (so the store knows whether it is `shared`), and reaps
  every server whose key expired: its names go, with one `left` each, in
  that same script, so exactly one survivor announces them.

Why a stream and not Pub/Sub: Pub/Sub keeps nothing, so every reconnect
needs a reconciliation, and an event sent in the second before it is lost
for good (a join shown to no one). The stream costs one XADD of ~60 bytes
per event (10,000 kept, under 1 MB) and gives the same one order on every
server; a resync is needed only when the cap is overrun.

**While Redis is unreachable** claims are kept here and the join path does
not wait on Redis (`link.reachable`); the heartbeat claims them again, with
their `joined`, when Redis answers, and retries releases that failed. If a
name was taken meanwhile (we were cut off longer than ALIVE_TTL_MS, reaped,
and someone else claimed it), the one who holds it in Redis wins: our user
is told and disconnected (`hub.kick`).

Threads (all owned here): the *publisher* drains `_outbox` (typing; the hub
puts into it, never blocking); the *follower* reads the events stream; the
*heartbeat* beats, reaps, retries releases and re-claims. `_names` guards
`_claims`, `_unreleased`, `_inflight` and `_closing`, never held during a
Redis call. Without `--redis-url` the server uses `hub.Alone` instead.
"""

import logging
import queue
import threading
import uuid

import redis

from redis_follow import StreamFollower
from redis_keys import (
    ALIVE_PREFIX,
    ALIVE_SUFFIX,
    EVENTS_KEY,
    EVENTS_MAX,
    NAMES_KEY,
    QUICK_TIMEOUT_S,
    SERVERS_KEY,
    RedisLink,
    alive_key,
)  # fmt: skip

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # how often a server says it is alive, reaps the dead, re-claims
ALIVE_TTL_MS = 10_000  # a server silent this long is dead: its users are gone in <= ~12 s
OUTBOX_MAX_EVENTS = 10_000  # typing events waiting for Redis; beyond, dropped
PUBLISH_BATCH_MAX = 200  # typing events per round trip
KICK_TEXT = "{} is online on another server: this session ends"


class Cluster:
    """Names, presence and live events shared through Redis; see the module docstring."""

    def __init__(self, link: RedisLink, server_id: str):
        self._link = link
        self.server_id = server_id
        self._hub = None
        self._names = threading.Condition()  # guards the four fields below
        self._claims: dict[str, str] = {}  # name -> token, for our online clients
        self._unreleased: dict[str, str] = {}  # token -> name: releases Redis has not had
        self._inflight = 0  # claims talking to Redis now: close() waits for them
        self._closing = False
        self._outbox: queue.Queue = queue.Queue(maxsize=OUTBOX_MAX_EVENTS)
        self._stopped = threading.Event()
        self._follower = StreamFollower(
            link, EVENTS_KEY, "cluster-follower", self._on_events, resync=self._resync
        )
        self._threads = [
            threading.Thread(target=self._publish_loop, name="cluster-publisher"),
            threading.Thread(target=self._heartbeat_loop, name="cluster-heartbeat"),
        ]

    def start(self, hub) -> None:
        self._hub = hub
        self._heartbeat()  # before the first join: are we alone on this Redis?
        self._follower.start()  # resyncs first: who is online elsewhere
        for thread in self._threads:
            thread.start()

    # -- names: called by the session, outside any lock ------------------------

    def claim(self, name: str) -> str | None:
        """Claim `name` everywhere, announcing the join. The token, or None if taken."""
        token = f"{self.server_id}:{uuid.uuid4().hex[:8]}"
        with self._names:
            if self._closing:
                return token  # the hub refuses the join; nothing may reach Redis now
            self._inflight += 1
            stale = [t for t, n in self._unreleased.items() if n == name]
        try:
            won = self._claim_in_redis(name, token, stale)
        finally:
            with self._names:
                self._inflight -= 1
                self._names.notify_all()
                if won is not False:
                    self._claims[name] = token
        return None if won is False else token

    def _claim_in_redis(self, name: str, token: str, stale: list[str]) -> bool | None:
        """True if won, False if taken, None if Redis did not answer (kept here)."""
        if not self._link.reachable:
            return None  # the heartbeat claims it when Redis answers
        try:
            for old in stale:  # our own earlier session of this name: free it first
                self._release_in_redis(name, old)
            return bool(self._run("claim", name, token, self.server_id))
        except redis.RedisError as error:
            self._link.mark_down()
            log.warning("cannot claim %s in Redis (%s): kept here until it answers", name, error)
            return None

    def release(self, name: str, token: str) -> None:
        """Free `name` everywhere, announcing the leave (retried if Redis is away)."""
        with self._names:
            if self._claims.get(name) == token:
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

    # -- live events ---------------------------------------------------------

    def publish_typing(self, name: str, kind: int) -> None:
        """Hand a local typing change to the other servers. Never blocks."""
        try:
            self._outbox.put_nowait((name, int(kind)))
        except queue.Full:
            pass  # Redis has been away long: typing is not worth keeping

    def _publish_loop(self) -> None:
        batch = []  # kept across a failed write: a STOP must not be lost for good
        while not self._stopped.is_set():
            if not batch:
                try:
                    batch.append(self._outbox.get(timeout=1.0))  # wakes to see close()
                except queue.Empty:
                    continue
            while len(batch) < PUBLISH_BATCH_MAX and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())  # we are the only taker
            if self._write_typing(batch):
                batch = []

    def _write_typing(self, batch: list) -> bool:
        pipe = self._link.quick.pipeline(transaction=False)
        for name, kind in batch:
            fields = {"kind": "typing", "name": name, "server": self.server_id, "typing": kind}
            pipe.xadd(EVENTS_KEY, fields, maxlen=EVENTS_MAX, approximate=True)
        try:
            pipe.execute()
            return True
        except redis.RedisError:
            self._link.mark_down()
            self._stopped.wait(QUICK_TIMEOUT_S)
            return False

    def _on_events(self, entries: list) -> None:
        """Follower thread: other servers' joins, leaves and typing, in stream order."""
        for _, fields in entries:
            kind, name = fields.get("kind"), fields.get("name")
            if fields.get("server") == self.server_id or not name:
                continue  # ours (the hub showed it already), or not an event of ours
            if kind in ("joined", "left"):
                self._hub.remote_event(kind, name)
            elif kind == "typing" and fields.get("typing", "").isdigit():
                self._hub.remote_event(kind, name, int(fields["typing"]))

    def _resync(self) -> tuple[str, int]:
        """Follower thread: who is online elsewhere, and where the events stream is, at once."""
        names, (position, added) = self._link.run("resync", [NAMES_KEY, EVENTS_KEY], [])
        claims = dict(zip(names[::2], names[1::2], strict=False))
        self._hub.resync_remote({n for n, t in claims.items() if _server_of(t) != self.server_id})
        return position, added

    # -- liveness ------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            self._heartbeat()

    def _heartbeat(self) -> None:
        try:
            self._beat()
            self._retry_releases()
            self._reconcile()
        except redis.RedisError as error:
            self._link.mark_down()
            log.debug("heartbeat skipped: %s", error)
        except Exception:  # a bug must not stop the heartbeat: we would be reaped
            log.exception("heartbeat failed (going on)")

    def _beat(self) -> None:
        args = [self.server_id, ALIVE_PREFIX, ALIVE_SUFFIX, ALIVE_TTL_MS]
        peers, reaped = self._run_keys("heartbeat", [NAMES_KEY, EVENTS_KEY, SERVERS_KEY], args)
        self._link.shared = peers > 0
        self._link.mark_up()
        for dead, freed in zip(reaped[::2], reaped[1::2], strict=False):
            log.warning("server %s is gone: %d users left with it", dead, freed)

    def _retry_releases(self) -> None:
        with self._names:
            due = list(self._unreleased.items())
        for token, name in due:
            self._release_in_redis(name, token)

    def _reconcile(self) -> None:
        """Claim again what Redis lost (an outage, or we were reaped); kick who lost a name."""
        with self._names:
            claims = list(self._claims.items())
        if not claims:
            return
        pairs = [value for claim in claims for value in claim]
        results = self._run_keys("reconcile", [NAMES_KEY, EVENTS_KEY], [self.server_id, *pairs])
        for (name, token), result in zip(claims, results, strict=True):
            with self._names:
                current = self._claims.get(name) == token
                if result == 0 and current:
                    del self._claims[name]
            if result == 0 and current:
                log.warning("%s is held on another server: disconnecting ours", name)
                self._hub.kick(name, KICK_TEXT.format(name))
            elif result == 2:
                log.info("claimed %s again in Redis", name)
                if not current:  # released while we claimed it: free it again
                    self._release_in_redis(name, token)

    def _run(self, script: str, name: str, token: str, server: str):
        return self._run_keys(script, [NAMES_KEY, EVENTS_KEY], [name, token, server])

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
            self._run_keys("leave", [NAMES_KEY, EVENTS_KEY, SERVERS_KEY], args)
        except redis.RedisError as error:
            log.warning("could not leave the cluster cleanly: %s", error)


def _server_of(token: str) -> str:
    """The server id in a claim token "<server id>:<session>"."""
    return token.split(":", 1)[0]
