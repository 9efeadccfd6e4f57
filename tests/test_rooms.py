"""Rooms, joining more, direct messages, actions and the room queries, on one server.

Every stream starts in one room (`lobby` unless it names another) and may
join more; a room's messages, typing, joins and leaves reach its members
only; a direct message reaches one user wherever they are.
(tests/test_rooms_many.py holds the rules of being in several rooms.)
"""

import threading

import grpc
import pytest
from conftest import stored
from wire import EVENT_TIMEOUT_S, Conn, enter_event, join, join_event, part_event

import chat_pb2 as pb
import chat_pb2_grpc
from cluster.store import RedisStore
from store import MemoryStore

pytestmark = pytest.mark.timeout(60)


def user(kind, name, room):
    return lambda e: e.type == kind and e.username == name and e.room == room


def chat_messages(conn: Conn, count: int) -> list[pb.ChatMessageEvent]:
    return conn.messages(count)


def test_rooms_are_isolated_with_one_order_each_under_concurrency(server):
    """When three rooms chat at once, each member gets exactly its room's messages, in one order."""
    rooms = {room: [join(server.address, f"{room}{i}", room=room) for i in range(3)]
             for room in ("lobby", "rust", "go")}  # fmt: skip
    per_sender = 20

    def talk(conn: Conn, name: str):
        for n in range(per_sender):
            conn.say(f"{name} {n}")

    talkers = [
        threading.Thread(target=talk, args=(conn, f"{room}{i}"))
        for room, conns in rooms.items()
        for i, conn in enumerate(conns)
    ]
    for thread in talkers:
        thread.start()
    for thread in talkers:
        thread.join(EVENT_TIMEOUT_S)
    for room, conns in rooms.items():
        seen = [[(m.room, m.message) for m in conn.messages(3 * per_sender)] for conn in conns]
        assert seen[0] == seen[1] == seen[2], f"#{room}: members saw different orders"
        assert {r for r, _ in seen[0]} == {room}
        expected = {f"{room}{i} {n}" for i in range(3) for n in range(per_sender)}
        assert {text for _, text in seen[0]} == expected
    for conns in rooms.values():
        for conn in conns:
            conn.close()


def test_a_later_join_is_history_then_joined_then_who_is_there_and_keeps_the_lobby(server):
    """When alice in lobby joins #rust: she gets #rust's history, her USER_JOINED and who is
    there; #rust sees her join; lobby sees no leave; talk of both rooms reaches her."""
    carol = join(server.address, "carol", room="rust")
    carol.say("old rust")
    carol.messages(1)
    alice = join(server.address, "alice")
    alice.next_event("system_event")  # "in #lobby (1): alice"
    bob = join(server.address, "bob")
    alice.send(enter_event("#Rust"))
    carol.next_event("user_event", where=user(pb.USER_JOINED, "alice", "rust"))
    after_join = []
    while not after_join or after_join[-1].WhichOneof("event") != "system_event":
        after_join.append(alice.next_event())
    kinds = [e.WhichOneof("event") for e in after_join]
    assert kinds[-3:] == ["chat_message", "user_event", "system_event"], kinds
    history, joined, notice = after_join[-3:]
    assert (history.chat_message.message, history.chat_message.replay) == ("old rust", True)
    assert history.chat_message.room == "rust"
    assert user(pb.USER_JOINED, "alice", "rust")(joined.user_event)
    assert notice.system_event.message == "in #rust (2): alice, carol"
    bob.say("lobby talk")
    assert [(m.message, m.room) for m in alice.messages(1)] == [("lobby talk", "lobby")]
    carol.say("rust talk")
    assert [(m.message, m.room) for m in alice.messages(1)] == [("rust talk", "rust")]
    bob_saw = [e.user_event for e in bob.drain() if e.WhichOneof("event") == "user_event"]
    assert [e for e in bob_saw if e.username == "alice"] == []  # no leave, nothing of #rust's
    assert server.servicer.hub.users() == [
        ("alice", ["lobby", "rust"]), ("bob", ["lobby"]), ("carol", ["rust"])
    ]  # fmt: skip
    for conn in (alice, bob, carol):
        conn.close()


def test_joining_ones_own_room_is_a_notice_and_a_join_or_leave_takes_a_token(server_factory):
    """When alice joins a room she is in, she is told and nothing else happens; a real
    join costs a rate-limit token, and so does a leave."""
    server = server_factory(rate=0.1, burst=2)
    alice = join(server.address, "alice")
    alice.send(enter_event("lobby"))
    notice = alice.next_event("system_event", where=lambda e: "already in #lobby" in e.message)
    assert notice.system_event.code == pb.SYSTEM_INFO
    alice.send(enter_event("rust"))
    alice.next_event("user_event", where=user(pb.USER_JOINED, "alice", "rust"))
    alice.send(part_event("rust"))
    alice.next_event("user_event", where=user(pb.USER_LEFT, "alice", "rust"))
    alice.send(enter_event("go"))
    alice.next_event("system_event", where=lambda e: e.code == pb.RATE_LIMITED)
    alice.send(part_event("lobby"))
    alice.next_event("system_event", where=lambda e: e.code == pb.RATE_LIMITED)
    assert server.servicer.hub.users() == [("alice", ["lobby"])]
    alice.close()


