"""A resume holds one page of history at a time, and nothing once it is sent.

With thousands of long messages stored, every client that rejoins with an
old `last_seen_id` is sent all of them. The server reads them a page at a
time and keeps none after sending: memory while those clients stay online
is about what it was before they came.
"""

import gc

import pytest
from wire import Conn, join_event

from cluster.keys import STREAM_KEY
from cluster.store import RECENT_MAX, RedisStore
from store import HISTORY_PAGE, Message

pytestmark = pytest.mark.timeout(60)

STORED = 3_000  # messages in the stream
TEXT = "x" * 2_000  # each as long as a message may be
CLIENTS = 4  # resuming from the first id; together they are sent 24 MB of history


def test_resumed_clients_do_not_keep_their_replay(server_factory, redis_proc):
    """When clients resume over 6 MB of history each, the server keeps no replay after."""
    writer = RedisStore(redis_proc.url)  # stored before the server starts: history, not news
    pipe = writer.redis.client.pipeline(transaction=False)
    for n in range(STORED):
        pipe.xadd(STREAM_KEY, {"username": "old", "message": TEXT, "timestamp": n})
    pipe.execute()
    first = writer.redis.client.xrange(STREAM_KEY, count=1)[0][0]
    writer.close()
    server = server_factory(store=RedisStore(redis_proc.url))
    clients = [Conn(server.address, join_event(f"r{n}", first)) for n in range(CLIENTS)]
    for conn in clients:  # every replayed message read: the replays are over
        assert len(conn.messages(STORED - 1, timeout=30)) == STORED - 1
    assert len(server.servicer.hub.names()) == CLIENTS  # still online, replays over
    gc.collect()
    held = sum(isinstance(thing, Message) for thing in gc.get_objects())
    # At most what the store caches for joins during an outage, plus a page.
    assert held <= RECENT_MAX + HISTORY_PAGE, f"{held} messages held after {CLIENTS} replays"
    for conn in clients:
        conn.close()
