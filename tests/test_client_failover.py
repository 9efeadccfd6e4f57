"""The client given several servers (`--address a,b`): one dies, it chats on through another."""

import signal

import pytest
from clients import RECONNECT_WITHIN_S
from wire import join


@pytest.mark.timeout(60)
def test_client_fails_over_to_the_next_server_and_misses_nothing(
    redis_proc, server_process, pipe_client
):
    """When alice's server is killed, she rejoins the next one and sees each message once."""
    redis = ("--redis-url", redis_proc.url)
    first, second = server_process(*redis), server_process(*redis)
    alice = pipe_client(f"{first.address},{second.address}", "alice")
    alice.expect("* alice joined the chat")
    bob = join(second.address, "bob")
    alice.send("one")
    alice.expect("[you] one")
    first.signal(signal.SIGKILL)
    alice.expect("* reconnecting...")
    bob.say("while you were away")
    alice.send("two")
    alice.expect("[you] two", timeout=RECONNECT_WITHIN_S)
    bob.say("welcome back")
    alice.expect("[bob] welcome back")
    assert alice.finish() == 0
    for text in ("[you] one", "[bob] while you were away", "[you] two", "[bob] welcome back"):
        assert sum(line.endswith(text) for line in alice.seen) == 1, (text, alice.seen)
    said = [m.message for m in bob.messages(4) if m.username == "alice"]
    assert said == ["one", "two"]
    bob.close()
