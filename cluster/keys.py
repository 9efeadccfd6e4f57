"""The Redis vocabulary: every key, and the link all the Redis modules share.

cluster/store.py (messages) and cluster/presence.py (names, rooms, presence, live
events) talk to one Redis through one `RedisLink`. Only they and their
redis_*.py helpers import `redis`. Every change to who is online, or in
which room, is one Lua script that changes the names *and* appends the
matching event to the events stream, so the two can never disagree, and
every server sees joins, moves and leaves in the stream's one order.

The message layout (measured in bench/redis_layout.py; the README says why):

    lobby message  --XADD-->  chat:messages            (lobby history, followed)
    #rust message  --APPEND--> chat:bus + chat:room:rust (same id; bus followed,
                                                          room stream is history)

Every server follows two streams, whatever the number of rooms; a room's
history is its own stream, so a quiet room's is never pushed out by a busy one.

The Lua scripts themselves are in cluster/lua.py; `RedisLink.run` runs them by name.
"""

import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster.lua import SCRIPTS
from sanitize import LOBBY, shown_url, without_secrets
from store import StoreUnavailable

# Every Redis key of the project, in one place.
STREAM_KEY = "chat:messages"  # stream: the lobby's messages (and other tools' entries)
BUS_KEY = "chat:bus"  # stream: every other room's messages, in one order; servers follow it
ROOM_PREFIX = "chat:room:"  # stream per room but the lobby: its history (same ids as the bus)
EVENTS_KEY = "chat:events"  # stream: joins, moves, leaves, typing, direct messages; capped
NAMES_KEY = "chat:names"  # hash: online username -> claim token "<server id>:<session>"
WHERE_KEY = "chat:where"  # hash: online username -> the room they are in
SERVERS_KEY = "chat:servers"  # set: ids of servers that may hold names
ALIVE_PREFIX, ALIVE_SUFFIX = "chat:server:", ":alive"  # string with a TTL, per live server
PRESENCE_KEYS = [NAMES_KEY, EVENTS_KEY, WHERE_KEY]  # KEYS[1..3] of every presence script

EVENTS_MAX = 10_000  # events kept (MAXLEN ~): a server cut off longer than this resyncs
QUICK_TIMEOUT_S = 1.0  # claims, history, heartbeat: a partition costs a join at most this
SLOW_TIMEOUT_S = 2.0  # writes of a batch, and the margin beyond an XREAD's block
NOT_SENT_TEXT = "cut off from the Redis the other servers share"  # what NotSent says
FOLLOW_BLOCK_MS = 1000  # XREAD waits this long for news, then loops (to see close())


def alive_key(server_id: str) -> str:
    return f"{ALIVE_PREFIX}{server_id}{ALIVE_SUFFIX}"


def written_key(server_id: str) -> str:
    """Up to which seq this server's messages are written (a retry after a lost reply)."""
    return f"{ALIVE_PREFIX}{server_id}:written"


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
    stays set.
    """

    def __init__(self, url: str):
        self.url = url
        self.client = _connect(url, SLOW_TIMEOUT_S + FOLLOW_BLOCK_MS / 1000)
        self.quick = _connect(url, QUICK_TIMEOUT_S)
        self._reachable = threading.Event()  # thread-safe flag: no lock needed
        self._reachable.set()
        self.shared = False  # a plain bool, written by the heartbeat thread only
        self.scripts = {name: self.quick.register_script(lua) for name, lua in SCRIPTS.items()}

    @property
    def reachable(self) -> bool:
        return self._reachable.is_set()

    def mark_up(self) -> None:
        self._reachable.set()

    def mark_down(self) -> None:
        self._reachable.clear()

    def run(self, script: str, keys: list, args: list, client=None):
        """Run one of our Lua scripts (on `quick` unless told otherwise)."""
        return self.scripts[script](keys=keys, args=args, client=client or self.quick)

    def close(self) -> None:
        self.client.close()
        self.quick.close()


def _connect(url: str, timeout_s: float) -> redis.Redis:
    """A client whose every call gives up after `timeout_s`; strings decoded here."""
    client = redis.Redis.from_url(
        url,
        decode_responses=True,
        encoding_errors="replace",  # bytes another tool wrote never make a read fail
        socket_timeout=timeout_s,
        socket_connect_timeout=QUICK_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),  # we retry ourselves, visibly
    )
    try:
        client.ping()
    except redis.RedisError as error:
        error = without_secrets(str(error), url)
        raise StoreUnavailable(f"cannot reach Redis at {shown_url(url)}: {error}") from None
    return client


def entry_fields(flat: list) -> dict:
    """A stream entry's fields from a Lua reply ([f1, v1, f2, v2, ...]) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False))
