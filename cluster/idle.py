"""Idle rooms removed from Redis: no member and no message for --room-idle-days.

Every room but the lobby has a history stream (`chat:room:<name>`), and
anyone may open a room, so without this Redis would keep every room ever
opened, for good. A room is idle when it has had no member and no message
for `--room-idle-days` (default 7); then its stream is deleted, history
and all. A later join opens it again, empty.

How it is decided: a periodic sweep, not a TTL. A TTL refreshed by each
message would also expire a room whose members stay for a week without a
word; clearing it while members are present would need every server to
agree on "the last one left". The sweep asks what every server already
knows, who is in which room (the hub knows the other servers' users too):

1. Every `sweep_s` (an hour; less when the idle time is short), each
   server marks the rooms that have members now, in the hash
   `chat:rooms:active` (room -> Redis time, ms).
2. It then looks at every room's stream (SCAN) and every marked room, and
   one Lua script removes those with no member here, whose newest message
   is older than the idle time and whose last mark is older than the idle
   time plus one sweep (a member may have stayed until just before the
   next sweep would have marked the room).

Servers sweep independently: removing a room twice is harmless, and the
script reads and deletes at one instant, so a message written meanwhile
keeps its room. Thread: *idle-rooms*, one per server, stopped by `close`.
"""

import logging
import threading

import redis

from cluster.keys import ROOM_PREFIX, ROOMS_ACTIVE_KEY, RedisLink
from sanitize import LOBBY, room_name

log = logging.getLogger(__name__)

SWEEP_S = 3600.0  # how often idle rooms are looked for (at most)
SWEEP_FRACTION = 4  # ... and at least 4 times per idle time (short ones: tests, labs)
BATCH_ROOMS = 100  # rooms judged per script call

# KEYS[1] = ROOMS_ACTIVE_KEY, KEYS[2..] = room streams. ARGV: idle ms, marks' idle ms,
# room prefix, how many of the rooms are occupied (they come first: marked, kept).
# Returns the number of rooms removed.
SWEEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle, marks_idle, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local occupied, removed = tonumber(ARGV[4]), 0
for i = 2, #KEYS do
  local room = string.sub(KEYS[i], #prefix + 1)
  if i - 1 <= occupied then
    redis.call('HSET', KEYS[1], room, now)
  else
    local mark = tonumber(redis.call('HGET', KEYS[1], room) or '0')
    local newest = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
    local said = 0
    if newest[1] then said = tonumber(string.match(newest[1][1], '^(%d+)')) end
    if (mark > 0 or said > 0) and now - said > idle and now - mark > marks_idle then
      redis.call('DEL', KEYS[i])
      redis.call('HDEL', KEYS[1], room)
      removed = removed + 1
    end
  end
end
return removed
"""


class IdleRooms:
    """The *idle-rooms* thread of one server: see the module docstring."""

    def __init__(self, link: RedisLink, occupied_rooms, idle_s: float):
        self._link = link
        self._occupied_rooms = occupied_rooms  # () -> {room: members}: hub.rooms
        self._idle_ms = int(idle_s * 1000)
        self._sweep_s = min(SWEEP_S, idle_s / SWEEP_FRACTION)
        self._script = link.quick.register_script(SWEEP)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-rooms", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self._sweep_s):
            try:
                removed = self.sweep()
            except redis.RedisError as error:
                log.debug("idle rooms not swept this time: %s", error)
                continue
            if removed:
                log.info("removed %d idle rooms with their history", removed)

    def sweep(self) -> int:
        """Mark the occupied rooms, remove the idle ones; how many were removed."""
        occupied = sorted(r for r, n in self._occupied_rooms().items() if n and r != LOBBY)
        client = self._link.client
        rooms = {key.removeprefix(ROOM_PREFIX) for key in client.scan_iter(f"{ROOM_PREFIX}*")}
        rooms |= set(client.hkeys(ROOMS_ACTIVE_KEY))
        rooms = {room for room in rooms if room_name(room) == room}  # not another tool's key
        others = sorted(rooms - set(occupied) - {LOBBY})
        marks_idle_ms = self._idle_ms + int(self._sweep_s * 1000)
        removed = 0
        for first in range(0, max(len(occupied), len(others)), BATCH_ROOMS):
            mine, theirs = (
                occupied[first : first + BATCH_ROOMS],
                others[first : first + BATCH_ROOMS],
            )
            keys = [ROOMS_ACTIVE_KEY, *(ROOM_PREFIX + room for room in [*mine, *theirs])]
            args = [self._idle_ms, marks_idle_ms, ROOM_PREFIX, len(mine)]
            removed += int(self._script(keys=keys, args=args, client=self._link.quick))
        return removed
