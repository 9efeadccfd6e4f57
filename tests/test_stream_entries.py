"""What is in Redis never stops the chat: foreign entries, bad timestamps, trimming, paging."""

import logging
import threading

import pytest
import redis
from conftest import stored, wait_until
from wire import Conn, join, join_event

from cluster.entries import MAX_TIMESTAMP_S, UNKNOWN_USER, to_message
from cluster.follow import FOLLOW_BATCH_MAX, StreamFollower
from cluster.keys import STREAM_KEY, RedisLink
from cluster.store import RedisStore
from store import HISTORY_PAGE, MemoryStore


@pytest.fixture
def raw(redis_proc):
    """A plain client to the test's private Redis, as another tool would use it."""
    client = redis.Redis.from_url(redis_proc.url, decode_responses=True)
    yield client
    client.close()


def test_foreign_entries_are_delivered_with_defaults_and_never_stop_delivery(
    server_factory, redis_proc, raw, caplog
):
    """When another tool writes odd entries, each is shown once with defaults, and chat goes on."""
    server = server_factory(store=RedisStore(redis_proc.url))
    alice = join(server.address, "alice")
    raw.xadd(STREAM_KEY, {"username": "deploybot", "message": "deploy done"})  # no timestamp
    raw.xadd(STREAM_KEY, {"username": "clock", "message": "far", "timestamp": 10**17})
    raw.xadd(STREAM_KEY, {"text": "not even a chat message"})
    got = alice.messages(3)
    assert [(m.username, m.message) for m in got] == [
        ("deploybot", "deploy done"), ("clock", "far"), (UNKNOWN_USER, "")
    ]  # fmt: skip
    assert got[0].timestamp == int(got[0].id.split("-")[0]) // 1000
    assert got[1].timestamp == MAX_TIMESTAMP_S
    alice.say("still here")
    assert alice.messages(1)[0].message == "still here"
    for name in ("bob", "carol"):  # joins replay them, and log nothing more
        history = [Conn(server.address, join_event(name))]
        replayed = [history[0].next_event().chat_message.message for _ in range(4)]
        assert replayed == ["deploy done", "far", "", "still here"]
        history[0].close()
    assert caplog.text.count("shown with defaults") == 3
    alice.close()


def test_to_message_never_raises_on_malformed_fields():
    """When fields are missing or nonsense, the message still has a name, text and a sane time."""
    for fields in ({}, {"timestamp": "soon"}, {"timestamp": "-5"}, {"server": "x", "seq": "y"}):
        message = to_message("1700000000123-0", fields)
        assert message.username == UNKNOWN_USER
        assert 0 <= message.timestamp <= MAX_TIMESTAMP_S
    assert to_message("1700000000123-0", {"timestamp": "soon"}).timestamp == 1_700_000_000


def test_follower_reports_trimmed_entries_exactly_and_nothing_else(redis_proc, raw):
    """When entries are trimmed before the follower read them, it says how many, exactly."""
    link = RedisLink(redis_proc.url)
    raw.xadd(STREAM_KEY, {"n": "0"})
    start = link.run("tail", [STREAM_KEY], [])
    for n in range(1, 2 * FOLLOW_BATCH_MAX + 1):  # 1000 more; only the last 10 stay
        raw.xadd(STREAM_KEY, {"n": str(n)}, maxlen=10, approximate=False)
    seen, gaps, done = [], [], threading.Event()

    def handle(batches):
        seen.extend(int(fields["n"]) for _, fields in batches[STREAM_KEY])
        if seen[-1] == 2 * FOLLOW_BATCH_MAX:
            done.set()

    follower = StreamFollower(link, STREAM_KEY, "test-follower", handle, gap=gaps.append)
    follower.start(*start)
    assert done.wait(10)
    raw.xadd(
        STREAM_KEY, {"n": "-1"}, maxlen=10, approximate=False
    )  # read at the tail: no gap reported
    assert wait_until(lambda: len(seen) == 11)
    follower.stop(5)
    link.close()
    assert gaps == [2 * FOLLOW_BATCH_MAX - 10]
    assert seen[:10] == list(range(2 * FOLLOW_BATCH_MAX - 9, 2 * FOLLOW_BATCH_MAX + 1))


def test_follower_survives_a_failing_handler(redis_proc, raw, caplog):
    """When delivering a batch raises, the error is logged and the next batch still comes."""
    link = RedisLink(redis_proc.url)
    seen, done = [], threading.Event()

    def handle(batches):
        seen.extend(fields["n"] for _, fields in batches[STREAM_KEY])
        if "boom" in seen[-1:]:
            raise RuntimeError("a bug")
        done.set()

    follower = StreamFollower(link, STREAM_KEY, "test-follower", handle)
    follower.start(*link.run("tail", [STREAM_KEY], []))
    raw.xadd(STREAM_KEY, {"n": "boom"})
    assert wait_until(lambda: "a bug" in caplog.text)
    raw.xadd(STREAM_KEY, {"n": "after"})
    assert done.wait(5)
    follower.stop(5)
    link.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_history_after_an_id_comes_in_pages_oldest_first(kind, request):
    """When a resume asks for many messages, they come in pages of HISTORY_PAGE, all, in order."""
    if kind == "redis":
        store = RedisStore(request.getfixturevalue("redis_proc").url)
        delivered = []
        store.start(delivered.extend)
    else:
        store = MemoryStore()
    count = 2 * HISTORY_PAGE + 7
    ids = [m.id for n in range(count + 1) for m in store.append("alice", f"m{n}", 1)]
    if kind == "redis":
        assert wait_until(lambda: len(delivered) == count + 1, timeout=10)
        ids = [m.id for m in delivered]
    pages = list(store.history(50, after_id=ids[0]))
    assert [len(page) for page in pages] == [HISTORY_PAGE, HISTORY_PAGE, 7]
    assert [m.id for page in pages for m in page] == ids[1:]
    assert [m.text for m in stored(store, 3)] == [f"m{n}" for n in range(count - 2, count + 1)]
    with pytest.raises(ValueError):
        store.history(50, after_id="yesterday")  # at the call, before any page is read
    store.close()


def test_resume_with_many_messages_replays_every_page(server_factory, redis_proc, caplog):
    """When a client rejoins far behind, it gets every missed message once, pages joined."""
    caplog.set_level(logging.WARNING)
    store = RedisStore(redis_proc.url)
    server = server_factory(store=store, history=5)
    alice = join(server.address, "alice")
    alice.say("first")
    first = alice.messages(1)[0].id
    count = HISTORY_PAGE + 50
    for n in range(count):
        store.append("bot", f"m{n}", 1)  # straight to the store: no rate limit, no echo wait
    assert len(alice.messages(count, timeout=15)) == count
    bob = Conn(server.address, join_event("bob", last_seen_id=first))
    replayed = [bob.next_event().chat_message for _ in range(count)]
    assert [m.message for m in replayed] == [f"m{n}" for n in range(count)]
    assert all(m.replay for m in replayed)
    assert bob.next_event().user_event.username == "bob"
    assert "fell behind" not in caplog.text
    bob.close()
    alice.close()
