"""More than one server (SPEC §7): several server.py processes on one Redis act as one."""

import signal

import grpc
import pytest
from conftest import wait_until
from proxy import Proxy
from wire import Conn, join, join_event

import chat_pb2 as pb

REAP_TIMEOUT_S = 15.0  # SPEC §7: a dead server's users are gone within about 15 s


@pytest.fixture
def cluster(server_process, redis_proc):
    """A function that starts one more server on the shared private Redis."""

    def start(redis_url=None):
        return server_process("--redis-url", redis_url or redis_proc.url, "--no-rate-limit")

    return start


def test_three_servers_every_client_gets_every_message_in_one_order(cluster):
    """When clients on three servers all talk at once, all six see every message, in one order."""
    servers = [cluster() for _ in range(3)]
    conns = [join(s.address, f"u{i}{j}") for i, s in enumerate(servers) for j in range(2)]
    names = [f"u{i}{j}" for i in range(3) for j in range(2)]
    # join() returned once each was registered: from now on all get every message
    for n in range(5):
        for i, conn in enumerate(conns):
            conn.say(f"{names[i]}:{n}")
    seen = [
        [(m.id, m.username, m.message) for m in conn.messages(30, timeout=10)] for conn in conns
    ]
    assert all(s == seen[0] for s in seen)
    assert sorted(m for _, _, m in seen[0]) == sorted(f"{u}:{n}" for u in names for n in range(5))
    for conn in conns:
        conn.close()


def test_name_online_on_one_server_is_taken_on_another(cluster):
    """When alice is online on A, B refuses her name; once she leaves A, B accepts it."""
    a, b = cluster(), cluster()
    alice = join(a.address, "alice")
    impostor = Conn(b.address, join_event("alice"))
    assert impostor.wait_end() == grpc.StatusCode.ALREADY_EXISTS
    watcher = join(b.address, "watcher")
    online = watcher.next_event("system_event").system_event.message
    assert "alice" in online and "watcher" in online
    alice.close()
    watcher.next_event(
        "user_event", where=lambda e: e.username == "alice" and e.type == pb.USER_LEFT
    )
    assert wait_until(lambda: _can_join(b.address, "alice"), timeout=10, interval=0.2)
    watcher.close()


def test_two_servers_claiming_one_name_at_once_exactly_one_wins(cluster):
    """When the same name joins on two servers at the same moment, exactly one join succeeds."""
    a, b = cluster(), cluster()
    for attempt in range(5):
        name = f"zed{attempt}"
        racers = [Conn(server.address, join_event(name)) for server in (a, b)]
        outcomes = sorted(_outcome(conn) for conn in racers)
        assert outcomes == ["ALREADY_EXISTS", "joined"]
        for conn in racers:
            conn.close()


def _outcome(conn: Conn) -> str:
    """ "joined", or the status the join ended with."""
    assert wait_until(lambda: conn.ended.is_set() or not conn.events.empty())
    return "joined" if not conn.ended.is_set() else conn.wait_end().name


def _can_join(address: str, name: str) -> bool:
    conn = Conn(address, join_event(name))
    outcome = _outcome(conn)
    conn.close()
    return outcome == "joined"


def test_typing_and_joins_cross_servers(cluster):
    """When alice on A types, bob on B sees it; joins and leaves cross too."""
    a, b = cluster(), cluster()
    bob = join(b.address, "bob")
    alice = join(a.address, "alice")
    bob.next_event("user_event", where=lambda e: e.username == "alice" and e.type == pb.USER_JOINED)
    alice.typing(pb.TYPING_START)
    typing = bob.next_event("typing_event")
    assert (typing.typing_event.username, typing.typing_event.type) == ("alice", pb.TYPING_START)
    alice.close()
    bob.next_event("user_event", where=lambda e: e.username == "alice" and e.type == pb.USER_LEFT)
    bob.close()


def test_killed_server_users_leave_once_everywhere_and_names_free_up(cluster):
    """When a server is SIGKILLed, clients elsewhere get one USER_LEFT per user, names free up."""
    a, b, c = cluster(), cluster(), cluster()
    doomed = [join(a.address, "ann"), join(a.address, "art")]
    watchers = [join(b.address, "bea"), join(c.address, "cal")]
    a.signal(signal.SIGKILL)
    for watcher in watchers:
        gone = set()
        while gone != {"ann", "art"}:
            left = watcher.next_event(
                "user_event", timeout=REAP_TIMEOUT_S, where=lambda e: e.type == pb.USER_LEFT
            )
            assert left.user_event.username not in gone, "USER_LEFT twice"
            gone.add(left.user_event.username)
    join(b.address, "ann").close()  # the name is free again
    watchers[0].say("after the reaping")
    watchers[1].next_event("chat_message")
    for watcher in watchers:
        leftovers = [
            e for e in watcher.drain()
            if e.WhichOneof("event") == "user_event" and e.user_event.username == "art"
        ]  # fmt: skip
        assert leftovers == []
        watcher.close()
    for conn in doomed:
        conn.close()


def test_client_resumes_on_another_server_with_exactly_what_it_missed(cluster):
    """When a client of A rejoins on B with last_seen_id, it gets exactly the messages it missed."""
    a, b = cluster(), cluster()
    alice, bob = join(a.address, "alice"), join(b.address, "bob")
    bob.say("before")
    last_seen = alice.next_event("chat_message").chat_message.id
    alice.close()
    missed = [f"missed {n}" for n in range(3)]
    for text in missed:
        bob.say(text)
    bob.messages(4)
    back = Conn(b.address, join_event("alice", last_seen_id=last_seen))
    replayed = [back.next_event().chat_message for _ in range(3)]
    assert [m.message for m in replayed] == missed and all(m.replay for m in replayed)
    assert back.next_event().user_event.username == "alice"
    back.close()
    bob.close()


def test_redis_outage_on_one_server_keeps_everyone_chatting(cluster, redis_proc):
    """When one server loses Redis, its clients chat live, the others too, and nothing is lost."""
    proxy = Proxy(redis_proc.port)
    cut_off = cluster(f"redis://127.0.0.1:{proxy.port}/0")
    healthy = cluster()
    alice, bob = join(cut_off.address, "alice"), join(healthy.address, "bob")
    alice.next_event("user_event", where=lambda e: e.username == "bob")
    proxy.black_hole()
    alice.say("during the outage")
    assert alice.messages(1, timeout=10)[0].message == "during the outage"
    bob.say("bob goes on")
    assert bob.messages(1)[0].message == "bob goes on"
    proxy.restore()
    got = bob.next_event("chat_message", timeout=15).chat_message
    assert (got.username, got.message) == ("alice", "during the outage")
    assert alice.next_event("chat_message", timeout=15).chat_message.message == "bob goes on"
    late = Conn(healthy.address, join_event("carol"))
    history = [late.next_event().chat_message.message for _ in range(2)]
    assert sorted(history) == ["bob goes on", "during the outage"]
    for conn in (alice, bob, late):
        conn.close()
    proxy.close()
