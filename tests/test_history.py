"""History (PROTOCOL: History store): replay on join, resume after an id, in memory and in Redis."""

import pytest
import redis
from conftest import wait_until
from wire import Conn, join, join_event

import chat_pb2 as pb
from cluster.store import STREAM_KEY, RedisStore
from store import MemoryStore, id_key


@pytest.fixture(params=["memory", "redis"])
def make_store(request):
    """A factory of fresh stores of each kind; Redis ones share one private redis-server."""
    opened = []
    if request.param == "redis":
        redis_proc = request.getfixturevalue("redis_proc")

        def make(**kwargs):
            opened.append(RedisStore(redis_proc.url, **kwargs))
            return opened[-1]
    else:

        def make(**kwargs):
            opened.append(MemoryStore(**kwargs))
            return opened[-1]

    yield make
    for store in opened:
        store.close()


def say_all(conn, texts):
    for text in texts:
        conn.say(text)
    return conn.messages(len(texts))


def test_join_replays_last_n_oldest_first_marked_replay(server_factory, make_store):
    """When bob joins, he first gets the last N messages, oldest first, replay=true."""
    server = server_factory(store=make_store(), history=3)
    alice = join(server.address, "alice")
    say_all(alice, [f"m{n}" for n in range(5)])
    bob = Conn(server.address, join_event("bob"))
    replayed = [bob.next_event() for _ in range(3)]
    assert [e.chat_message.message for e in replayed] == ["m2", "m3", "m4"]
    assert all(e.chat_message.replay for e in replayed)
    assert bob.next_event().user_event.username == "bob"
    assert bob.next_event().system_event.code == pb.SYSTEM_INFO
    alice.close()
    bob.close()


def test_last_seen_id_yields_exactly_the_messages_after_it(server_factory, make_store):
    """When a client rejoins with last_seen_id, it gets every later message once, no more."""
    server = server_factory(store=make_store(), history=2)
    alice = join(server.address, "alice")
    sent = say_all(alice, [f"m{n}" for n in range(6)])
    bob = Conn(server.address, join_event("bob", last_seen_id=sent[1].id))
    replayed = [bob.next_event().chat_message for _ in range(4)]
    assert [(m.id, m.message) for m in replayed] == [(m.id, m.message) for m in sent[2:]]
    assert bob.next_event().user_event.username == "bob"
    alice.say("live")
    assert [m.message for m in bob.messages(1)] == ["live"]  # no duplicates before it
    alice.close()
    bob.close()


def test_last_seen_id_of_the_newest_message_replays_nothing(server_factory, make_store):
    """When a client has seen everything, its rejoin replays nothing."""
    server = server_factory(store=make_store())
    alice = join(server.address, "alice")
    sent = say_all(alice, ["only"])
    bob = Conn(server.address, join_event("bob", last_seen_id=sent[-1].id))
    assert bob.next_event().user_event.username == "bob"
    alice.close()
    bob.close()


def test_malformed_last_seen_id_gets_a_notice_and_the_last_n(server_factory, make_store):
    """When last_seen_id is not an id, the client is told and gets the usual history."""
    server = server_factory(store=make_store())
    alice = join(server.address, "alice")
    say_all(alice, ["one"])
    bob = Conn(server.address, join_event("bob", last_seen_id="yesterday"))
    assert bob.next_event().chat_message.message == "one"
    bob.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    alice.close()
    bob.close()


def test_redis_history_survives_a_server_restart(server_factory, redis_proc):
    """When the server restarts on the same Redis, history and id order carry on."""
    first = server_factory(store=RedisStore(redis_proc.url))
    alice = join(first.address, "alice")
    before = say_all(alice, ["before restart"])
    alice.close()
    first.stop(grace_s=0.5)  # flushes the store
    second = server_factory(store=RedisStore(redis_proc.url))
    bob = Conn(second.address, join_event("bob"))
    replayed = bob.next_event().chat_message
    assert (replayed.message, replayed.id) == ("before restart", before[0].id)
    assert replayed.replay
    bob.next_event("system_event")
    bob.say("after restart")
    after = bob.messages(1)[0]
    assert id_key(after.id) > id_key(before[0].id)
    bob.close()


class Delivered(list):
    """A store's delivery callback that keeps what it was given."""

    def __call__(self, messages):
        self.extend(messages)


def append_delivered(store, count: int, chunk: int = 50) -> list:
    """Append `count` messages, `chunk` at a time; return them as delivered."""
    delivered = Delivered()
    store.start(delivered)
    for n in range(count):
        delivered.extend(store.append("alice", f"m{n}", 1))
        if n % chunk == chunk - 1:
            assert wait_until(lambda n=n: len(delivered) > n), f"{len(delivered)} of {n + 1}"
    assert wait_until(lambda: len(delivered) >= count), f"{len(delivered)} of {count} delivered"
    return delivered


def test_redis_stream_holds_each_message_under_its_delivered_id(redis_proc):
    """When messages are appended, the stream has them in order, ids as delivered, capped."""
    store = RedisStore(redis_proc.url, max_messages=100)
    sent = append_delivered(store, 300)
    store.close()
    client = redis.Redis.from_url(redis_proc.url, decode_responses=True)
    entries = client.xrange(STREAM_KEY)
    assert 100 <= len(entries) < 300  # MAXLEN ~ trims whole nodes, roughly
    assert [e[0] for e in entries] == [m.id for m in sent[-len(entries) :]]
    assert [m.text for m in sent] == [f"m{n}" for n in range(300)]
    assert entries[-1][1]["message"] == "m299" and entries[-1][1]["username"] == "alice"
    client.close()


def test_store_ids_are_unique_and_increasing(make_store):
    """When many messages arrive at once, their ids still increase."""
    ids = [m.id for m in append_delivered(make_store(), 500)]
    assert ids == sorted(ids, key=id_key) and len(set(ids)) == 500
