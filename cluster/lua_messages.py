"""The Lua scripts of messages: one written once, a direct message taken once, streams read.

Part of cluster/lua.py's `SCRIPTS` (kept in this file so each reads in one
sitting): cluster/writer.py runs WRITE, cluster/events.py TAKE_DM, and
cluster/follow.py the reading scripts, by name, through `RedisLink.run`.
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

# A helper the reading scripts begin with: a stream's {last id, entries ever added}.
POSITION = """
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
