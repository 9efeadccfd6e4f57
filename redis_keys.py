"""The Redis vocabulary: every key, every Lua script, and the link both Redis modules share.

redis_store.py (messages) and cluster.py (names, rooms, presence, live
events) talk to one Redis through one `RedisLink`. Nothing else imports
`redis`. Every change to who is online, or in which room, is one Lua script
that changes the names *and* appends the matching event to the events
stream, so the two can never disagree, and every server sees joins, moves
and leaves in the stream's one order.

The message layout (measured in bench/redis_layout.py; the README says why):

    lobby message  --XADD-->  chat:messages            (lobby history, followed)
    #rust message  --APPEND--> chat:bus + chat:room:rust (same id; bus followed,
                                                          room stream is history)

Every server follows two streams, whatever the number of rooms; a room's
history is its own stream, so a quiet room's is never pushed out by a busy one.

NOTE: the scripts touch keys they compute (`chat:server:<id>:alive`): fine
on one Redis, not on Redis Cluster (one Redis is the distributed engine here).
"""

import threading

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sanitize import LOBBY
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

EVENTS_MAX = 10_000  # events kept (MAXLEN ~): a server cut off longer than this resyncs
QUICK_TIMEOUT_S = 1.0  # claims, history, heartbeat: a partition costs a join at most this
SLOW_TIMEOUT_S = 2.0  # writes of a batch, and the margin beyond an XREAD's block
FOLLOW_BLOCK_MS = 1000  # XREAD waits this long for news, then loops (to see close())


def alive_key(server_id: str) -> str:
    return f"{ALIVE_PREFIX}{server_id}{ALIVE_SUFFIX}"


def history_key(room: str) -> str:
    """The stream that holds `room`'s history."""
    return STREAM_KEY if room == LOBBY else ROOM_PREFIX + room


def followed_key(room: str) -> str:
    """The stream that carries `room`'s messages to every server."""
    return STREAM_KEY if room == LOBBY else BUS_KEY


FOLLOWED_KEYS = (STREAM_KEY, BUS_KEY)  # what every server's message follower reads


# -- Lua: names, rooms and presence ---------------------------------------------------
# KEYS[1] = NAMES_KEY, KEYS[2] = EVENTS_KEY, KEYS[3] = WHERE_KEY in each; events carry
# the server they come from and the room they are about.

_XADD = """
local function event(kind, name, server, room)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
             'kind', kind, 'name', name, 'server', server, 'room', room)
end
local function forget(name, server)
  local room = redis.call('HGET', KEYS[3], name) or 'lobby'
  redis.call('HDEL', KEYS[1], name)
  redis.call('HDEL', KEYS[3], name)
  event('left', name, server, room)
end
"""

# ARGV: maxlen, name, token, server, room. 1 if the name is ours now, 0 if someone holds it.
CLAIM = """
local held = redis.call('HGET', KEYS[1], ARGV[2])
if held == ARGV[3] then return 1 end
if held then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
event('joined', ARGV[2], ARGV[4], ARGV[5])
return 1
"""

# ARGV: maxlen, name, token, server, room. 0 if this token does not hold the name;
# else 1, with a `moved` event only if the room changed (so a retry is harmless).
MOVE = """
if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then return 0 end
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[5] then return 1 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
event('moved', ARGV[2], ARGV[4], ARGV[5])
return 1
"""

# ARGV: maxlen, name, token, server. Frees the name only if this token still holds it.
RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then
  forget(ARGV[2], ARGV[4])
  return 1
end
return 0
"""

# ARGV: maxlen, server, then name, token, room triples. Per triple: 1 held, 2 claimed
# again (in that room), 0 taken. Rooms of held names are MOVE's to change, not ours.
RECONCILE = """
local out = {}
for i = 3, #ARGV, 3 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held == ARGV[i + 1] then out[#out + 1] = 1
  elseif held then out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    event('joined', ARGV[i], ARGV[2], ARGV[i + 2])
    out[#out + 1] = 2
  end
end
return out
"""

_FREE_NAMES = """
local function free_names(server)
  local prefix, freed, all = server .. ':', 0, redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i + 1], 1, #prefix) == prefix then
      forget(all[i], server)
      freed = freed + 1
    end
  end
  return freed