def test_room_names_are_normalised_and_bad_ones_refused(server):
    """When a room is named "#Rust" it is rust; a bad name is refused at join and after."""
    alice = join(server.address, "alice", room="#Rust")
    bad = Conn(server.address, join_event("bob", room="no spaces!"))
    assert bad.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
    alice.send(enter_event("x" * 33))
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    alice.send(part_event("no spaces!"))
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    assert server.servicer.hub.users() == [("alice", ["rust"])]
    alice.close()
    bad.close()


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return MemoryStore()
    return RedisStore(request.getfixturevalue("redis_proc").url)


def test_history_and_resume_are_per_room(server_factory, store):
    """When lobby and #rust talk in turn, a join or a resume in #rust replays #rust only."""
    server = server_factory(store=store)
    talkers = {"lobby": join(server.address, "lo"), "rust": join(server.address, "ru", room="rust")}
    for n in range(4):
        for room, conn in talkers.items():
            conn.say(f"{room} {n}")
            conn.messages(1)
    rust = stored(store, room="rust")
    assert [m.text for m in rust] == [f"rust {n}" for n in range(4)]
    fresh = Conn(server.address, join_event("fresh", room="rust"))
    assert [(m.message, m.replay) for m in fresh.messages(4)] == [(m.text, True) for m in rust]
    back = Conn(server.address, join_event("back", last_seen_id=rust[1].id, room="rust"))
    assert [m.message for m in back.messages(2)] == ["rust 2", "rust 3"]
    talkers["rust"].say("rust live")
    assert back.messages(1)[0].message == "rust live"
    for conn in (*talkers.values(), fresh, back):
        conn.close()


def test_direct_message_reaches_one_user_anywhere_is_echoed_and_never_stored(server):
    """When alice whispers to bob in another room, bob and alice see it, carol does not;
    nothing is stored; a whisper to someone offline is NOT_ONLINE."""
    alice, carol = join(server.address, "alice"), join(server.address, "carol")
    bob = join(server.address, "bob", room="rust")
    alice.say("psst", to="bob")
    got, echo = bob.messages(1)[0], alice.messages(1)[0]
    for m in (got, echo):
        assert (m.message, m.username, m.to, m.id, m.room) == ("psst", "alice", "bob", "", "")
    alice.say("/me is not a command here", to="nobody")
    notice = alice.next_event("system_event", where=lambda e: e.code == pb.NOT_ONLINE)
    assert "nobody" in notice.system_event.message
    carol.say("lobby")
    assert carol.messages(1)[0].message == "lobby"
    assert [m.text for m in stored(server.servicer.hub.store)] == ["lobby"]
    assert stored(server.servicer.hub.store, room="rust") == []
    for conn in (alice, bob, carol):
        conn.close()


def test_actions_are_stored_and_replayed_as_actions(server):
    """When alice sends an action (/me waves), it is stored and replayed with action set."""
    alice = join(server.address, "alice")
    alice.say("waves", action=True)
    assert alice.messages(1)[0].action
    later = Conn(server.address, join_event("later"))
    replayed = later.messages(1)[0]
    assert (replayed.message, replayed.action, replayed.replay) == ("waves", True, True)
    alice.close()
    later.close()


def test_list_rooms_and_list_users(server):
    """When people are in rooms, ListRooms counts them (lobby always) and ListUsers lists them."""
    conns = [join(server.address, "ann", room="rust"), join(server.address, "ben", room="rust")]
    conns.append(join(server.address, "cat", room="go"))
    with grpc.insecure_channel(server.address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        rooms = stub.ListRooms(pb.ListRoomsRequest(), timeout=EVENT_TIMEOUT_S).rooms
        assert [(r.name, r.members) for r in rooms] == [("go", 1), ("lobby", 0), ("rust", 2)]
        everyone = stub.ListUsers(pb.ListUsersRequest(), timeout=EVENT_TIMEOUT_S).users
        assert [(u.username, u.room, list(u.rooms)) for u in everyone] == [
            ("ann", "rust", ["rust"]), ("ben", "rust", ["rust"]), ("cat", "go", ["go"])
        ]  # fmt: skip
        rust = stub.ListUsers(pb.ListUsersRequest(room="#rust"), timeout=EVENT_TIMEOUT_S).users
        assert [u.username for u in rust] == ["ann", "ben"]
    for conn in conns:
        conn.close()
