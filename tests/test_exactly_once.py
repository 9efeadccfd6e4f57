"""A line sent again with its key (its echo was lost) is taken once, on one server or several.

Room messages and direct messages, whatever `--history` is; in memory and
through a shared Redis. A client that sets no key is treated as before.
"""

import signal
import time

import pytest
import redis
from wire import join

import chat_pb2 as pb
from cluster.keys import STREAM_KEY

KEY = "0123456789abcdef0123456789abcdef"
DM_ANSWER_S = 10.0  # a direct message is answered within its wait for the recipient's server
REAPED_S = 20.0  # a dead server's users are gone within about 15 s


def test_line_sent_again_with_its_key_is_delivered_once_and_echoed_with_its_first_id(
    server_factory,
):
    """When a line comes twice with one key (history 0), bob gets it once, alice one id twice."""
    server = server_factory(history=0)
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    alice.say("hello", key=KEY)
    first = alice.next_event("chat_message").chat_message
    alice.say("hello", key=KEY)
    again = alice.next_event("chat_message").chat_message
    assert (again.id, again.message, again.key) == (first.id, "hello", KEY)
    alice.say("after")  # no key: taken as before
    bob_got = bob.messages(2)
    assert [(m.id, m.message) for m in bob_got] == [(first.id, "hello"), (bob_got[1].id, "after")]
    assert len(server.servicer.hub.store._rooms["lobby"]) == 2  # stored once
    alice.close()
    bob.close()


def test_lines_without_a_key_are_each_delivered(server_factory):
    """When a client sets no key, two equal lines are two messages (the original contract)."""
    server = server_factory()
    alice = join(server.address, "alice")
    alice.say("same")
    alice.say("same")
    ids = [m.id for m in alice.messages(2)]
    assert ids[0] != ids[1]
    alice.close()


def test_direct_message_sent_again_with_its_key_reaches_its_recipient_once(server_factory):
    """When alice sends a direct message twice with one key, bob gets it once, alice two echoes."""
    server = server_factory()
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    for _ in range(2):
        alice.say("psst", to="bob", key=KEY)
        echo = alice.next_event("chat_message").chat_message
        assert (echo.to, echo.message) == ("bob", "psst")
    alice.say("done", to="bob")
    got = bob.messages(2)
    assert [m.message for m in got] == ["psst", "done"]
    alice.close()
    bob.close()


@pytest.mark.parametrize("history", ["0", "50"])
def test_line_sent_again_on_another_server_is_stored_and_delivered_once(
    server_process, redis_proc, history
):
    """When a line is sent again with its key on another server sharing Redis, it is taken once."""
    servers = [
        server_process("--redis-url", redis_proc.url, "--no-rate-limit", "--history", history)
        for _ in range(2)
    ]
    bob = join(servers[1].address, "bob")
    alice = join(servers[0].address, "alice")
    alice.say("only once", key=KEY)
    first = alice.next_event("chat_message").chat_message
    assert bob.next_event("chat_message").chat_message.id == first.id
    alice.close()  # her echo "was lost": she reconnects to the other server and sends again
    bob.next_event("user_event", where=lambda e: e.username == "alice" and e.type == pb.USER_LEFT)
    bob.drain()
    alice = join(servers[1].address, "alice")
    alice.drain()
    alice.say("only once", key=KEY)
    again = alice.next_event("chat_message", where=lambda m: not m.replay).chat_message
    assert (again.id, again.key) == (first.id, KEY)
    alice.say("next", key="another")
    # bob's events in order: "next" came, and no "only once" before it
    bob_got = [bob.next_event("chat_message").chat_message.message]
    assert bob_got == ["next"]
    with redis.Redis.from_url(redis_proc.url, decode_responses=True) as client:
        texts = [fields["message"] for _, fields in client.xrange(STREAM_KEY)]
    assert texts == ["only once", "next"]
    alice.close()
    bob.close()


def test_direct_message_sent_again_on_another_server_reaches_its_recipient_once(
    server_process, redis_proc
):
    """When a direct message is sent again with its key from another server, bob gets it once."""
    a, b = (server_process("--redis-url", redis_proc.url, "--no-rate-limit") for _ in range(2))
    bob = join(b.address, "bob")
    seen = []  # bob's events
    for server in (a, b, a):  # bob on B; alice on A, then on B (bob's), then on A again
        alice = join(server.address, "alice")
        alice.say("psst", to="bob", key=KEY)
        echo = alice.next_event("chat_message").chat_message
        assert (echo.to, echo.message, echo.key) == ("bob", "psst", KEY)
        alice.close()
        bob.next_event(where=lambda e: seen.append(e) or e.user_event.type == pb.USER_LEFT)
    alice = join(a.address, "alice")
    alice.say("next", to="bob")
    bob.next_event(where=lambda e: seen.append(e) or e.chat_message.message == "next")
    got = [e.chat_message.message for e in seen if e.WhichOneof("event") == "chat_message"]
    assert got == ["psst", "next"]
    alice.close()
    bob.close()


def test_direct_message_to_a_frozen_server_is_not_sent_then_delivered_once_when_sent_again(
    server_process, redis_proc
):
    """When bob's server is frozen, a DM is NOT_SENT, never echoed; sent again, it arrives once."""
    a, b = (server_process("--redis-url", redis_proc.url, "--no-rate-limit") for _ in range(2))
    bob = join(b.address, "bob")
    alice = join(a.address, "alice")
    alice.next_event("system_event")  # who is online
    b.signal(signal.SIGSTOP)
    try:
        alice.say("psst", to="bob", key=KEY)
        event = alice.next_event(
            timeout=DM_ANSWER_S, where=lambda e: e.WhichOneof("event") != "user_event"
        )
        assert event.WhichOneof("event") == "system_event", event
        assert event.system_event.code == pb.NOT_SENT
    finally:
        b.signal(signal.SIGCONT)
    alice.say("psst", to="bob", key=KEY)  # what a client does after NOT_SENT
    echo = alice.next_event("chat_message", timeout=DM_ANSWER_S).chat_message
    assert (echo.to, echo.key) == ("bob", KEY)
    alice.say("after", to="bob")
    alice.next_event("chat_message", timeout=DM_ANSWER_S)
    got = [bob.next_event("chat_message").chat_message.message for _ in range(2)]
    assert got == ["psst", "after"]
    alice.close()
    bob.close()


def test_direct_message_to_a_killed_server_is_never_echoed_and_soon_not_online(
    server_process, redis_proc
):
    """When bob's server is killed, a DM to him is NOT_SENT, then NOT_ONLINE once it is reaped."""
    a, b = (server_process("--redis-url", redis_proc.url, "--no-rate-limit") for _ in range(2))
    join(b.address, "bob")
    alice = join(a.address, "alice")
    alice.next_event("system_event")  # who is online
    b.proc.kill()
    codes = []
    deadline = time.monotonic() + REAPED_S
    while pb.NOT_ONLINE not in codes and time.monotonic() < deadline:
        alice.say("psst", to="bob", key=KEY)
        event = alice.next_event(
            timeout=DM_ANSWER_S, where=lambda e: e.WhichOneof("event") != "user_event"
        )
        assert event.WhichOneof("event") == "system_event", event  # never an echo
        codes.append(event.system_event.code)
    assert set(codes) <= {pb.NOT_SENT, pb.NOT_ONLINE} and codes[-1] == pb.NOT_ONLINE, codes
    alice.close()
