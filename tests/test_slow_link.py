"""A slow Redis link (round trips over a second) is slow, not dead: no one is reaped for it."""

import time

from proxy import Proxy
from wire import join

import chat_pb2 as pb

ROUND_TRIP_S = 1.5  # each way 0.75 s: every Redis call of the slow server takes this longer
REAPED_AFTER_S = 13.0  # a server that could not beat would be reaped by now (alive key: 10 s)


def test_server_on_a_slow_redis_link_is_not_reaped_and_warns(server_process, redis_proc):
    """When a server's Redis round trips take 1.5 s, its users stay online and its log warns."""
    proxy = Proxy(redis_proc.port)
    try:
        slow = server_process("--redis-url", f"redis://127.0.0.1:{proxy.port}/0")
        slow.watch_log()
        fast = server_process("--redis-url", redis_proc.url)
        alice = join(slow.address, "alice")
        bob = join(fast.address, "bob")
        bob.next_event("system_event")  # who is online: alice, bob
        proxy.slow(ROUND_TRIP_S)
        slowed_at = time.monotonic()
        assert slow.wait_for_log("Redis is slow", timeout=10)
        # Nothing to wait for: the rule is that nothing happens.
        time.sleep(max(0.0, slowed_at + REAPED_AFTER_S - time.monotonic()))
        left = [e for e in bob.drain() if e.WhichOneof("event") == "user_event"]
        assert not [e for e in left if e.user_event.type == pb.USER_LEFT], left
        alice.say("slowly")
        assert bob.next_event("chat_message", timeout=15).chat_message.message == "slowly"
        alice.close()
        bob.close()
    finally:
        proxy.close()
