"""Liveness: the heartbeat that says we are alive, reaps the dead and claims names again.

Part of the cluster (cluster/presence.py holds the names). Every HEARTBEAT_S
one script refreshes our alive key, counts the live peers (so the store
knows whether it is `shared`), and reaps every server whose key expired:
its names go, with one `left` each, in that same script, so exactly one
survivor announces them. Then the heartbeat retries releases and changes
of rooms that failed, and claims again what Redis lost:

- **we were reaped** (cut off longer than ALIVE_TTL_MS): a name someone
  else holds now is theirs; our session is told and disconnected;
- **Redis was emptied** (restarted empty, FLUSHALL: a new epoch): every
  server claims again what it held while claims wait SETTLE_MS, and the
  session that joined first keeps its name, not the heartbeat that came first;
- **cut off for CUT_OFF_S** while others share the Redis: we will be reaped
  soon and our names freed for others, so our sessions end now
  (SHUTTING_DOWN: they reconnect where a name holds), never online twice.

These methods are part of `Cluster`, kept in this file so each reads in one
sitting: they use its link, hub, `_names`, `_claims` and `_stopped`. The
*heartbeat* thread (`_heartbeat_loop`) is the only caller, but for the first
beat, which `Cluster.start` makes before any join.
"""

import logging
import time
import uuid

import redis

from cluster.keys import (
    ALIVE_PREFIX,
    ALIVE_SUFFIX,
    EPOCH_KEY,
    PRESENCE_KEYS,
    SERVERS_KEY,
    SETTLING_KEY,
)  # fmt: skip

log = logging.getLogger("cluster.presence")

HEARTBEAT_S = 2.0  # how often a server says it is alive, reaps the dead, re-claims
ALIVE_TTL_MS = 10_000  # a server silent this long is dead: its users are gone in <= ~12 s
# For its first seconds a server assumes others share its Redis, whatever its first
# heartbeat saw: servers started together (a deployment, --processes) meet only at
# their next heartbeats, and an id made here meanwhile might not hold.
# NOTE: a server alone for longer learns of a newcomer at its next heartbeat
# (<= HEARTBEAT_S): an outage of exactly that server in that window still
# delivers with ids of its own.
UNSURE_AT_START_S = 5.0
KICK_TEXT = "{} is online on another server: this session ends"
# Cut off this long (no heartbeat reached Redis), a server ends its sessions: at
# ALIVE_TTL_MS others reap it and free its names, which must not be online twice.
CUT_OFF_S = ALIVE_TTL_MS / 1000 - HEARTBEAT_S - 1.0
CUT_OFF_TEXT = "this server is cut off from the others: reconnect"
WATCHDOG_S = 0.5  # how often the cut-off rule is checked
# After Redis was emptied, claims wait this long while every live server claims
# again what it held (each does at its next heartbeat, within HEARTBEAT_S).
SETTLE_MS = int(2 * HEARTBEAT_S * 1000 + 1000)
SLOW_LINK_S = 1.0  # a heartbeat's round trip longer than this is logged as a warning
SLOW_LINK_LOGGED_EVERY_S = 60.0  # at most one such warning a minute


