"""The Redis vocabulary: every key, and the link all the Redis modules share.

cluster/store.py (messages) and cluster/presence.py (names, rooms, presence, live
events) talk to one Redis through one `RedisLink`. Only the modules of
this folder import `redis`. Every change to who is online, or in
which room, is one Lua script that changes the names *and* appends the
matching event to the events stream, so the two can never disagree, and
every server sees joins, changes of rooms and leaves in the stream's one order.

The message layout (measured in bench/redis_layout.py; the README says why):

    lobby message  --XADD-->  chat:messages            (lobby history, followed)
    #rust message  --APPEND--> chat:bus + chat:room:rust (same id; bus followed,
                                                          room stream is history)

Every server follows two streams, whatever the number of rooms; a room's
history is its own stream, so a quiet room's is never pushed out by a busy one.

The Lua scripts themselves are in cluster/lua.py; `RedisLink.run` runs them by name.

A URL `redis+sentinel://h1:26379,h2:26379/mymaster/0` reaches the master of
`mymaster` through Redis Sentinel, with redis-py's own `Sentinel`: every new
connection asks a sentinel where the master is, and a connection to a master
that died or was demoted fails, so the next call (the writer's and the
followers' retries, the heartbeat) lands on the promoted replica by itself.
A Lua script the new master never saw is loaded again by redis-py's `Script`
(NOSCRIPT, then SCRIPT LOAD), in pipelines too.
"""

import threading
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from cluster.lua import SCRIPTS
from sanitize import LOBBY, shown_url, without_secrets
from store import StoreUnavailable

# Every Redis key of the project, in one place.
STREAM_KEY = "chat:messages"  # stream: the lobby's messages (and other tools' entries)
BUS_KEY = "chat:bus"  # stream: every other room's messages, in one order; servers follow it
ROOM_PREFIX = "chat:room:"  # stream per room but the lobby: its history (same ids as the bus)
EVENTS_KEY = "chat:events"  # stream: joins, rooms, leaves, typing, direct messages; capped
LAST_PRESENCE_KEY = "chat:events:presence"  # string: the id of the last join, rooms or leave
NAMES_KEY = "chat:names"  # hash: online username -> claim token "<server id>:<session>"
WHERE_KEY = "chat:where"  # hash: online username -> their rooms, sorted, by commas
# hash: a name's skeleton (sanitize.name_skeleton) -> the online name holding it, so
# "Alice" is taken while alice is online; written by the presence scripts beside
# NAMES_KEY, whose name they compute (cluster/lua.py: SKELETONS).
SKELETONS_KEY = "chat:names:skeletons"
SERVERS_KEY = "chat:servers"  # set: ids of servers that may hold names
ALIVE_PREFIX, ALIVE_SUFFIX = "chat:server:", ":alive"  # string with a TTL, per live server
ROOMS_ACTIVE_KEY = "chat:rooms:active"  # hash: room -> when it last had members (ms)
GUESSES_PREFIX = "chat:guesses:"  # hash per client network: its failed sign-ins' bucket
SENT_PREFIX = "chat:sent:"  # string with a TTL per (sender, key): the id a line became
TAKEN_PREFIX = "chat:taken:"  # string with a TTL per direct message a recipient's server took
EPOCH_KEY = "chat:epoch"  # string: set once per Redis life; a new one means Redis was emptied
SETTLING_KEY = "chat:settling"  # string with a TTL: servers are claiming again, claims wait
# string with a TTL: a server writes again what Redis lost (cluster/writer.py); new lines wait
RESTORING_KEY = "chat:restoring"
PRESENCE_KEYS = [NAMES_KEY, EVENTS_KEY, WHERE_KEY]  # KEYS[1..3] of every presence script

