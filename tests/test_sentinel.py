"""Redis that fails over: servers on a `redis+sentinel://` URL follow the promoted replica.

A real master, replica and three sentinels (deploy/sentinel/start.sh, short
timings), two real servers on the Sentinel URL, clients on each. The master
is SIGKILLed mid-chat; a client whose line is refused (NOT_SENT) sends it
again, as client.py does.
"""

import time

import pytest
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


def test_master_killed_chat_flows_again_on_both_servers(sentinel_set, server_process):  # noqa: F811
    """When the Redis master dies, every server follows the promoted replica within
    seconds: chat flows again on both, ids still increase, nothing is doubled."""
    servers = [server_process("--redis-url", sentinel_set.url, "--rate", "100") for _ in "ab"]
    alice, bob = Chatter(servers[0].address, "alice"), Chatter(servers[1].address, "bob")
    for n in range(3):
        say_until_delivered(alice, f"before {n}", [bob], within=5)
        say_until_delivered(bob, f"bob before {n}", [alice], within=5)
    old_master = sentinel_set.master_port
    sentinel_set.kill_master()
    killed = time.monotonic()
    say_until_delivered(alice, "after, from a", [bob], within=FAILOVER_WITHIN_S + 5)
    say_until_delivered(bob, "after, from b", [alice], within=FAILOVER_WITHIN_S + 5)
    took = time.monotonic() - killed
    assert took < FAILOVER_WITHIN_S, f"chat flowed again only after {took:.1f} s"
    assert sentinel_set.master_now() != old_master
    for n in range(3):  # and goes on, on the new master
        say_until_delivered(alice, f"later {n}", [bob], within=5)
    for chatter in (alice, bob):
        assert_in_order_once(chatter)
        assert chatter.texts()[-1] == "later 2"
    for chatter in (alice, bob):
        chatter.conn.close()


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
