"""Several servers, one chat: the machinery on Redis. Skip it on a first reading.

One `server.py` keeps everything in memory and is the whole lesson. With
`--redis-url`, several servers (or `--processes N`) share one Redis and
behave as one chat server: messages travel through Redis Streams, and
who is online, and where, is shared through Lua scripts and an events
stream. Only the modules in this folder import `redis`.

Read in this order:

1. `keys.py`: the vocabulary, every Redis key, and the `RedisLink` that
   all of them share (one client per process, whether Redis is up).
2. `store.py`: `RedisStore`, the history store behind the same interface
   as store.py's `MemoryStore`; the stream is also the message bus.
   Its writer thread is in `writer.py`, what its follower reads back in
   `reading.py`. Its helpers: `entries.py` (an
   entry read back, whoever wrote it),
   `history.py` (a room's history in pages), `follow.py` (the thread that
   reads streams in order and never dies), `order.py` (a join before the
   joiner's first message, a leave after the last, though they travel on
   two streams).
3. `presence.py`: `Cluster`, names and rooms shared between servers;
   `events.py` is its other half (joins, leaves, typing and direct
   messages of the other servers' users); `liveness.py` its heartbeat
   (alive, reaping the dead, names claimed again after a fault).
4. `lua.py`: every script that changes Redis, each atomically; those of
   messages (written once, direct messages taken, streams read) are in
   `lua_messages.py`.
5. `remote.py`: the other servers as the hub sees them (`Alone` for one
   server, or their users).
6. `idle.py`: rooms with no member and no message for `--room-idle-days`,
   removed with their history; `guesses.py`: failed sign-ins counted in
   Redis for every process and server (access/auth.py's `GuessCounter`).

Where it plugs into the core, and nowhere else:

- the launcher (launch.py, `open_store`) builds a `RedisStore` and a
  `Cluster` when the flags name a Redis, and hands them to the server;
  it also starts `IdleRooms` and gives the sign-in guard `SharedGuesses`;
- the hub (hub.py) talks to the other servers through one interface,
  `cluster.remote.Alone`, whose methods `Cluster` implements. Without
  Redis the hub holds an `Alone` and the single-server path has no
  `if redis:` in it.

Nothing here imports the servicer, the session or the hub: they call in,
and the cluster calls the hub back only through the object it was given.
"""
