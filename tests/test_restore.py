"""What Redis lost after answering is written again, under its id, and delivered once.

Redis restarted empty, FLUSHALL, or a replica promoted without the last
writes: a message its server wrote a moment before is gone from the stream,
though some servers may have read it already. Each test steps two servers'
stores (a and b, on one real Redis) through one interleaving, reading the
stream for each follower at the chosen moment, and checks who delivered what.
"""

import pytest

from cluster.keys import RESTORING_KEY, STREAM_KEY
from cluster.store import RedisStore
from cluster.writer import LOST, WAIT

pytestmark = pytest.mark.timeout(30)


class Server:
    """One server's store, driven by hand: its writer's and follower's steps."""

    def __init__(self, url: str):
        self.store = RedisStore(url)
        self.delivered = []  # (id, text), in the order handed to the hub
        self.store._deliver = lambda messages: self.delivered.extend(
            (m.id, m.text) for m in messages
        )
        self.store._echo = lambda message: None

    def say(self, text: str) -> None:
        assert self.store.append("alice", text, 0) == []

    def write(self):
        """One turn of the writer: what waits, or a quiet check. Returns its outcome."""
        batch = list(self.store._pending)
        replies = self.store._write(batch) if batch else self.store._check_written()
        return self.store._took(batch, replies)

    def follow(self) -> None:
        """One turn of the follower: everything in the stream, as a read from its start."""
        entries = self.store.redis.client.xrange(STREAM_KEY)
        if entries:
            self.store._deliver_new({STREAM_KEY: entries})

    def stream(self) -> list:
        return [(i, f["message"]) for i, f in self.store.redis.client.xrange(STREAM_KEY)]


@pytest.fixture
def servers(redis_proc):
    pair = Server(redis_proc.url), Server(redis_proc.url)
    yield pair
    for server in pair:
        server.store.close(timeout=1)


@pytest.mark.parametrize("reader", ["b", "a"])
def test_a_lost_message_is_written_again_under_its_id_and_delivered_once(servers, reader):
    """Read before the loss by b (a's clients never got it) or by a itself (b's never
    did): written again under the id it had, each server's clients get it once."""
    a, b = servers
    a.say("hi")
    assert a.write() is None
    [(first_id, _)] = a.stream()
    {"a": a, "b": b}[reader].follow()
    a.store.redis.client.flushall()
    assert a.write() == LOST  # the quiet check finds Redis lost it
    assert a.store.redis.client.exists(RESTORING_KEY)
    assert a.write() is None  # written again
    assert a.stream() == [(first_id, "hi")]  # under the id the reader's clients saw
    a.follow()
    b.follow()
    assert a.delivered == [(first_id, "hi")]
    assert b.delivered == [(first_id, "hi")]


def test_new_lines_wait_while_a_server_restores(servers):
    """b's line after the loss waits, so a's lost line keeps its place before it."""
    a, b = servers
    b.say("before")
    b.write()
    a.say("hi")
    a.write()
    [_, (first_id, _)] = a.stream()
    a.store.redis.client.flushall()
    b.say("after")
    assert b.write() == LOST  # b's own line was lost too: b restores it
    assert b.write() == WAIT  # "after" waits while Redis is restored
    assert a.write() == LOST
    assert a.write() is None
    b.store.redis.client.delete(RESTORING_KEY)  # its time is up
    while b.store._pending:
        assert b.write() in (None, WAIT)
    texts = [text for _, text in a.stream()]
    assert texts.index("hi") < texts.index("after")
    assert sorted(texts) == ["after", "before", "hi"]
    assert (first_id, "hi") in a.stream()


def test_a_batch_cut_by_a_flush_is_written_again_in_order(servers):
    """Lost between two lines of one batch: both are in the stream once, in order."""
    a, _ = servers
    a.say("one")
    a.write()
    a.say("two")
    a.say("three")
    batch = list(a.store._pending)
    a.store._write(batch[:1])  # "two" reached Redis, then Redis lost everything
    a.store.redis.client.flushall()
    replies = a.store._write(batch)
    assert isinstance(replies[0], int) and replies[0] >= 0  # lost: Redis holds nothing of ours
    assert a.store._took(batch, replies) == LOST
    assert a.write() == WAIT  # "one" is written again; new lines wait their turn
    a.store.redis.client.delete(RESTORING_KEY)
    assert a.write() is None
    assert [text for _, text in a.stream()] == ["one", "two", "three"]


def test_a_delivered_message_is_never_written_again_under_another_id(servers):
    """Once the stream is past its id, a message a's clients saw stays out of it:
    under a new id, a client resuming after the old one would see it twice."""
    a, b = servers
    a.say("hi")
    a.write()
    a.follow()
    a.store.redis.client.flushall()
    b.say("first after")  # b wrote nothing before: it cannot tell Redis was emptied
    assert b.write() is None
    assert a.write() == LOST
    assert a.write() is None
    assert [text for _, text in a.stream()] == ["first after"]
    assert not a.store._pending


def test_a_server_back_from_an_outage_that_finds_entries_gone_holds_new_lines(servers):
    """When a failover lost another server's last writes and none of ours, our WRITE cannot
    tell; back from the outage, we see the stream end below what we read, and new lines
    wait while the other writes its messages again."""
    a, b = servers
    a.say("hi")
    a.write()
    b.follow()  # b read "hi" and handed it on
    b.store._check_gone_back()
    assert not b.store.redis.client.exists(RESTORING_KEY)  # nothing lost: nothing waits
    a.store.redis.client.flushall()  # as a replica promoted without "hi" would be
    b.store._check_gone_back()
    assert b.store.redis.client.exists(RESTORING_KEY)
    b.say("new")
    assert b.write() == WAIT
