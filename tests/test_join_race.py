"""A message posted while a joiner's history is read reaches the joiner once, live.

The joiner is registered before its history is read, so a message posted in
between is both in the store and in the joiner's queue; the history read
stops at the room's last message delivered when the joiner was registered
(session.py, `_replay`), so the queued copy is the one sent, live. A store
wrapper makes that window certain instead of lucky: its history read lets
someone post, and waits for the post to be delivered, before it reads.
"""

import threading

import pytest
from conftest import stored, wait_until
from wire import Conn, enter_event, join, join_event

from cluster.store import RedisStore
from store import MemoryStore

pytestmark = pytest.mark.timeout(30)


class PostDuringHistory:
    """A store whose next history read first runs `hook` (which posts a message)."""

    def __init__(self, store):
        self._store = store
        self.hook = None

    def history(self, limit, after_id=None, room="lobby"):
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return self._store.history(limit, after_id, room)

    def __getattr__(self, name):  # everything else is the real store's
        return getattr(self._store, name)


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return MemoryStore()
    return RedisStore(request.getfixturevalue("redis_proc").url)


@pytest.mark.parametrize("resume", [False, True], ids=["last-n", "last-seen-id"])
def test_message_posted_during_the_history_read_arrives_once(server_factory, store, resume):
    """When bob posts while alice's history is read, alice sees it once, live."""
    wrapper = PostDuringHistory(store)
    server = server_factory(store=wrapper)
    bob = join(server.address, "bob")
    bob.say("before")
    before = bob.messages(1)[0]

    posted = threading.Event()

    def post_during():
        bob.say("during")
        assert bob.messages(1)[0].message == "during"  # delivered to every queue, alice's too
        posted.set()

    wrapper.hook = post_during
    alice = Conn(server.address, join_event("alice", before.id if resume else ""))
    assert posted.wait(10), "the history read never ran"
    bob.say("after")  # a copy of "during" left in alice's queue would come before this
    expected = ([("before", True)] if not resume else []) + [("during", False), ("after", False)]
    seen = [(m.message, m.replay) for m in alice.messages(len(expected))]
    assert seen == expected
    alice.close()
    bob.close()


def test_own_message_said_during_a_later_joins_history_read_is_echoed_live(server_factory, store):
    """When alice says something into #rust while #rust's history is read for her join,
    she gets #rust's history, then her own line once, live: its echo, not a replay."""
    wrapper = PostDuringHistory(store)
    server = server_factory(store=wrapper)
    carol = join(server.address, "carol", room="rust")
    carol.say("old rust")
    carol.messages(1)
    alice = join(server.address, "alice")
    said = threading.Event()

    def say_during():
        alice.say("mine", room="rust")
        said.set()
        assert wait_until(lambda: [m.text for m in stored(store, room="rust")][-1:] == ["mine"])

    wrapper.hook = say_during
    alice.send(enter_event("rust"))
    assert said.wait(10), "the history read never ran"
    seen = [(m.message, m.room, m.replay) for m in alice.messages(2)]
    assert seen == [("old rust", "rust", True), ("mine", "rust", False)]
    carol.say("after")
    assert [m.message for m in alice.messages(1)] == ["after"]  # nothing doubled before it
    alice.close()
    carol.close()
