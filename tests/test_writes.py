"""A message is written to Redis once, even when the writer must send it twice.

When Redis takes an XADD but its reply is lost (a reset connection, Redis
killed right after its fsync), the writer cannot know and sends the batch
again. The write script (cluster.lua_messages.WRITE) remembers the last seq each server
wrote, so the second copy is a no-op: history never holds a message twice.
"""

import pytest

from cluster.entries import Pending
from cluster.keys import BUS_KEY, STREAM_KEY, history_key
from cluster.store import RedisStore

pytestmark = pytest.mark.timeout(30)


def entries(store: RedisStore, key: str) -> list[str]:
    return [fields["message"] for _, fields in store.redis.client.xrange(key)]


def test_a_batch_sent_twice_is_written_once(redis_proc):
    """When the same batch is written twice (a lost reply), each stream holds it once."""
    store = RedisStore(redis_proc.url)
    batch = [
        Pending(1, "alice", "in the lobby", 0),
        Pending(2, "alice", "in rust", 0, room="rust"),
        Pending(3, "bob", "waves", 0, action=True),
    ]
    store._write(batch)
    store._write(batch)  # the reply to the first was lost
    store._write(batch[2:])  # or only the tail of it
    assert entries(store, STREAM_KEY) == ["in the lobby", "waves"]
    assert entries(store, BUS_KEY) == ["in rust"]
    assert entries(store, history_key("rust")) == ["in rust"]
    store._write([Pending(4, "alice", "later", 0)])  # the next seq is written as usual
    assert entries(store, STREAM_KEY)[-1] == "later"
    store.close()
