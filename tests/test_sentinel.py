"""Redis that fails over: servers on a `redis+sentinel://` URL follow the promoted replica.

A real master, replica and three sentinels (deploy/sentinel/start.sh, short
timings), two real servers on the Sentinel URL, clients on each. The master
is SIGKILLed mid-chat; a client whose line is refused (NOT_SENT) sends it
again, as client.py does.
"""

import os
import signal
import threading
import time

import pytest
import redis
from conftest import wait_until
from deployed import sentinel_set  # noqa: F401 - a fixture
from wire import Conn, join

import chat_pb2 as pb

pytestmark = pytest.mark.timeout(60)

FAILOVER_WITHIN_S = 15.0  # from the master's death to chat flowing again on both servers
RESEND_AFTER_S = 0.25  # a refused line is sent again after this long, like client.py's


class Chatter:
    """A joined stream and every chat message it received, in order."""

    def __init__(self, address: str, name: str):
        self.name = name
        self.conn: Conn = join(address, name)
        self.messages: list[pb.ChatMessageEvent] = []

    def next(self, timeout: float) -> pb.ServerEvent:
        event = self.conn.next_event(None, timeout)
        if event.WhichOneof("event") == "chat_message":
            self.messages.append(event.chat_message)
        return event

    def texts(self) -> list[str]:
        return [m.message for m in self.messages]

    def wait_for(self, text: str, deadline: float) -> None:
        while text not in self.texts():
            self.next(max(0.1, deadline - time.monotonic()))


def say_until_delivered(sender: Chatter, text: str, others: list, within: float) -> None:
    """Send `text`, again after each NOT_SENT, until its echo; then until everyone has it."""
    deadline = time.monotonic() + within
    sender.conn.say(text)
    while text not in sender.texts():
        event = sender.next(max(0.1, deadline - time.monotonic()))
        refused = event.WhichOneof("event") == "system_event"
        if refused and event.system_event.code == pb.NOT_SENT:
            time.sleep(RESEND_AFTER_S)
            sender.conn.say(text)
    for other in others:
        other.wait_for(text, deadline)


def assert_in_order_once(chatter: Chatter) -> None:
    ids = [tuple(map(int, m.id.split("-"))) for m in chatter.messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"{chatter.name}: ids {ids}"
    texts = chatter.texts()
    assert len(set(texts)) == len(texts), f"{chatter.name} got a message twice: {texts}"


def stored_texts(port: int) -> list[str]:
    """The lobby's history as the Redis on `port` holds it, oldest first."""
    with redis.Redis(port=port, decode_responses=True) as client:
        return [fields["message"] for _, fields in client.xrange("chat:messages")]


def restart_after_failover(sentinel_set) -> None:  # noqa: F811
    if wait_until(lambda: sentinel_set.master_now() == sentinel_set.replica_port, 15):
        sentinel_set.restart_master()


def test_master_killed_chat_flows_again_and_nothing_echoed_is_lost(sentinel_set, server_process):  # noqa: F811
    """When the Redis master dies under a steady chat, every server follows the promoted
    replica within seconds: chat flows again on both, ids still increase, and with
    --redis-replicas 1 every message echoed is kept and delivered once."""
    servers = [
        server_process("--redis-url", sentinel_set.url, "--redis-replicas", "1", "--no-rate-limit")
        for _ in "ab"
    ]
    alice, bob = Chatter(servers[0].address, "alice"), Chatter(servers[1].address, "bob")
    for n in range(3):
        say_until_delivered(bob, f"bob before {n}", [alice], within=5)
    n, killed, flowing = 0, None, None
    while flowing is None or n < flowing + 5:  # one line in flight at all times
        if n == 10:
            sentinel_set.kill_master()
            killed = time.monotonic()
            # Once the replica is master, a supervisor restarts the dead one: Sentinel
            # makes it the new master's replica, and --redis-replicas 1 is met again.
            threading.Thread(target=restart_after_failover, args=(sentinel_set,)).start()
        sent = time.monotonic()
        say_until_delivered(alice, f"steady {n}", [], within=FAILOVER_WITHIN_S + 5)
        if killed and flowing is None and time.monotonic() - sent < 1:
            flowing = n  # answered at once again: the new master took over
        n += 1
    say_until_delivered(bob, "after, from b", [alice], within=5)
    took = time.monotonic() - killed
    assert took < FAILOVER_WITHIN_S, f"chat flowed again only after {took:.1f} s"
    # Whichever Redis Sentinel names master now (on a loaded machine it may have failed
    # over a second time, back to the restarted one): it holds every echoed message.
    new_master = sentinel_set.master_now()
    echoed = [t for t in alice.texts() if t.startswith("steady")]
    assert echoed == [f"steady {i}" for i in range(n)]
    for i in range(n):
        bob.wait_for(f"steady {i}", time.monotonic() + 5)
    assert [t for t in bob.texts() if t.startswith("steady")] == echoed
    kept = stored_texts(new_master)
    assert [t for t in kept if t.startswith("steady")] == echoed, "an echoed message was lost"
    for chatter in (alice, bob):
        assert_in_order_once(chatter)
    for chatter in (alice, bob):
        chatter.conn.close()


def test_replica_silent_nothing_is_echoed_and_senders_are_refused(sentinel_set, server_process):  # noqa: F811
    """When --redis-replicas 1 and the replica stops confirming, no message is echoed or
    delivered, the sender gets NOT_SENT; once it confirms, every line arrives once."""
    server = server_process(
        "--redis-url", sentinel_set.url, "--redis-replicas", "1", "--no-rate-limit"
    )
    server.watch_log()
    alice, bob = Chatter(server.address, "alice"), Chatter(server.address, "bob")
    say_until_delivered(alice, "first", [bob], within=5)
    replica = sentinel_set.pid("replica")
    os.kill(replica, signal.SIGSTOP)
    try:
        alice.conn.say("held")
        assert server.wait_for_log("refusing messages", timeout=10)
        assert "held" not in bob.texts() + alice.texts()
        alice.conn.say("refused")
        event = alice.conn.next_event("system_event", where=lambda e: e.code == pb.NOT_SENT)
        assert event.system_event.message
        assert "held" not in [m.message for m in drained_messages(bob)]
    finally:
        os.kill(replica, signal.SIGCONT)
    say_until_delivered(alice, "refused", [bob], within=15)
    bob.wait_for("held", time.monotonic() + 5)
    assert bob.texts() == ["first", "held", "refused"]
    assert_in_order_once(bob)
    for chatter in (alice, bob):
        chatter.conn.close()


def drained_messages(chatter: Chatter) -> list:
    """Chat messages `chatter` has received so far, without waiting (kept in its list)."""
    for event in chatter.conn.drain():
        if event.WhichOneof("event") == "chat_message":
            chatter.messages.append(event.chat_message)
    return chatter.messages


def test_servers_start_on_a_sentinel_url_and_say_so(sentinel_set, server_process):  # noqa: F811
    """When started on a Sentinel URL, the server reaches the master through it and
    its start-up line names the URL (never a password)."""
    server = server_process("--redis-url", sentinel_set.url)
    assert "redis+sentinel://" in server.banner
    alice = Chatter(server.address, "alice")
    say_until_delivered(alice, "hello", [], within=5)
    master = sentinel_set.ask(sentinel_set.master_port, "xrange", "chat:messages", "-", "+")
    assert "hello" in master
    alice.conn.close()
