"""Rooms, direct messages and the room queries across servers on one Redis, as on one server.

Each test runs real `python server.py` processes on a private redis-server.
A server learns of another's users through the events stream, so a test
first waits until every server sees the same users (`settled`).
"""

import threading
import time

import grpc
import pytest
import redis
from conftest import wait_until
from proxy import Proxy
from wire import EVENT_TIMEOUT_S, Conn, enter_event, join, join_event, part_event

import chat_pb2 as pb
import chat_pb2_grpc
from cluster.keys import EVENTS_KEY, WHERE_KEY, RedisLink
from cluster.presence import Cluster

pytestmark = pytest.mark.timeout(90)

SETTLE_S = 10.0  # events cross servers in well under a second; a resync takes a heartbeat


@pytest.fixture
def cluster(server_process, redis_proc):
    """A function that starts one more server on the shared private Redis."""

    def start(redis_url=None):
        return server_process("--redis-url", redis_url or redis_proc.url, "--no-rate-limit")

    return start


def rooms_of(address: str) -> list[tuple[str, int]]:
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        rooms = stub.ListRooms(pb.ListRoomsRequest(), timeout=EVENT_TIMEOUT_S).rooms
    return [(r.name, r.members) for r in rooms]


def users_of(address: str, room: str = "") -> list[tuple[str, str]]:
    """(name, rooms joined by commas) of everyone online, or in `room`; `room` is the first."""
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        users = stub.ListUsers(pb.ListUsersRequest(room=room), timeout=EVENT_TIMEOUT_S).users
    assert all(u.room == (u.rooms[0] if u.rooms else "") for u in users), users
    return [(u.username, ",".join(u.rooms)) for u in users]


def settled(servers, users: list[tuple[str, str]]) -> bool:
    """Wait until every server lists exactly `users` (name, rooms by commas), sorted by name."""
    return wait_until(
        lambda: all(users_of(s.address) == users for s in servers), timeout=SETTLE_S, interval=0.1
    )


def user(kind, name, room):
    return lambda e: e.type == kind and e.username == name and e.room == room


def message_streams(url: str) -> dict[str, list]:
    """Every stream in Redis but the events stream (history and bus), with its entries."""
    with redis.Redis.from_url(url, decode_responses=True) as client:
        keys = [k for k in client.scan_iter(_type="STREAM") if k != EVENTS_KEY]
        return {key: client.xrange(key) for key in keys}


def test_direct_messages_cross_servers_and_rooms_and_are_never_stored(cluster, redis_proc):
    """When alice on A whispers to bob in #rust on B, bob alone gets it and alice the echo;
    his reply crosses back; a whisper to someone online nowhere is NOT_ONLINE; no stream
    but the events stream ever holds one."""
    a, b = cluster(), cluster()
    alice = join(a.address, "alice")
    bob, carol = join(b.address, "bob", room="rust"), join(b.address, "carol")
    assert settled((a, b), [("alice", "lobby"), ("bob", "rust"), ("carol", "lobby")])
    alice.say("psst", to="bob")
    for m in (bob.messages(1)[0], alice.messages(1)[0]):
        assert (m.message, m.username, m.to, m.id, m.room) == ("psst", "alice", "bob", "", "")
    bob.say("hi back", action=True, to="alice")
    got = alice.messages(1)[0]
    assert (got.message, got.username, got.to, got.action) == ("hi back", "bob", "alice", True)
    assert bob.messages(1)[0].message == "hi back"
    alice.say("anyone?", to="nobody")
    notice = alice.next_event("system_event", where=lambda e: e.code == pb.NOT_ONLINE)
    assert "nobody" in notice.system_event.message
    carol.say("lobby talk")
    assert [m.message for m in carol.messages(1)] == ["lobby talk"]  # no whisper before it
    assert [m.message for m in alice.messages(1)] == ["lobby talk"]
    texts = [f["message"] for entries in message_streams(redis_proc.url).values()
             for _, f in entries]  # fmt: skip
    assert texts == ["lobby talk"]
    for conn in (alice, bob, carol):
        conn.close()


