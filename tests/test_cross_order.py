"""Across servers, a join comes before the joiner's first message and a leave after the last.

Messages and presence events travel on two streams, each read by its own
thread on every server. Each test holds one of those threads on the
receiving server, at the moment that used to let the other overtake it, and
checks what a client there sees.
"""

import threading

import pytest
from wire import enter_event, join

import chat_pb2 as pb
from cluster.keys import EVENTS_KEY
from cluster.presence import Cluster
from cluster.store import RedisStore
from server import create_server
from session import Settings

pytestmark = pytest.mark.timeout(60)

HELD_S = 10.0  # the longest a test holds a follower


@pytest.fixture
def servers(redis_proc):
    """A function that starts one more in-process server on the test's Redis."""
    built = []

    def start():
        store = RedisStore(redis_proc.url)
        cluster = Cluster(store.redis, store.server_id, store.progress)
        server = create_server(Settings(rate=None), store, "127.0.0.1:0", cluster=cluster)
        server.start()
        server.address, server.store = f"127.0.0.1:{server.port}", store
        built.append(server)
        return server

    yield start
    for server in built:
        server.stop(grace_s=0.5)


def waits_on(store: RedisStore, streams) -> threading.Event:
    """Set when a follower of `store`'s server waits for one of `streams` to be handed on."""
    entered, wait = threading.Event(), store.progress.wait

    def spy(stream, entry_id, *args):
        if stream in streams:
            entered.set()
        return wait(stream, entry_id, *args)

    store.progress.wait = spy
    return entered


def hold(store: RedisStore, text: str) -> threading.Event:
    """Hold `store`'s message reader on the message `text` until the event returned is set."""
    release, deliver = threading.Event(), store._deliver

    def held(messages):
        if any(m.text == text for m in messages):
            release.wait(HELD_S)
        deliver(messages)

    store._deliver = held
    return release


def next_of(conn, name: str):
    """The next message or user event about `name`."""
    return conn.next_event(
        where=lambda e: (
            e.WhichOneof("event") in ("chat_message", "user_event")
            and (e.chat_message.username or e.user_event.username) == name
        )
    )


def test_a_leave_is_shown_after_the_leavers_last_message(servers):
    """When bob says bye and leaves on one server while the other's message reader is held,
    alice there sees his bye, then his leave."""
    a, b = servers(), servers()
    alice = join(b.address, "alice")
    bob = join(a.address, "bob")
    alice.next_event("user_event", where=lambda e: e.username == "bob")
    release = hold(b.store, "bye")
    entered = waits_on(b.store, {"chat:messages", "chat:bus"})
    bob.say("bye")
    assert [m.message for m in bob.messages(1)] == ["bye"]
    bob.close()
    entered.wait(HELD_S)  # b's event reader waits for the message reader
    release.set()
    first, second = next_of(alice, "bob"), next_of(alice, "bob")
    assert first.chat_message.message == "bye"
    assert second.user_event.type == pb.USER_LEFT
    alice.close()


def test_a_join_is_shown_before_the_joiners_first_message(servers):
    """When bob joins and talks on one server while the other's event reader is held,
    alice there sees him join, then his message."""
    a, b = servers(), servers()
    alice = join(b.address, "alice")
    release, remote_event = threading.Event(), b.servicer.hub.remote_event

    def held(kind, name, *args, **kwargs):
        if (kind, name) == ("joined", "bob"):
            release.wait(HELD_S)
        return remote_event(kind, name, *args, **kwargs)

    b.servicer.hub.remote_event = held
    entered = waits_on(b.store, {EVENTS_KEY})
    bob = join(a.address, "bob")
    bob.say("hi")
    assert [m.message for m in bob.messages(1)] == ["hi"]
    entered.wait(HELD_S)  # b's message reader waits for the event reader
    release.set()
    first, second = next_of(alice, "bob"), next_of(alice, "bob")
    assert first.user_event.type == pb.USER_JOINED
    assert second.chat_message.message == "hi"
    bob.close()
    alice.close()


def test_a_leave_waiting_for_one_room_never_stalls_on_another(servers, caplog):
    """When bob's leave waits for his last message in #rust while a lobby message written
    after the leave waits for the leave, the server hands #rust on first: no reader waits
    out its limit, and alice sees bob's words, his leave, then the lobby message."""
    a, b = servers(), servers()
    alice = join(b.address, "alice")
    alice.send(enter_event("rust"))
    alice.next_event("user_event", where=lambda e: e.username == "alice" and e.room == "rust")
    bob, carol = join(a.address, "bob"), join(a.address, "carol")
    bob.send(enter_event("rust"))
    alice.next_event("user_event", where=lambda e: e.username == "bob" and e.room == "rust")
    carol.send(enter_event("go"))
    carol.next_event("user_event", where=lambda e: e.username == "carol" and e.room == "go")
    release = hold(b.store, "g")
    entered = waits_on(b.store, {"chat:bus"})
    carol.say("g", room="go")  # b's message reader holds this one
    carol.messages(1)
    bob.say("bye from rust", room="rust")
    bob.messages(1)
    bob.close()  # his leave names "bye from rust"
    entered.wait(HELD_S)  # b's event reader waits for it
    carol.say("y")  # names the leave: b reads it with "bye from rust" in one go
    carol.messages(1)
    release.set()
    seen = [next_of(alice, name) for name in ("bob", "bob", "carol")]
    assert seen[0].chat_message.message == "bye from rust"
    assert seen[1].user_event.type == pb.USER_LEFT
    assert seen[2].chat_message.message == "y"
    assert "behind" not in caplog.text


def test_a_stopped_follower_is_not_waited_for(servers):
    """When a server's event reader has stopped (it is shutting down), another server's
    message reaches its clients at once: nothing waits for the stopped reader."""
    a, b = servers(), servers()
    alice = join(b.address, "alice")
    bob = join(a.address, "bob")
    alice.next_event("user_event", where=lambda e: e.username == "bob")
    b.servicer.hub.cluster._follower.stop(timeout=5)
    carol = join(a.address, "carol")  # an event b never reads: bob's message names it
    bob.say("still here")
    assert [m.message for m in bob.messages(1)] == ["still here"]
    assert alice.messages(1, timeout=1.0)[0].message == "still here"  # not ORDER_WAIT_S
    carol.close()
    bob.close()
    alice.close()
