"""Several rooms at once across servers on one Redis, exactly as on one server.

Each test runs real `python server.py` processes on a private redis-server;
a server learns of another's users through the events stream, so a test
first waits until every server lists the same users (`settled`).
"""

import pytest
from test_rooms_cluster import cluster, settled, user  # noqa: F401 (a fixture)
from test_rooms_many import chat_of, enter, resumes_each_room_after_its_own_id
from wire import join, part_event

import chat_pb2 as pb

pytestmark = pytest.mark.timeout(90)


def test_a_member_of_two_rooms_on_another_server_gets_each_message_once(cluster):  # noqa: F811
    """When alice on A is in lobby and #rust, and bob on B in both too, each message of
    either room reaches each once with its room; typing shows in its room; bob leaving
    #rust is seen in #rust only; his stream's end leaves lobby."""
    a, b = cluster(), cluster()
    alice, bob = join(a.address, "alice"), join(b.address, "bob")
    enter(alice, "alice", "rust")
    enter(bob, "bob", "rust")
    assert settled((a, b), [("alice", "lobby,rust"), ("bob", "lobby,rust")])
    bob.typing(pb.TYPING_START, room="rust")
    typing = alice.next_event("typing_event").typing_event
    assert (typing.username, typing.type, typing.room) == ("bob", pb.TYPING_START, "rust")
    sent = [("rust", "a"), ("lobby", "b"), ("rust", "c"), ("lobby", "d")]
    for room, text in sent:
        bob.say(text, room=room)
    for conn in (alice, bob):
        got = [(m.room, m.message) for m in conn.messages(len(sent), timeout=10)]
        assert sorted(got) == sorted(sent)
        assert [t for r, t in got if r == "rust"] == ["a", "c"]  # one order per room
    bob.send(part_event("rust"))
    alice.next_event("user_event", where=user(pb.USER_LEFT, "bob", "rust"))
    assert settled((a, b), [("alice", "lobby,rust"), ("bob", "lobby")])
    bob.close()
    alice.next_event("user_event", where=user(pb.USER_LEFT, "bob", "lobby"))
    alice.say("alone", room="rust")
    rest = [alice.next_event("chat_message")]
    rest += alice.drain()
    assert chat_of(rest) == [("rust", "alone", False)]  # nothing doubled before it
    assert [e for e in rest if e.WhichOneof("event") == "user_event"] == []
    alice.close()


def test_resume_of_two_rooms_on_another_server_misses_and_doubles_nothing(cluster):  # noqa: F811
    """When alice, in lobby and #rust on A, comes back on B with each room's last id, she
    gets exactly what each room said meanwhile, as history, then both rooms live."""
    a, b = cluster(), cluster()
    lo, ru = join(a.address, "lo"), join(b.address, "ru", room="rust")
    alice = join(a.address, "alice")
    enter(alice, "alice", "rust")
    for n in range(3):
        lo.say(f"lobby {n}")
        ru.say(f"rust {n}")
    seen = alice.messages(6, timeout=10)
    last = {room: [m.id for m in seen if m.room == room][-1] for room in ("lobby", "rust")}
    alice.close()
    assert settled((a, b), [("lo", "lobby"), ("ru", "rust")])
    for n in range(3, 6):
        ru.say(f"rust {n}")
        lo.say(f"lobby {n}")
    lo.messages(6, timeout=10)
    ru.messages(6, timeout=10)
    resumes_each_room_after_its_own_id(b.address, last, lo, ru)
