"""Every Lua script the Redis modules run: each change of who is where, and `SCRIPTS`.

Each script runs atomically in Redis, so a name, its rooms and the event that
announces them (in `chat:events`) can never disagree, and a message of a
room other than the lobby is in the bus and in the room's history under
one id. The scripts of messages (one written once, a direct message taken,
streams read) are in cluster/lua_messages.py. cluster/keys.py registers all
of them (`SCRIPTS`, below) on its `RedisLink`; cluster/presence.py and
cluster/store.py run them by name (`link.run("claim", keys, args)`).

NOTE: the scripts touch keys they compute (`chat:server:<id>:alive`): fine
on one Redis, not on Redis Cluster (one Redis is the distributed engine here).
"""

from cluster.lua_messages import CATCH_UP, POSITION, RESYNC, TAIL, TAKE_DM, WRITE

# -- Lua: names, rooms and presence ---------------------------------------------------
# KEYS[1] = NAMES_KEY, KEYS[2] = EVENTS_KEY, KEYS[3] = WHERE_KEY in each; events carry
# the server they come from and the rooms they are about. A user's rooms are one
# value, sorted and joined by commas ("go,lobby,rust"; "" for none): a set that
# changes whole, in the one script that logs the change. Each also carries `after`:
# the last ids of the two message streams (cluster/keys.py STREAM_KEY and BUS_KEY)
# at that instant, so a server shows a leave after the leaver's last message
# (cluster/order.py); and its id is kept as the last presence event's.

_XADD = """
local function last_id(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  return last[1] and last[1][1] or '0-0'
end
local function event(kind, name, server, room)
  local after = last_id('chat:messages') .. ' ' .. last_id('chat:bus')
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
                        'kind', kind, 'name', name, 'server', server, 'room', room, 'after', after)
  redis.call('SET', KEYS[2] .. ':presence', id)  -- cluster/keys.py LAST_PRESENCE_KEY
end
-- Names are unique by skeleton: sanitize.name_skeleton's table (names are ASCII).
local SKELETONS = KEYS[1] .. ':skeletons'  -- hash: skeleton -> the name holding it
local function skeleton(name)
  return (string.gsub(string.gsub(string.lower(name), '[il1|]', 'l'), '0', 'o'))
end
-- Another name, online, that `name` would pass for ("Alice" for alice), or nil.
local function look_alike(name)
  local owner = redis.call('HGET', SKELETONS, skeleton(name))
  if owner and owner ~= name and redis.call('HEXISTS', KEYS[1], owner) == 1 then
    return owner
  end
  return nil
end
local function forget(name, server)
  local room = redis.call('HGET', KEYS[3], name) or 'lobby'
  if redis.call('HGET', SKELETONS, skeleton(name)) == name then
    redis.call('HDEL', SKELETONS, skeleton(name))
  end
  redis.call('HDEL', KEYS[1], name)
  redis.call('HDEL', KEYS[3], name)
  event('left', name, server, room)
end
"""

# KEYS[4] = EPOCH_KEY, KEYS[5] = SETTLING_KEY. ARGV: maxlen, name, token, server, room,
# the epoch this server knows. 1 if the name is ours now, 0 if someone holds it or a
# name that looks the same (same skeleton), -1 if it cannot be decided now: Redis is
# not the one we knew (restarted empty: our heartbeat learns the new epoch), or the
# servers are still claiming again the names they held before it was emptied (SETTLING).
CLAIM = """
if redis.call('GET', KEYS[4]) ~= ARGV[6] or redis.call('EXISTS', KEYS[5]) == 1 then
  return -1
end
local held = redis.call('HGET', KEYS[1], ARGV[2])
if held == ARGV[3] then return 1 end
if held or look_alike(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
redis.call('HSET', SKELETONS, skeleton(ARGV[2]), ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
event('joined', ARGV[2], ARGV[4], ARGV[5])
return 1
"""

# ARGV: maxlen, name, token, server, rooms. 0 if this token does not hold the name;
# else 1, with a `rooms` event only if the rooms changed (so a retry is harmless).
ROOMS = """
if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then return 0 end
if redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[5] then return 1 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[5])
event('rooms', ARGV[2], ARGV[4], ARGV[5])
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

# ARGV: maxlen, server, first wins ('1' or '0'), then name, token, rooms triples. Per
# triple: 1 held, 2 claimed again (in those rooms), 0 taken. Rooms of held names are
# ROOMS's to change, not ours. With "first wins" (Redis was emptied: every server
# claims again what it held), a name held by a session that joined later than ours
# (the time ends each token) is taken back: the other server finds it lost and
# disconnects its session.
RECONCILE = """
local function joined_at(token)
  return tonumber(string.match(token, ':(%d+)$') or '0')
end
local out = {}
for i = 4, #ARGV, 3 do
  local held = redis.call('HGET', KEYS[1], ARGV[i])
  if held == ARGV[i + 1] then out[#out + 1] = 1
  else
    local rival, rival_name = held, ARGV[i]
    if not held then
      rival_name = look_alike(ARGV[i])
      rival = rival_name and redis.call('HGET', KEYS[1], rival_name)
    end
    if rival and not (ARGV[3] == '1' and joined_at(ARGV[i + 1]) < joined_at(rival)) then
      out[#out + 1] = 0
    else
      if rival and rival_name ~= ARGV[i] then forget(rival_name, ARGV[2]) end
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
      redis.call('HSET', SKELETONS, skeleton(ARGV[i]), ARGV[i])
      redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
      event('joined', ARGV[i], ARGV[2], ARGV[i + 2])
      out[#out + 1] = 2
    end
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

# KEYS[4] = SERVERS_KEY, KEYS[5] = EPOCH_KEY, KEYS[6] = SETTLING_KEY. ARGV: maxlen,
# server, alive prefix, alive suffix, ttl ms, a fresh epoch, the epoch we know ('' at
# start), settle ms. Says we are alive; reaps every server whose alive key expired
# (its names go, one `left` each, in this one script: exactly one survivor reaps
# it). A Redis without an epoch was emptied (or is new): it gets the fresh one, and
# if we knew another, claims wait SETTLING ms, while every server claims again
# what it held. Returns {live peers, {dead id, names freed, ...}, epoch}.
HEARTBEAT = """
local epoch = redis.call('GET', KEYS[5])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[5], epoch)
  if ARGV[7] ~= '' then redis.call('SET', KEYS[6], '1', 'PX', ARGV[8]) end
end
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
return {peers, reaped, epoch}
"""

# KEYS[4] = SERVERS_KEY. ARGV: maxlen, server, alive key. Leaves nothing of ours behind.
LEAVE = """
local freed = free_names(ARGV[2])
redis.call('DEL', ARGV[3])
redis.call('SREM', KEYS[4], ARGV[2])
return freed
"""

# Each script with the helpers it calls, by the name `RedisLink.run` takes.
SCRIPTS = {
    "claim": _XADD + CLAIM,
    "rooms": _XADD + ROOMS,
    "release": _XADD + RELEASE,
    "reconcile": _XADD + RECONCILE,
    "heartbeat": _XADD + _FREE_NAMES + HEARTBEAT,
    "leave": _XADD + _FREE_NAMES + LEAVE,
    "tail": POSITION + TAIL,
    "resync": POSITION + RESYNC,
    "catch_up": POSITION + CATCH_UP,
    "write": WRITE,
    "take_dm": TAKE_DM,
}
