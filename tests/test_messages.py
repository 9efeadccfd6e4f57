"""Messages (PROTOCOL: Messages, Rate limit, Leave): who said it, cleaning, order, limits."""

import threading
import time

import grpc
from conftest import stored, wait_until
from wire import health, join

import chat_pb2 as pb
from store import id_key


def test_server_overrides_spoofed_username_and_timestamp(server):
    """When a client claims another name and a fake time, the server uses its own."""
    alice = join(server.address, "alice")
    alice.say("it was me", username="mallory", timestamp=42)
    message = alice.next_event("chat_message").chat_message
    assert message.username == "alice"
    assert abs(message.timestamp - time.time()) < 60
    assert message.id and not message.replay
    alice.close()


def test_messages_reach_everyone_sender_included_with_one_id(server):
    """When alice speaks, alice and bob receive the same message with the same id."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    alice.say("hello")
    mine, theirs = alice.messages(1)[0], bob.messages(1)[0]
    assert (mine.message, mine.id) == (theirs.message, theirs.id) == ("hello", mine.id)
    alice.close()
    bob.close()


def test_five_concurrent_senders_everyone_sees_one_order(server):
    """When five clients send 20 messages each at once, all see the same 100 in one order."""
    conns = [join(server.address, f"user{i}") for i in range(5)]
    for i, conn in enumerate(conns):  # everyone's join reached everyone
        for j in range(i + 1, 5):
            conn.next_event("user_event", where=lambda e, j=j: e.username == f"user{j}")
    start = threading.Barrier(5)

    def send(i, conn):
        start.wait(timeout=5)
        for n in range(20):
            conn.say(f"{i}:{n}")

    senders = [threading.Thread(target=send, args=(i, c)) for i, c in enumerate(conns)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(timeout=10)
    seen = [[(m.id, m.message) for m in conn.messages(100)] for conn in conns]
    assert all(s == seen[0] for s in seen)
    assert len({message for _, message in seen[0]}) == 100
    ids = [id_key(i) for i, _ in seen[0]]
    assert ids == sorted(ids) and len(set(ids)) == 100
    assert [i for i, _ in seen[0]] == sorted(i for i, _ in seen[0])  # as strings too
    for conn in conns:
        conn.close()


def test_control_characters_are_stripped_before_fan_out(server):
    """When a message carries escapes, newlines or bidi overrides, others get clean text."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    alice.say("\x1b[31mred\x1b[0m\nline\u202eevil\u200b\x07")
    assert bob.messages(1)[0].message == "[31mred[0m lineevil"
    alice.close()
    bob.close()


def test_empty_overlong_and_control_only_messages_are_refused_and_not_stored(server_factory):
    """When a message is empty or too long, only the sender is told; nothing is kept."""
    server = server_factory(max_message_chars=10)
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    for bad in ["", "   ", "\x1b\x07\u200b", "x" * 11]:
        alice.say(bad)
        notice = alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
        assert notice.system_event.message
    alice.say("x" * 10)  # exactly at the limit is fine
    assert alice.messages(1)[0].message == "x" * 10
    assert [m.message for m in bob.messages(1)] == ["x" * 10]
    assert [m.text for m in stored(server.servicer.hub.store)] == ["x" * 10]
    alice.close()
    bob.close()


def test_rate_limited_message_is_refused_with_retry_time_and_not_stored(server_factory):
    """When a client sends past its burst, the extra is dropped; it is told when to retry."""
    server = server_factory(rate=0.5, burst=2)
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    for n in range(3):
        alice.say(f"m{n}")
    notice = alice.next_event("system_event", where=lambda e: e.code == pb.RATE_LIMITED)
    assert "retry in" in notice.system_event.message and " s" in notice.system_event.message
    assert [m.message for m in bob.messages(2)] == ["m0", "m1"]
    assert [m.text for m in stored(server.servicer.hub.store)] == ["m0", "m1"]
    alice.close()
    bob.close()


def test_rate_limit_is_per_client(server_factory):
    """When alice is rate limited, bob still gets through."""
    server = server_factory(rate=0.5, burst=1)
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    alice.say("a1")
    alice.say("a2")
    alice.next_event("system_event", where=lambda e: e.code == pb.RATE_LIMITED)
    bob.say("b1")
    assert [m.message for m in bob.messages(2)] == ["a1", "b1"]
    alice.close()
    bob.close()


def test_events_after_join_that_make_no_sense_get_invalid_event(server):
    """When a joined client sends a second join or an empty event, it is told and stays."""
    alice = join(server.address, "alice")
    alice.send(pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username="bob")))
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    alice.send(pb.ClientEvent())
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    alice.say("still here")
    assert alice.messages(1)[0].message == "still here"
    assert server.servicer.hub.names() == ["alice"]
    alice.close()


def test_closed_channel_sends_user_left_and_frees_everything(server):
    """When a client's channel closes, the rest get USER_LEFT and its threads end."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    bob.channel.close()
    left = alice.next_event("user_event", where=lambda e: e.type == pb.USER_LEFT)
    assert left.user_event.username == "bob"
    assert wait_until(lambda: health(server.address).active_clients == 1)
    assert wait_until(lambda: not [t for t in threading.enumerate() if t.name == "reader-bob"])
    alice.close()
    assert wait_until(lambda: health(server.address).active_clients == 0)


def test_half_close_delivers_what_was_queued_then_ok(server):
    """When a client half-closes, it still gets its queued events, then the call ends OK."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    alice.say("last words")
    alice.half_close()
    assert alice.messages(1)[0].message == "last words"
    assert alice.wait_end() == grpc.StatusCode.OK
    bob.next_event("user_event", where=lambda e: e.type == pb.USER_LEFT and e.username == "alice")
    bob.close()


def test_health_check_reports_serving_clients_and_uptime(server):
    """When asked, HealthCheck says SERVING, the joined clients and a sane uptime."""
    alice = join(server.address, "alice")
    reply = health(server.address)
    assert (reply.status, reply.active_clients) == ("SERVING", 1)
    assert 0 <= reply.uptime_seconds < 60
    alice.close()
