"""Presence and live events shared between servers through Redis (SPEC §7).

Several `server.py` processes on one Redis behave as one chat server.
Messages already travel through the Redis Stream (redis_store.py); this
module carries the rest:

- **Names.** Claiming a name is one atomic `HSETNX chat:names <name>`, so of
  two servers claiming it at once exactly one wins, and a name online
  anywhere is ALREADY_EXISTS everywhere.
- **Joins, leaves, typing** go out on one Pub/Sub channel. Each server
  publishes its own clients' events and fans out the others' to its local
  clients; it ignores its own, which its hub already delivered.
- **Liveness.** Each server refreshes a key with a TTL every few seconds. A
  server whose key has expired is dead: the first survivor to remove it from
  `chat:servers` (an atomic `SREM`, so exactly one) frees its names and
  announces one USER_LEFT for each, to everyone.

Threads (all owned here): the *publisher* drains `_outbox` (the hub puts into
it, never blocking); the *listener* owns the Pub/Sub connection; the
*heartbeat* refreshes liveness, reconciles names and reaps dead servers.
If Redis is away, events are dropped and names are checked locally only;
the heartbeat puts things right when Redis is back.

Without `--redis-url` the server uses `hub.Alone`, which does nothing.
"""

import json
import logging
import queue
import threading
import uuid

import redis

from redis_store import ALIVE_KEY, EVENTS_CHANNEL, NAMES_KEY, SERVERS_KEY

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  # how often a server says it is alive and reaps the dead
ALIVE_TTL_MS = 10_000  # a server silent this long is dead: its users are gone in <= ~12 s
OUTBOX_MAX_EVENTS = 10_000  # live events waiting for Redis; beyond, dropped (they are ephemeral)
LISTEN_TIMEOUT_S = 1.0  # the listener wakes this often to notice close()

