"""More than one server: several server.py processes on one Redis act as one, through faults."""

import signal
import time

import grpc
import pytest
import redis
from conftest import wait_until
from proxy import Proxy
from wire import Conn, join, join_event

import chat_pb2 as pb
from cluster.keys import NAMES_KEY, SERVERS_KEY, alive_key
from cluster.presence import Cluster
from cluster.store import RedisStore
from server import create_server
from session import Settings
from store import id_key

REAP_TIMEOUT_S = 15.0  # a dead server's users are gone within about 15 s


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


@pytest.fixture
def cut_off_server(server_process, redis_proc):
    """An in-process server reaching the shared Redis through a relay the test can break.

    In-process, so the test can wait on what the server knows of Redis
    (`link.reachable`, `link.shared`) instead of sleeping.
    """
    proxy = Proxy(redis_proc.port)
    built = []

    def start():
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0")
        server = create_server(
            Settings(rate=None),
            store,
            "127.0.0.1:0",
            cluster=Cluster(store.redis, store.server_id, store.progress),
        )
        server.start()
        server.address, server.link = f"127.0.0.1:{server.port}", store.redis
        built.append(server)
        return server

    yield start, proxy
    for server in built:
        server.stop(grace_s=0.5)
    proxy.close()


def test_server_cut_off_from_a_shared_redis_refuses_with_not_sent(cluster, cut_off_server):
    """When one server loses the Redis others share, its senders get NOT_SENT; nothing is lost."""
    start, proxy = cut_off_server
    healthy = cluster()
    cut_off = start()
    assert wait_until(lambda: cut_off.link.shared, timeout=10)
    alice, bob = join(cut_off.address, "alice"), join(healthy.address, "bob")
    alice.next_event("user_event", where=lambda e: e.username == "bob")
    proxy.black_hole()
    assert wait_until(lambda: not cut_off.link.reachable, timeout=10)
    bob.say("b1")
    assert [m.message for m in bob.messages(1)] == ["b1"]
    alice.say("a1")
    refused = alice.next_event("system_event", where=lambda e: e.code == pb.NOT_SENT)
    assert "send it again" in refused.system_event.message
    proxy.restore()
    assert wait_until(lambda: cut_off.link.reachable, timeout=10)
    alice.say("a1")  # the client's resend
    got = alice.messages(2, timeout=10)
    assert [m.message for m in got] == ["b1", "a1"]  # the stream's order, ids increasing
    assert id_key(got[0].id) < id_key(got[1].id)
    assert [m.message for m in bob.messages(1)] == ["a1"]
    history = replayed_messages(healthy.address, "carol")
    assert [m.message for m in history] == ["b1", "a1"]
    ids = [m.id for m in history]
    assert ids == sorted(ids, key=id_key) and len(set(ids)) == 2
    for conn in (alice, bob):
        conn.close()


def test_joins_under_a_partition_are_refused_fast_then_taken_once_back(cluster, cut_off_server):
    """When a shared Redis hangs, a join is UNAVAILABLE within seconds; once back, it is taken."""
    start, proxy = cut_off_server
    healthy = cluster()
    cut_off = start()
    bob = join(healthy.address, "bob")
    proxy.black_hole()
    began = time.monotonic()
    refused = Conn(cut_off.address, join_event("carol"))
    assert refused.wait_end(timeout=10) == grpc.StatusCode.UNAVAILABLE  # it could not confirm
    assert time.monotonic() - began < 3.5, f"took {time.monotonic() - began:.1f} s"
    proxy.restore()
    assert wait_until(lambda: _outcome_stays(cut_off.address, "carol"), timeout=15, interval=0.3)
    bob.next_event(
        "user_event", timeout=15, where=lambda e: e.type == pb.USER_JOINED and e.username == "carol"
    )
    bob.close()


def _outcome_stays(address: str, name: str) -> bool:
    return join_when_possible(address, name, tries=1) is not None


def join_when_possible(address: str, name: str, tries: int = 30) -> Conn | None:
    """Join as `name`, trying again (as a client does) while the join is UNAVAILABLE."""
    for _ in range(tries):
        conn = Conn(address, join_event(name))
        if _outcome(conn) == "joined":
            return conn
        assert conn.wait_end() == grpc.StatusCode.UNAVAILABLE
        conn.close()
        time.sleep(0.3)  # a client's retry pause
    return None


def test_sigterm_leaves_nothing_of_the_server_in_redis(cluster, redis_proc):
    """When a server stops, its names, its alive key and its membership are gone from Redis."""
    a, b = cluster(), cluster()
    users = [join(a.address, name) for name in ("ann", "art")]
    watcher = join(b.address, "bea")
    a.signal(signal.SIGTERM)
    assert a.wait(15) == 0
    with redis.Redis.from_url(redis_proc.url, decode_responses=True) as client:
        assert set(client.hkeys(NAMES_KEY)) == {"bea"}
        assert len(client.smembers(SERVERS_KEY)) == 1
        assert len(client.keys(alive_key("*"))) == 1
    left = set()
    while left != {"ann", "art"}:
        event = watcher.next_event("user_event", where=lambda e: e.type == pb.USER_LEFT)
        left.add(event.user_event.username)
    for conn in (*users, watcher):
        conn.close()


def test_presence_heals_after_redis_restarts(cluster, redis_proc):
    """When Redis is killed and restarted, joins and leaves made around it reach every server."""
    a, b = cluster(), cluster()
    watcher = join(a.address, "watcher")
    leaver = join(b.address, "leaver")
    watcher.next_event("user_event", where=lambda e: e.username == "leaver")
    redis_proc.kill()
    leaver.close()  # its release cannot reach Redis: retried when Redis is back
    redis_proc.start()
    late = join_when_possible(b.address, "late")  # UNAVAILABLE until b reaches Redis again
    wanted, seen = {("leaver", pb.USER_LEFT), ("late", pb.USER_JOINED)}, set()
    while not wanted <= seen:  # in either order: the release is retried by a heartbeat
        event = watcher.next_event("user_event", timeout=15).user_event
        seen.add((event.username, event.type))
    for conn in (watcher, late):
        conn.close()


def replayed_messages(address: str, name: str) -> list:
    """Join as `name`, return the history replayed, leave."""
    conn = Conn(address, join_event(name))
    history = []
    while (event := conn.next_event()).WhichOneof("event") == "chat_message":
        history.append(event.chat_message)
    conn.close()
    return history