EVENTS_MAX = 10_000  # events kept (MAXLEN ~): a server cut off longer than this resyncs
# Claims, history, heartbeat: a partition costs a join at most this. A slow link
# (round trips up to ~2 s) is slow, not dead: its heartbeats must still land.
QUICK_TIMEOUT_S = 2.5
SLOW_TIMEOUT_S = 2.0  # writes of a batch, and the margin beyond an XREAD's block
NOT_SENT_TEXT = "cut off from the Redis the other servers share"  # what NotSent says
FOLLOW_BLOCK_MS = 1000  # XREAD waits this long for news, then loops (to see close())
SENTINEL_SCHEME = "redis+sentinel"  # redis+sentinel://h1:26379,h2:26379/service/db
# --redis-replicas: how long a WAIT for the replicas may take before the write
# counts as failed (the sender gets NOT_SENT while it lasts). Replicas answer in
# a round trip; a second means one is gone or far behind.
REPLICAS_WAIT_MS = 1000
SYNC_CHANNEL = "chat:sync"  # PUBLISHed to (nobody listens) before a WAIT; see wait_for_replicas


def alive_key(server_id: str) -> str:
    return f"{ALIVE_PREFIX}{server_id}{ALIVE_SUFFIX}"


def written_key(server_id: str) -> str:
    """Up to which seq this server's messages are written (a retry after a lost reply)."""
    return f"{ALIVE_PREFIX}{server_id}:written"


def sent_key(sender: str, key: str) -> str:
    """What this sender's line with this key became (its id), on every server."""
    return f"{SENT_PREFIX}{sender}:{key}"


def taken_key(sender: str, key: str) -> str:
    """A direct message (this sender's line with this key) was taken by its recipient's server."""
    return f"{TAKEN_PREFIX}{sender}:{key}"


def history_key(room: str) -> str:
    """The stream that holds `room`'s history."""
    return STREAM_KEY if room == LOBBY else ROOM_PREFIX + room


def followed_key(room: str) -> str:
    """The stream that carries `room`'s messages to every server."""
    return STREAM_KEY if room == LOBBY else BUS_KEY


FOLLOWED_KEYS = (STREAM_KEY, BUS_KEY)  # what every server's message follower reads


class RedisLink:
    """The clients to one Redis, and what this server knows of it.

    `client` waits long enough for XREAD BLOCK and batched writes; `quick`
    serves the join path and the heartbeat, so a partition costs a join at
    most QUICK_TIMEOUT_S. Both are thread-safe pools (one per process, as
    redis-py advises). `reachable` is cleared by any failed call and set by
    any answer; while it is clear the join path skips Redis. `shared` is set
    by the cluster's heartbeat once other live servers use this Redis, and
    stays set. `watch(callback)`: called (on the thread that saw it) when
    either changes, so health can follow.
    """

    def __init__(self, url: str):
        self.url = url
        self._sentinel = _sentinel(url) if url.startswith(SENTINEL_SCHEME + "://") else None
        self.client = _connect(url, SLOW_TIMEOUT_S + FOLLOW_BLOCK_MS / 1000, self._sentinel)
        self.quick = _connect(url, QUICK_TIMEOUT_S, self._sentinel)
        self._reachable = threading.Event()  # thread-safe flag: no lock needed
        self._reachable.set()
        self._shared = False  # a plain bool, written by the heartbeat thread only
        self._watchers: list = []  # callbacks, added before the threads start
        self.scripts = {name: self.quick.register_script(lua) for name, lua in SCRIPTS.items()}

    @property
    def reachable(self) -> bool:
        return self._reachable.is_set()

    @property
    def shared(self) -> bool:
        return self._shared

    @shared.setter
    def shared(self, value: bool) -> None:
        changed, self._shared = value != self._shared, value
        if changed:
            self.changed()

    def mark_up(self) -> None:
        if not self._reachable.is_set():
            self._reachable.set()
            self.changed()

    def mark_down(self) -> None:
        if self._reachable.is_set():
            self._reachable.clear()
            self.changed()

    def watch(self, callback) -> None:
        self._watchers.append(callback)

    def changed(self) -> None:
        """Something the watchers may care about changed: tell them."""
        for callback in self._watchers:
            callback()

    def run(self, script: str, keys: list, args: list, client=None):
        """Run one of our Lua scripts (on `quick` unless told otherwise)."""
        return self.scripts[script](keys=keys, args=args, client=client or self.quick)

    def wait_for_replicas(self, pipe, replicas: int) -> None:
        """Queue on `pipe` what makes it wait until `replicas` replicas hold every write
        Redis answered so far; `check_replicas` reads the outcome from its replies.

        NOTE: WAIT waits for the last write of *its own connection*. The PUBLISH
        (propagated to replicas like any write, stored nowhere) makes that write
        this one, later than any other connection's writes before it, so the WAIT
        covers them all: what our writer wrote, and what the follower just read.
        """
        pipe.publish(SYNC_CHANNEL, "")
        pipe.execute_command("WAIT", replicas, REPLICAS_WAIT_MS)

    def close(self) -> None:
        self.client.close()
        self.quick.close()
        if self._sentinel is not None:
            for sentinel in self._sentinel[0].sentinels:
                sentinel.close()


