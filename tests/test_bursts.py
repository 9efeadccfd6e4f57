"""Bursts the server did not cause are paced: a client that keeps reading is never evicted.

A dead server's users all leave at once; another tool writes a big batch to
the stream. Each would put more events into every queue than it holds
(1024) faster than a reading client can take them.
"""

import redis
from wire import join

import chat_pb2 as pb
from cluster.keys import EVENTS_KEY, NAMES_KEY, SERVERS_KEY, STREAM_KEY, WHERE_KEY, alive_key

BURST = 2_000  # events at once: about twice a client's queue
DEAD = "deadserver01"  # a server that "held" the burst's users, alive for a moment
REAPED_S = 20.0  # its alive key lasts 2 s; a heartbeat (every 2 s) reaps it


def test_a_dead_servers_many_users_leaving_do_not_evict_a_reading_client(
    server_process, redis_proc
):
    """When a server holding 2,000 users dies, a reading client sees each join and leave, stays."""
    server = server_process("--redis-url", redis_proc.url)
    server.watch_log()  # read as it comes: a full pipe would stop the server
    carol = join(server.address, "carol")
    names = [f"user{i:04d}" for i in range(BURST)]
    with redis.Redis.from_url(redis_proc.url) as client:
        pipe = client.pipeline(transaction=False)
        for name in names:  # what BURST claims on one server leave behind in Redis
            pipe.hset(NAMES_KEY, name, f"{DEAD}:x:0")
            pipe.hset(WHERE_KEY, name, "lobby")
            pipe.xadd(EVENTS_KEY, {"kind": "joined", "name": name, "server": DEAD, "room": "lobby"})
        pipe.sadd(SERVERS_KEY, DEAD)
        pipe.set(alive_key(DEAD), "1", px=2000)  # then it "dies": reaped, every user leaves
        pipe.execute()
    counts = {pb.USER_JOINED: 0, pb.USER_LEFT: 0}
    while counts[pb.USER_LEFT] < BURST:
        event = carol.next_event("user_event", timeout=REAPED_S).user_event
        counts[event.type] += 1
    assert counts == {pb.USER_JOINED: BURST, pb.USER_LEFT: BURST}
    assert not carol.ended.is_set()
    carol.close()


def test_another_tools_big_batch_does_not_evict_a_reading_client(server_process, redis_proc):
    """When another tool writes 2,000 entries at once, a reading client gets them all, stays."""
    server = server_process("--redis-url", redis_proc.url)
    server.watch_log()  # read as it comes: a full pipe would stop the server
    carol = join(server.address, "carol")
    with redis.Redis.from_url(redis_proc.url) as client:
        pipe = client.pipeline(transaction=False)
        for i in range(BURST):
            pipe.xadd(STREAM_KEY, {"username": "tool", "message": f"line {i}", "timestamp": 1})
        pipe.execute()
    got = [carol.next_event("chat_message", timeout=30).chat_message.message for _ in range(BURST)]
    assert got == [f"line {i}" for i in range(BURST)]
    assert not carol.ended.is_set()
    carol.close()
