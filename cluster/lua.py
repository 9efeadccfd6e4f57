"""Every Lua script the Redis modules run: each change of who is where, and one message.

Each script runs atomically in Redis, so a name, its rooms and the event that
announces them (in `chat:events`) can never disagree, and a message of a
room other than the lobby is in the bus and in the room's history under
one id. cluster/keys.py registers them on its `RedisLink`; cluster/presence.py and
cluster/store.py run them by name (`link.run("claim", keys, args)`).

NOTE: the scripts touch keys they compute (`chat:server:<id>:alive`): fine
on one Redis, not on Redis Cluster (one Redis is the distributed engine here).
"""

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

# -- Lua: one message, written once ----------------------------------------------------

# KEYS[1] = the stream the servers follow (the lobby's, or the bus), KEYS[2] = the
# room's history stream (the same key for the lobby), KEYS[3] = this server's
# "written up to" key, KEYS[4] = RESTORING_KEY, KEYS[5] = LAST_PRESENCE_KEY, KEYS[6] (if
# the line has a key) = its sender's key's key. ARGV: maxlen, id ('*', or one it
# had or was given during an outage), seq, ttl s, key ttl s, the seq Redis last
# told this server it wrote, the seq of the line before this one in its batch,
# restoring ms, what the line is ('0' new; written again after Redis lost it: '1'
# if none of our clients saw it, '2' if they did, under the id given), then the
# entry's fields and values.
# In turn:
# - a seq at or below the one written last is a retry whose reply was lost: written
#   already, so nothing happens (false);
# - "written up to" below the seq we wrote last means Redis lost what we wrote after
#   it (restarted empty, FLUSHALL, an older copy): nothing is written, new lines of
#   every server wait RESTORING ms (so what we write again keeps its place), and the
#   number we have is returned;
# - the line before it in the batch was not written, or RESTORING lasts and this is
#   a new line: not written, -1 (our lines are written in order, or not at all);
# - a line whose key is held was sent before (on any server): nothing is written,
#   and {first id} is returned.
# Otherwise the followed stream makes the id (the one given, if the stream is not
# past it; else a fresh one, except for a '2', which is seen under its id or not
# at all: nothing is written, false), and for the bus (every non-lobby room's messages pass
# through it, so the id is above the room's last), the room's history gets the same
# id, the key (if any) is held for its ttl with the id, and the id is returned. (A
# history stream another tool wrote past gets a fresh id there.) The entry also
# gets `events`: the id of the last join, rooms or leave event, so a server shows
# the sender's join before the message (cluster/order.py).
WRITE = """
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[3]) <= last then return false end
if last < tonumber(ARGV[6]) then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[8])
  return last
end
if last < tonumber(ARGV[7]) then return -1 end
if ARGV[9] == '0' and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
if KEYS[6] then
  local first = redis.call('GET', KEYS[6])
  if first then
    redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
    return {first}
  end
end
local fields = {unpack(ARGV, 10)}
local presence = redis.call('GET', KEYS[5])
if presence then
  fields[#fields + 1] = 'events'
  fields[#fields + 1] = presence
end
local id = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[2], unpack(fields))
if type(id) == 'table' and id.err then  -- another server wrote past the id we had
  if ARGV[9] == '2' then
    redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
    return false
  end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
end
if KEYS[2] ~= KEYS[1] then
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id, unpack(fields))
  if type(ok) == 'table' and ok.err then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  end
end
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
if KEYS[6] then redis.call('SET', KEYS[6], id, 'EX', ARGV[5]) end
return id
"""

# -- Lua: a direct message taken once ---------------------------------------------

# KEYS[1] = the message's taken key (its sender's key, or its own token), KEYS[2] =
# EVENTS_KEY. ARGV: maxlen, the dm's entry id, max age ms, ttl s, this server, the
# sender's server, the dm's token. Run by the recipient's server. -1: too old (its
# sender was answered NOT_SENT already, so it must not arrive now); else the sender's
# server is told (a `dm_ack` event) and 1 means deliver it, 0 that it was delivered
# before (sent again after a lost echo).
TAKE_DM = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if now_ms - tonumber(string.match(ARGV[2], '^%d+')) > tonumber(ARGV[3]) then return -1 end
local first = redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*',
           'kind', 'dm_ack', 'server', ARGV[5], 'for', ARGV[6], 'token', ARGV[7])
if first then return 1 end
return 0
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
# which rooms, and where the events stream is, at one instant: a reader resumes
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
SCRIPTS = {
    "claim": _XADD + CLAIM,
    "rooms": _XADD + ROOMS,
    "release": _XADD + RELEASE,
    "reconcile": _XADD + RECONCILE,
    "heartbeat": _XADD + _FREE_NAMES + HEARTBEAT,
    "leave": _XADD + _FREE_NAMES + LEAVE,
    "tail": _POSITION + TAIL,
    "resync": _POSITION + RESYNC,
    "catch_up": _POSITION + CATCH_UP,
    "write": WRITE,
    "take_dm": TAKE_DM,
}
