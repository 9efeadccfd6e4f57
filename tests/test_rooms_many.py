"""Several rooms at once, on one server: joining more, leaving one, saying into one.

A stream is in a set of rooms: a later USER_JOINED adds one, a USER_LEFT
leaves one, each message and typing event names its room, and each event
of a room reaches each of its members once, whatever else they share.
"""

import grpc
import pytest
from conftest import stored
from wire import EVENT_TIMEOUT_S, Conn, enter_event, join, join_event, part_event

import chat_pb2 as pb
import chat_pb2_grpc

pytestmark = pytest.mark.timeout(60)


def user(kind, name, room):
    return lambda e: e.type == kind and e.username == name and e.room == room


def enter(conn: Conn, name: str, room: str, last_seen_id: str = "") -> list[pb.ServerEvent]:
    """Join `room` too; every event up to the notice naming who is in it (history first)."""
    conn.send(enter_event(room, last_seen_id))
    events = [conn.next_event()]
    while not events[-1].system_event.message.startswith(f"in #{room} ("):
        events.append(conn.next_event())
    assert user(pb.USER_JOINED, name, room)(events[-2].user_event), events
    return events


def chat_of(events) -> list[tuple[str, str, bool]]:
    return [(e.chat_message.room, e.chat_message.message, e.chat_message.replay)
            for e in events if e.WhichOneof("event") == "chat_message"]  # fmt: skip


def list_users(address: str, room: str = "") -> list[tuple[str, str, list[str]]]:
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        users = stub.ListUsers(pb.ListUsersRequest(room=room), timeout=EVENT_TIMEOUT_S).users
    return [(u.username, u.room, list(u.rooms)) for u in users]


def test_two_rooms_joined_later_are_kept_with_the_first(server):
    """When alice in lobby joins #rust and #go, she is in all three: ListUsers says so,
    sorted, and each room's talk reaches her with its room."""
    alice = join(server.address, "alice")
    enter(alice, "alice", "rust")
    enter(alice, "alice", "go")
    assert list_users(server.address) == [("alice", "go", ["go", "lobby", "rust"])]
    assert list_users(server.address, "rust") == [("alice", "go", ["go", "lobby", "rust"])]
    talkers = {
        room: join(server.address, f"t{room}", room=room) for room in ("lobby", "rust", "go")
    }
    for room, conn in talkers.items():
        conn.say(f"in {room}")
        assert [(m.room, m.message) for m in alice.messages(1)] == [(room, f"in {room}")]
    for conn in (alice, *talkers.values()):
        conn.close()


def test_a_member_of_two_rooms_gets_each_message_once_with_its_room(server):
    """When alice and bob share lobby and #rust and talk in both, each gets every message
    once, with its room, and bob's typing once, in the room he types in."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    enter(alice, "alice", "rust")
    enter(bob, "bob", "rust")
    alice.next_event("user_event", where=user(pb.USER_JOINED, "bob", "rust"))
    bob.typing(pb.TYPING_START, room="rust")
    typing = alice.next_event("typing_event").typing_event
    assert (typing.username, typing.type, typing.room) == ("bob", pb.TYPING_START, "rust")
    sent = [("lobby", "a"), ("rust", "b"), ("rust", "c"), ("lobby", "d")]
    for room, text in sent:
        bob.say(text, room=room)
    for conn in (alice, bob):
        assert [(m.room, m.message) for m in conn.messages(len(sent))] == sent
    alice.say("end", room="lobby")
    for conn in (alice, bob):  # anything doubled would have come before it
        rest = [e for e in conn.drain() if e.WhichOneof("event") != "typing_event"]
        if not rest:
            rest = [conn.next_event("chat_message")]
        assert chat_of(rest) == [("lobby", "end", False)], rest
    assert [e for e in alice.drain() if e.WhichOneof("event") == "typing_event"] == []
    for conn in (alice, bob):
        conn.close()


def test_saying_into_a_room_not_joined_is_refused_and_nothing_is_stored(server):
    """When alice (lobby only) says or types into #rust, or an empty room means lobby after
    she left it, she gets INVALID_EVENT and #rust's member sees nothing; nothing is stored."""
    bob = join(server.address, "bob", room="rust")
    alice = join(server.address, "alice")
    alice.say("sneak", room="rust")
    notice = alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    assert "rust" in notice.system_event.message
    alice.typing(pb.TYPING_START, room="rust")
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    alice.say("bad room", room="no spaces!")
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    enter(alice, "alice", "go")
    alice.send(part_event("lobby"))
    alice.next_event("user_event", where=user(pb.USER_LEFT, "alice", "lobby"))
    alice.say("no room named: lobby")
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    bob.say("rust only")
    assert [m.message for m in bob.messages(1)] == ["rust only"]  # nothing of alice's first
    store = server.servicer.hub.store
    assert [m.text for m in stored(store, room="rust")] == ["rust only"]
    assert stored(store) == [] and stored(store, room="go") == []
    for conn in (alice, bob):
        conn.close()