# Deletes a name only if this session still holds it (a newer claim is left alone).
_RELEASE_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class Cluster:
    """Names, presence and live events shared through Redis; see the module docstring."""

    def __init__(self, client: redis.Redis, server_id: str):
        self._redis = client
        self.server_id = server_id
        self._alive_key = ALIVE_KEY.format(server_id)
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._outbox: queue.Queue = queue.Queue(maxsize=OUTBOX_MAX_EVENTS)
        self._closed = threading.Event()
        self._hub = None
        self._claims_lock = threading.Lock()  # guards _claims
        self._claims: dict[str, str] = {}  # name -> claim token, for our online clients
        self._threads = [
            threading.Thread(target=self._publish_loop, name="cluster-publisher"),
            threading.Thread(target=self._listen_loop, name="cluster-listener"),
            threading.Thread(target=self._heartbeat_loop, name="cluster-heartbeat"),
        ]

    def start(self, hub) -> None:
        self._hub = hub
        self._beat()
        for thread in self._threads:
            thread.start()

    # -- names: called by the session, outside any lock --------------------

    def claim(self, name: str) -> str | None:
        """Claim `name` everywhere. The claim token, or None if it is taken."""
        token = f"{self.server_id}:{uuid.uuid4().hex[:8]}"
        try:
            if not self._redis.hsetnx(NAMES_KEY, name, token):
                return None
        except redis.RedisError as error:
            log.warning("cannot claim %s in Redis (%s): checking this server only", name, error)
        with self._claims_lock:
            self._claims[name] = token  # the heartbeat re-claims it if Redis lost it
        return token

    def release(self, name: str, claim: str) -> None:
        with self._claims_lock:
            if self._claims.get(name) == claim:
                del self._claims[name]
        if self._closed.is_set():
            return  # shutting down: close() frees all our names in one round trip
        try:
            self._release(keys=[NAMES_KEY], args=[name, claim])
        except redis.RedisError:
            pass  # the heartbeat frees names we no longer hold

    def online(self, local_names: list[str]) -> list[str]:
        try:
            return sorted(self._redis.hkeys(NAMES_KEY))
        except redis.RedisError:
            return local_names

    # -- live events --------------------------------------------------------

    def publish(self, kind: str, name: str, typing: int = 0) -> None:
        """Hand a local join/leave/typing event to the other servers. Never blocks."""
        event = json.dumps({"server": self.server_id, "kind": kind, "name": name, "typing": typing})
        try:
            self._outbox.put_nowait(event)
        except queue.Full:
            pass  # Redis has been away long: live events are not worth keeping

    def _publish_loop(self) -> None:
        while not self._closed.is_set():
            try:
                event = self._outbox.get(timeout=LISTEN_TIMEOUT_S)
            except queue.Empty:
                continue
            try:
                self._redis.publish(EVENTS_CHANNEL, event)
            except redis.RedisError:
                pass  # a join, leave or typing change missed while Redis is away

    def _listen_loop(self) -> None:
        while not self._closed.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(EVENTS_CHANNEL)
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=LISTEN_TIMEOUT_S)
                    if message is not None:
                        self._receive(message["data"])
            except redis.RedisError:
                self._closed.wait(HEARTBEAT_S)  # Redis away: subscribe again later
            finally:
                pubsub.close()

    def _receive(self, data: str) -> None:
        try:
            event = json.loads(data)
            if event["server"] != self.server_id:
                self._hub.remote_event(event["kind"], event["name"], event["typing"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignored a malformed event on %s", EVENTS_CHANNEL)

    # -- liveness -----------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(HEARTBEAT_S):
            try:
                self._beat()
                self._reconcile_names()
                self._reap_dead_servers()
            except redis.RedisError as error:
                log.debug("heartbeat skipped: %s", error)

    def _beat(self) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._alive_key, "1", px=ALIVE_TTL_MS)
        pipe.sadd(SERVERS_KEY, self.server_id)
        pipe.execute()

    def _reconcile_names(self) -> None:
        """Re-claim names Redis lost (an outage); free ones we hold but no longer use."""
        with self._claims_lock:
            claims = dict(self._claims)
        held = {
            n: c
            for n, c in self._redis.hgetall(NAMES_KEY).items()
            if _server_of(c) == self.server_id
        }
        for name, token in claims.items():
            if name in held:
                continue
            if self._redis.hsetnx(NAMES_KEY, name, token):
                self.publish("joined", name)  # others may have reaped us as dead meanwhile
            else:
                log.warning("%s was claimed elsewhere during a Redis outage", name)
        for name, token in held.items():
            if claims.get(name) != token:
                self._release(keys=[NAMES_KEY], args=[name, token])

    def _reap_dead_servers(self) -> None:
        for server_id in self._redis.smembers(SERVERS_KEY) - {self.server_id}:
            if self._redis.exists(ALIVE_KEY.format(server_id)):
                continue
            if not self._redis.srem(SERVERS_KEY, server_id):
                continue  # another survivor is reaping it
            claims = self._redis.hgetall(NAMES_KEY).items()
            names = [name for name, claim in claims if _server_of(claim) == server_id]
            if names:
                self._redis.hdel(NAMES_KEY, *names)
            log.warning("server %s is gone: %d users left with it", server_id, len(names))
            for name in names:
                self._hub.remote_event("left", name)  # our clients
                self.publish("left", name)  # everyone else's

    def close(self, local_names: list[str]) -> None:
        """Leave the cluster cleanly: our users leave everywhere, our key goes."""
        for name in local_names:
            self.publish("left", name)
        self._closed.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)
        try:
            while not self._outbox.empty():
                self._redis.publish(EVENTS_CHANNEL, self._outbox.get_nowait())
            pipe = self._redis.pipeline(transaction=False)
            if local_names:
                pipe.hdel(NAMES_KEY, *local_names)
            pipe.delete(self._alive_key)
            pipe.srem(SERVERS_KEY, self.server_id)
            pipe.execute()
        except redis.RedisError as error:
            log.warning("could not leave the cluster cleanly: %s", error)


def _server_of(claim: str) -> str:
    """The server id in a claim token "<server id>:<session>"."""
    return claim.split(":", 1)[0]