def _connect(url: str, timeout_s: float, sentinel=None) -> redis.Redis:
    """A client whose every call gives up after `timeout_s`; strings decoded here.

    With `sentinel` ((Sentinel, service, db, password), from `_sentinel`), the
    client of the service's master, whichever server that is at each connect.
    """
    options = {
        "decode_responses": True,
        "encoding_errors": "replace",  # bytes another tool wrote never make a read fail
        "socket_timeout": timeout_s,
        "socket_connect_timeout": QUICK_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),  # we retry ourselves, visibly
    }
    if sentinel is None:
        client = redis.Redis.from_url(url, **options)
    else:
        manager, service, db, password = sentinel
        client = manager.master_for(service, db=db, password=password, **options)
    try:
        client.ping()
    except redis.RedisError as error:
        error = without_secrets(str(error), url)
        raise StoreUnavailable(f"cannot reach Redis at {shown_url(url)}: {error}") from None
    return client


def _sentinel(url: str) -> tuple[Sentinel, str, int, str | None]:
    """redis+sentinel://[:password@]h1:26379,h2:26379/service[/db]: the sentinels' client.

    The password is the master's; the sentinels are asked without one.
    """
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    password = unquote(parts.password) if parts.password else None
    path = [part for part in parts.path.split("/") if part]
    if not hosts or not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise StoreUnavailable(f"not a Sentinel URL (want {SENTINEL_SCHEME}://h:26379/name/0)")
    addresses = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":") if ":" in host else (host, "", "26379")
        if not port.isdigit():
            raise StoreUnavailable(f"not a Sentinel address: {host}")
        addresses.append((name.strip("[]"), int(port)))
    sentinel_options = {
        "socket_timeout": QUICK_TIMEOUT_S,
        "socket_connect_timeout": QUICK_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 0),  # one try per sentinel: the callers retry
    }
    manager = _Sentinels(addresses, sentinel_kwargs=sentinel_options)
    return manager, path[0], int(path[1]) if len(path) == 2 else 0, password


class NotReplicated(redis.RedisError):
    """Fewer replicas than asked for hold a write after REPLICAS_WAIT_MS."""


def check_replicas(replies: list, replicas: int) -> list:
    """The replies of a pipeline ended by `wait_for_replicas`, without the last two.

    Raises NotReplicated if fewer than `replicas` replicas acknowledged in time.
    """
    acked = replies[-1]
    if acked < replicas:
        raise NotReplicated(f"{acked} of {replicas} replicas hold it after {REPLICAS_WAIT_MS} ms")
    return replies[:-2]


class _Sentinels(Sentinel):
    """redis-py's Sentinel, whose "no master" error is one short line.

    redis-py's names every sentinel's client in full (a screenful per log line).
    """

    def discover_master(self, service_name):
        try:
            return super().discover_master(service_name)
        except MasterNotFoundError:
            raise MasterNotFoundError(
                f"no sentinel knows a master for {service_name!r} now"
            ) from None


def entry_fields(flat: list) -> dict:
    """A stream entry's fields from a Lua reply ([f1, v1, f2, v2, ...]) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False))