def test_leaving_one_room_keeps_the_stream_and_leaving_all_keeps_direct_messages(server):
    """When alice leaves #rust, its members and she get USER_LEFT with the room and lobby
    talk still reaches her; after leaving lobby too she is in no room, still online, and
    a direct message reaches her."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    carol = join(server.address, "carol", room="rust")
    enter(alice, "alice", "rust")
    alice.send(part_event("#Rust"))
    for conn in (alice, carol):
        conn.next_event("user_event", where=user(pb.USER_LEFT, "alice", "rust"))
    carol.say("rust talk")
    bob.say("lobby talk")
    assert [(m.room, m.message) for m in alice.messages(1)] == [("lobby", "lobby talk")]
    alice.send(part_event("lobby"))
    bob.next_event("user_event", where=user(pb.USER_LEFT, "alice", "lobby"))
    alice.next_event("user_event", where=user(pb.USER_LEFT, "alice", "lobby"))
    assert list_users(server.address) == [
        ("alice", "", []), ("bob", "lobby", ["lobby"]), ("carol", "rust", ["rust"])
    ]  # fmt: skip
    alice.send(part_event("lobby"))
    alice.next_event("system_event", where=lambda e: e.message == "not in #lobby")
    bob.say("psst", to="alice")
    assert [(m.message, m.to) for m in alice.messages(1)] == [("psst", "alice")]
    bob.say("lobby again")
    assert bob.messages(2)[1].message == "lobby again"
    assert chat_of(alice.drain()) == []  # no room talk reaches a stream in no room
    assert alice.ended.is_set() is False
    for conn in (alice, bob, carol):
        conn.close()


def test_the_end_of_a_stream_leaves_every_room_it_was_in(server):
    """When alice, in lobby, #rust and #go, disconnects, each room's members get one
    USER_LEFT naming that room; bob, in lobby and #rust, gets one for each of the two."""
    alice = join(server.address, "alice")
    enter(alice, "alice", "rust")
    enter(alice, "alice", "go")
    bob = join(server.address, "bob")
    enter(bob, "bob", "rust")
    carol = join(server.address, "carol", room="go")
    for conn in (bob, carol):
        conn.drain()
    alice.close()
    bob_left = [bob.next_event("user_event").user_event for _ in range(2)]
    assert sorted((e.type, e.username, e.room) for e in bob_left) == [
        (pb.USER_LEFT, "alice", "lobby"), (pb.USER_LEFT, "alice", "rust")
    ]  # fmt: skip
    carol.next_event("user_event", where=user(pb.USER_LEFT, "alice", "go"))
    carol.say("go on")
    bob.say("still here", room="rust")
    assert carol.messages(1)[0].message == "go on"
    assert bob.messages(1)[0].message == "still here"
    leaves = [
        e for conn in (bob, carol) for e in conn.drain() if e.WhichOneof("event") == "user_event"
    ]
    assert leaves == []  # no more USER_LEFT than one per room
    assert server.servicer.hub.rooms() == {"lobby": 1, "rust": 1, "go": 1}
    for conn in (bob, carol):
        conn.close()


def test_joining_past_max_rooms_is_invalid_and_changes_nothing(server_factory):
    """When alice, with --max-rooms 3, asks for a fourth room, she gets INVALID_EVENT and
    stays in her three; after leaving one she may join another."""
    server = server_factory(max_rooms=3)
    alice = join(server.address, "alice")
    enter(alice, "alice", "rust")
    enter(alice, "alice", "go")
    alice.send(enter_event("c"))
    notice = alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    assert "at most 3" in notice.system_event.message
    assert list_users(server.address) == [("alice", "go", ["go", "lobby", "rust"])]
    alice.send(part_event("go"))
    alice.next_event("user_event", where=user(pb.USER_LEFT, "alice", "go"))
    enter(alice, "alice", "c")
    assert list_users(server.address) == [("alice", "c", ["c", "lobby", "rust"])]
    alice.close()


def test_resume_of_two_rooms_each_after_its_own_id_misses_and_doubles_nothing(server):
    """When alice, in lobby and #rust, comes back with each room's last id, she gets
    exactly what each room said meanwhile, as history, then both rooms live."""
    lo, ru = join(server.address, "lo"), join(server.address, "ru", room="rust")
    alice = join(server.address, "alice")
    enter(alice, "alice", "rust")
    for n in range(3):
        lo.say(f"lobby {n}")
        ru.say(f"rust {n}")
    seen = alice.messages(6)
    last = {room: [m.id for m in seen if m.room == room][-1] for room in ("lobby", "rust")}
    alice.close()
    for n in range(3, 6):
        ru.say(f"rust {n}")
        lo.say(f"lobby {n}")
    lo.messages(6)
    resumes_each_room_after_its_own_id(server.address, last, lo, ru)


def resumes_each_room_after_its_own_id(address: str, last: dict, lo: Conn, ru: Conn) -> None:
    """alice comes back with her last id in each room: what she missed in each, once,
    then live lines of both rooms, then nothing more. Closes every Conn."""
    back = Conn(address, join_event("alice", last_seen_id=last["lobby"]))
    events = [back.next_event("chat_message") for _ in range(3)]
    events += enter(back, "alice", "rust", last["rust"])
    assert chat_of(events) == [("lobby", f"lobby {n}", True) for n in range(3, 6)] + [
        ("rust", f"rust {n}", True) for n in range(3, 6)
    ]
    ru.say("rust live")
    assert [(m.room, m.message, m.replay) for m in back.messages(1)] == [
        ("rust", "rust live", False)
    ]
    lo.say("lobby live")
    assert [(m.room, m.message, m.replay) for m in back.messages(1)] == [
        ("lobby", "lobby live", False)
    ]
    assert chat_of(back.drain()) == []
    for conn in (lo, ru, back):
        conn.close()