def test_list_rooms_and_list_users_agree_across_servers(cluster):
    """When people in rooms are spread over two servers, both answer ListRooms and ListUsers
    alike, and again after one joins another room and leaves one."""
    a, b = cluster(), cluster()
    conns = [join(a.address, "ann", room="rust"), join(b.address, "ben", room="rust")]
    conns += [join(b.address, "cat", room="go"), join(a.address, "dan")]
    everyone = [("ann", "rust"), ("ben", "rust"), ("cat", "go"), ("dan", "lobby")]
    assert settled((a, b), everyone)
    for server in (a, b):
        assert rooms_of(server.address) == [("go", 1), ("lobby", 1), ("rust", 2)]
        assert users_of(server.address, "#rust") == [("ann", "rust"), ("ben", "rust")]
    conns[0].send(enter_event("go"))
    assert settled((a, b), [("ann", "go,rust"), *everyone[1:]])
    assert rooms_of(a.address) == rooms_of(b.address) == [("go", 2), ("lobby", 1), ("rust", 2)]
    conns[0].send(part_event("rust"))
    assert settled((a, b), [("ann", "go"), *everyone[1:]])
    assert rooms_of(a.address) == rooms_of(b.address) == [("go", 2), ("lobby", 1), ("rust", 1)]
    for conn in conns:
        conn.close()


