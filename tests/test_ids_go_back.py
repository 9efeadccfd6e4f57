"""When the stream's ids go back (Redis emptied below an entry from the future), chat goes on."""

import time

import redis
from wire import join

from cluster.keys import STREAM_KEY

FUTURE_MS = 3_600_000  # an entry an hour ahead: the follower's position jumps there


def test_stream_emptied_below_a_future_entry_delivers_new_messages_at_once(
    server_process, redis_proc
):
    """When the stream is emptied after an entry from the future, new messages still come live."""
    server = server_process("--redis-url", redis_proc.url, "--no-rate-limit")
    alice = join(server.address, "alice")
    future_id = f"{int(time.time() * 1000) + FUTURE_MS}-0"
    with redis.Redis.from_url(redis_proc.url) as client:
        client.xadd(STREAM_KEY, {"username": "tool", "message": "from the future"}, id=future_id)
        assert alice.next_event("chat_message").chat_message.id == future_id
        client.flushall()
    alice.say("after the flush")
    got = alice.next_event("chat_message", timeout=10).chat_message
    assert got.message == "after the flush"
    alice.close()