class Liveness:
    """The cluster's heartbeat; see the module docstring."""

    def _heartbeat_loop(self) -> None:
        while not self._stopped.wait(HEARTBEAT_S):
            self._heartbeat()

    def _watchdog_loop(self) -> None:
        """Its own thread: a heartbeat stuck in a timeout must not delay the cut-off rule."""
        while not self._stopped.wait(WATCHDOG_S):
            try:
                self._end_sessions_if_cut_off()
            except Exception:  # a bug must not stop the watchdog
                log.exception("watchdog failed (going on)")

    def _heartbeat(self) -> None:
        sent_at = time.monotonic()
        try:
            self._emptied |= self._beat()
            self._last_contact = sent_at
            self._warn_if_slow(time.monotonic() - sent_at)
            self._retry_releases()
            self._reconcile(self._emptied)
            self._emptied = False
            self._retry_rooms()
        except redis.ResponseError as error:  # Redis answered (out of memory): no one reaps
            self._last_contact = sent_at
            log.warning("heartbeat refused by Redis: %s", error)
        except redis.RedisError as error:
            self._link.mark_down()
            log.debug("heartbeat skipped: %s", error)
        except Exception:  # a bug must not stop the heartbeat: we would be reaped
            log.exception("heartbeat failed (going on)")

    def _warn_if_slow(self, round_trip_s: float) -> None:
        """A slow link is not a dead one, but an operator should hear of it."""
        now = time.monotonic()
        if round_trip_s > SLOW_LINK_S and now - self._slow_logged_at > SLOW_LINK_LOGGED_EVERY_S:
            self._slow_logged_at = now
            log.warning("Redis is slow: a heartbeat took %.1f s (slow, not dead)", round_trip_s)

    def _end_sessions_if_cut_off(self) -> None:
        """Soon reaped (names freed for others): our sessions reconnect where names hold."""
        cut_off_s = time.monotonic() - self._last_contact
        if not self._link.shared or cut_off_s < CUT_OFF_S:
            return
        with self._names:
            if not self._claims:
                return
            count = len(self._claims)
        log.warning("cut off from Redis for %.1f s: ending %d sessions", cut_off_s, count)
        self._hub.end_all(CUT_OFF_TEXT)

    def _beat(self) -> bool:
        """Say we are alive, reap the dead. True if Redis was emptied since the last beat."""
        fresh = uuid.uuid4().hex
        args = [self.server_id, ALIVE_PREFIX, ALIVE_SUFFIX, ALIVE_TTL_MS, fresh, self._epoch]
        keys = [*PRESENCE_KEYS, SERVERS_KEY, EPOCH_KEY, SETTLING_KEY]
        peers, reaped, epoch = self._run_keys("heartbeat", keys, [*args, SETTLE_MS])
        emptied = bool(self._epoch) and epoch != self._epoch
        self._epoch = epoch
        if emptied:
            log.warning("Redis was emptied: claiming our names again (the first to join keeps one)")
        # Sticky: once another server has shared this Redis, an outage here must
        # never deliver with our own ids (it may be back at any moment).
        self._seen_peers = self._seen_peers or peers > 0
        unsure = time.monotonic() - self._started < UNSURE_AT_START_S
        if self._link.shared and not (self._seen_peers or unsure):
            log.info("alone on this Redis: during an outage, chat goes on live")
        self._link.shared = self._seen_peers or unsure
        self._link.mark_up()
        for dead, freed in zip(reaped[::2], reaped[1::2], strict=False):
            log.warning("server %s is gone: %d users left with it", dead, freed)
        return emptied

    def _retry_releases(self) -> None:
        with self._names:
            due = list(self._unreleased.items())
        for token, name in due:
            self._release_in_redis(name, token)

    def _reconcile(self, first_wins: bool = False) -> None:
        """Claim again what Redis lost (an outage, or we were reaped); kick who lost a name.

        `first_wins`: Redis was emptied, a name held by a later session is ours again.
        """
        with self._names:
            claims = [(name, claim.token, claim.rooms) for name, claim in self._claims.items()]
        if not claims:
            return
        triples = [value for claim in claims for value in claim]
        args = [self.server_id, "1" if first_wins else "0", *triples]
        results = self._run_keys("reconcile", PRESENCE_KEYS, args)
        for (name, token, _), result in zip(claims, results, strict=True):
            with self._names:
                current = self._holds(name, token)
                if result == 0 and current:
                    del self._claims[name]
            if result == 0 and current:
                log.warning("%s is held on another server: disconnecting ours", name)
                self._hub.kick(name, KICK_TEXT.format(name))
            elif result == 2:
                log.info("claimed %s again in Redis", name)
                if not current:  # released while we claimed it: free it again
                    self._release_in_redis(name, token)