def test_rooms_are_isolated_with_one_order_each_across_servers(cluster):
    """When two rooms talk at once with members on both servers, each member gets exactly
    its room's messages, in the one order its room-mates see, ids increasing."""
    a, b = cluster(), cluster()
    rooms = {room: [join(s.address, f"{room}{i}", room=room) for i, s in enumerate((a, b, a))]
             for room in ("lobby", "rust")}  # fmt: skip
    names = sorted((f"{room}{i}", room) for room in rooms for i in range(3))
    assert settled((a, b), names)
    per_sender = 10

    def talk(conn: Conn, name: str):
        for n in range(per_sender):
            conn.say(f"{name} {n}")

    talkers = [threading.Thread(target=talk, args=(conn, f"{room}{i}"))
               for room, conns in rooms.items() for i, conn in enumerate(conns)]  # fmt: skip
    for thread in talkers:
        thread.start()
    for thread in talkers:
        thread.join(EVENT_TIMEOUT_S)
    for room, conns in rooms.items():
        seen = [[(m.id, m.room, m.message) for m in conn.messages(3 * per_sender, timeout=15)]
                for conn in conns]  # fmt: skip
        assert seen[0] == seen[1] == seen[2], f"#{room}: members saw different orders"
        assert {r for _, r, _ in seen[0]} == {room}
        expected = {f"{room}{i} {n}" for i in range(3) for n in range(per_sender)}
        assert {text for _, _, text in seen[0]} == expected
        ids = [tuple(map(int, i.split("-"))) for i, _, _ in seen[0]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for conns in rooms.values():
        for conn in conns:
            assert [e for e in conn.drain() if e.WhichOneof("event") == "chat_message"] == []
            conn.close()


def test_a_later_join_is_seen_in_order_by_the_other_servers_members(cluster):
    """When alice on A joins #rust too: carol in #rust on B sees her join, bob in lobby on B
    sees nothing of it; her #rust talk reaches carol, not bob; lobby talk still reaches her;
    her notice names carol."""
    a, b = cluster(), cluster()
    carol = join(b.address, "carol", room="rust")
    carol.say("old rust")
    carol.messages(1)
    bob, alice = join(b.address, "bob"), join(a.address, "alice")
    assert settled((a, b), [("alice", "lobby"), ("bob", "lobby"), ("carol", "rust")])
    alice.send(enter_event("rust"))
    carol.next_event("user_event", where=user(pb.USER_JOINED, "alice", "rust"))
    replayed = alice.next_event("chat_message").chat_message
    assert (replayed.message, replayed.room, replayed.replay) == ("old rust", "rust", True)
    alice.next_event("user_event", where=user(pb.USER_JOINED, "alice", "rust"))
    notice = alice.next_event("system_event").system_event.message
    assert notice == "in #rust (2): alice, carol"
    alice.say("rust only", room="rust")
    bob.say("lobby only")
    assert [m.message for m in carol.messages(1)] == ["rust only"]
    assert [m.message for m in bob.messages(1)] == ["lobby only"]
    got = sorted((m.room, m.message) for m in alice.messages(2))
    assert got == [("lobby", "lobby only"), ("rust", "rust only")]
    bob_saw = [e.user_event for e in bob.drain() if e.WhichOneof("event") == "user_event"]
    assert [e for e in bob_saw if e.username == "alice"] == []  # nothing of #rust's
    for conn in (alice, bob, carol):
        conn.close()


def test_history_resume_and_actions_are_per_room_across_servers(cluster):
    """When lobby talks on A and #rust on B (with an action), a join or a resume in #rust
    on A replays #rust only, the action as an action."""
    a, b = cluster(), cluster()
    lo, ru = join(a.address, "lo"), join(b.address, "ru", room="rust")
    for n in range(3):
        lo.say(f"lobby {n}")
        ru.say(f"rust {n}", action=n == 1)
    rust = ru.messages(3)
    assert [m.message for m in lo.messages(3)] == [f"lobby {n}" for n in range(3)]
    fresh = Conn(a.address, join_event("fresh", room="rust"))
    replayed = fresh.messages(3)
    assert [(m.id, m.message, m.action, m.replay) for m in replayed] == [
        (m.id, m.message, m.action, True) for m in rust
    ]
    assert [m.action for m in replayed] == [False, True, False]
    back = Conn(a.address, join_event("back", last_seen_id=rust[0].id, room="rust"))
    assert [m.message for m in back.messages(2)] == ["rust 1", "rust 2"]
    ru.say("rust live")
    assert back.messages(1)[0].message == "rust live"
    assert fresh.messages(1)[0].message == "rust live"
    for conn in (lo, ru, fresh, back):
        conn.close()


def test_rooms_heal_after_one_servers_redis_link_is_cut(cluster, redis_proc):
    """When A is cut off from Redis while its alice and B's bob both join another room,
    each server shows both in their rooms within seconds of A's link coming back."""
    proxy = Proxy(redis_proc.port)
    a, b = cluster(f"redis://127.0.0.1:{proxy.port}/0"), cluster()
    alice, bob = join(a.address, "alice"), join(b.address, "bob")
    assert settled((a, b), [("alice", "lobby"), ("bob", "lobby")])
    proxy.black_hole()
    alice.send(enter_event("rust"))
    alice.next_event("user_event", where=user(pb.USER_JOINED, "alice", "rust"))
    alice.send(part_event("lobby"))
    alice.next_event("user_event", where=user(pb.USER_LEFT, "alice", "lobby"))
    bob.send(enter_event("go"))
    bob.next_event("user_event", where=user(pb.USER_JOINED, "bob", "go"))
    proxy.restore()
    assert settled((a, b), [("alice", "rust"), ("bob", "go,lobby")])
    proxy.close()
    for conn in (alice, bob):
        conn.close()


class QuietHub:
    """A hub that hears nothing: the cluster's callbacks, doing nothing."""

    def remote_event(self, *args, **kwargs): ...
    def resync_remote(self, users): ...
    def remote_direct(self, *args): ...
    def kick(self, name, text): ...


def test_a_change_of_rooms_during_a_slow_one_never_waits_and_the_latest_lands_last(redis_proc):
    """When alice joins another room while her first change of rooms is still in Redis,
    the second returns at once, and Redis ends with her latest rooms, announced after
    the first."""
    link = RedisLink(redis_proc.url)
    cluster = Cluster(link, "s1")
    cluster.start(QuietHub())
    token = cluster.claim("alice", "lobby")
    first_in_redis, release = threading.Event(), threading.Event()
    run = link.run

    def slow_first_change(script, keys, args, client=None):
        if script == "rooms" and not first_in_redis.is_set():
            first_in_redis.set()
            assert release.wait(EVENT_TIMEOUT_S)
        return run(script, keys, args, client)

    link.run = slow_first_change
    changer = threading.Thread(target=cluster.set_rooms, args=("alice", token, ["lobby", "rust"]))
    changer.start()
    assert first_in_redis.wait(EVENT_TIMEOUT_S)
    started = time.monotonic()
    cluster.set_rooms("alice", token, ["go", "lobby", "rust"])
    assert time.monotonic() - started < 0.5
    release.set()
    changer.join(EVENT_TIMEOUT_S)
    with redis.Redis.from_url(redis_proc.url, decode_responses=True) as client:
        assert client.hget(WHERE_KEY, "alice") == "go,lobby,rust"
        changes = [f["room"] for _, f in client.xrange(EVENTS_KEY) if f["kind"] == "rooms"]
    assert changes == ["lobby,rust", "go,lobby,rust"]
    cluster.close()
    link.close()