end
"""

# KEYS[4] = SERVERS_KEY. ARGV: maxlen, server, alive prefix, alive suffix, ttl ms.
# Says we are alive; reaps every server whose alive key expired (its names go, one
# `left` each, in this one script: exactly one survivor reaps it). Returns
# {live peers, {dead id, names freed, ...}}.
HEARTBEAT = """
redis.call('SET', ARGV[3] .. ARGV[2] .. ARGV[4], '1', 'PX', ARGV[5])
redis.call('SADD', KEYS[4], ARGV[2])
local peers, reaped = 0, {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  if id ~= ARGV[2] then
    if redis.call('EXISTS', ARGV[3] .. id .. ARGV[4]) == 1 then peers = peers + 1
    else
      redis.call('SREM', KEYS[4], id)
      reaped[#reaped + 1] = id
      reaped[#reaped + 1] = free_names(id)
    end
  end
end
return {peers, reaped}
"""

# KEYS[4] = SERVERS_KEY. ARGV: maxlen, server, alive key. Leaves nothing of ours behind.
LEAVE = """
local freed = free_names(ARGV[2])
redis.call('DEL', ARGV[3])
redis.call('SREM', KEYS[4], ARGV[2])
return freed
"""

# -- Lua: a message of a room other than the lobby ------------------------------------

# KEYS[1] = BUS_KEY, KEYS[2] = the room's history stream. ARGV: maxlen, id ('*' or
# one given during an outage), then the entry's fields and values. The bus makes the
# id: every such room's messages pass through it, so the id is above the room's last.
# Returns the id. (A history stream another tool wrote past gets a fresh id there.)
APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[2], unpack(ARGV, 3))
local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, unpack(ARGV, 3))
if type(ok) == 'table' and ok.err then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
end
return id
"""

# -- Lua: reading streams from a position -------------------------------------------

_POSITION = """
local function position(key)
  if redis.call('EXISTS', key) == 0 then return {'0-0', 0} end
  local info = redis.call('XINFO', 'STREAM', key)
  local last, added = '0-0', 0
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
  return {last, added}
end
"""

# KEYS[1] = a stream. {last id, entries ever added}: where a new reader starts.
TAIL = "return position(KEYS[1])"

# KEYS[1] = NAMES_KEY, KEYS[2] = EVENTS_KEY, KEYS[3] = WHERE_KEY. Who is online, in
# which room, and where the events stream is, at one instant: a reader resumes
# from there with nothing missed.
RESYNC = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3]), position(KEYS[2])}
"""

# KEYS[1] = a stream. ARGV: exclusive start id, count. The entries after it and,
# at the same instant, the first entry's id, entries ever added, and length:
# enough to tell whether entries after the start were trimmed unread.
# NOTE: Redis 7.0 leaves max-deleted-entry-id at 0-0 when MAXLEN trims (only
# XDEL sets it; measured), so trimming is counted from entries-added instead.
CATCH_UP = """
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local pos = position(KEYS[1])
return {entries, first[1] and first[1][1] or '0-0', pos[2], redis.call('XLEN', KEYS[1])}
"""

# Each script with the helpers it calls, by the name `RedisLink.run` takes.
_SCRIPTS = {
    "claim": _XADD + CLAIM,
    "move": _XADD + MOVE,
    "release": _XADD + RELEASE,
    "reconcile": _XADD + RECONCILE,
    "heartbeat": _XADD + _FREE_NAMES + HEARTBEAT,
    "leave": _XADD + _FREE_NAMES + LEAVE,
    "tail": _POSITION + TAIL,
    "resync": _POSITION + RESYNC,
    "catch_up": _POSITION + CATCH_UP,
    "append": APPEND,
}


class RedisLink:
    """The clients to one Redis, and what this server knows of it.

    `client` waits long enough for XREAD BLOCK and batched writes; `quick`
    serves the join path and the heartbeat, so a partition costs a join at
    most QUICK_TIMEOUT_S. Both are thread-safe pools (one per process, as
    redis-py advises). `reachable` is cleared by any failed call and set by
    any answer; while it is clear the join path skips Redis. `shared` is set
    by the cluster's heartbeat: other live servers use this Redis.
    """

    def __init__(self, url: str):
        self.url = url
        self.client = _connect(url, SLOW_TIMEOUT_S + FOLLOW_BLOCK_MS / 1000)
        self.quick = _connect(url, QUICK_TIMEOUT_S)
        self._reachable = threading.Event()  # thread-safe flag: no lock needed
        self._reachable.set()
        self.shared = False  # a plain bool, written by the heartbeat thread only
        self.scripts = {name: self.quick.register_script(lua) for name, lua in _SCRIPTS.items()}

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
        raise StoreUnavailable(f"cannot reach Redis at {url}: {error}") from error
    return client


def entry_fields(flat: list) -> dict:
    """A stream entry's fields from a Lua reply ([f1, v1, f2, v2, ...]) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=False))
