"""The client when the server goes away: it rejoins and shows exactly what it missed."""

import queue
import re
import signal

import pytest
from clients import RECONNECT_WITHIN_S, finishes_the_half_typed_line
from conftest import free_port
from fakes import (
    DropsBeforeTheEcho,
    DropsTheFirstLine,
    NeverEchoes,
    NeverSends,
    NotSentOnce,
    RefusesTheFirstJoin,
    serving,
)
from proxy import Proxy
from wire import join

import chat_pb2 as pb
import terminal.lines as lines_module

# Keepalive (terminal/link.py): a ping every 10 s, 10 s for its ack. Beyond this, a
# dead connection went unnoticed.
DEAD_NOTICED_WITHIN_S = 25.0


def test_terminal_rejoins_after_a_crash_keeping_the_half_typed_line(terminal, server_process):
    """When the server dies mid-line, the client rejoins its restarted server; the line survives."""
    port = free_port()
    first = server_process(port=port)
    alice = terminal(first.address, "alice")
    alice.send("half")
    alice.expect_exact("half")  # echoed on the input line
    first.signal(signal.SIGKILL)
    alice.expect_exact("* reconnecting...")
    server_process(port=port)
    alice.expect_exact("* alice joined the chat", timeout=RECONNECT_WITHIN_S)
    finishes_the_half_typed_line(alice)


def test_piped_line_sent_during_a_restart_arrives_after_the_rejoin(pipe_client, server_process):
    """When a line is piped while the server is down, it is sent once the client rejoins."""
    port = free_port()
    first = server_process(port=port)
    alice = pipe_client(first.address, "alice")
    alice.send("one")
    alice.expect("[you] one")
    first.signal(signal.SIGKILL)
    alice.expect("* reconnecting...")
    alice.send("two")
    server_process(port=port)
    alice.expect("[you] two", timeout=RECONNECT_WITHIN_S)
    assert alice.finish() == 0
    assert sum("[you] two" in line for line in alice.seen) == 1


@pytest.mark.timeout(60)
def test_reconnect_after_a_crash_shows_each_missed_message_once(
    redis_proc, pipe_client, server_process
):
    """When the server dies and comes back, the client rejoins and shows what it missed, once."""
    port, redis = free_port(), ("--redis-url", redis_proc.url)
    first = server_process(*redis, port=port)
    alice = pipe_client(first.address, "alice")
    alice.expect("* alice joined the chat")
    carol = join(first.address, "carol")
    carol.say("before")
    alice.expect("[carol] before")
    first.signal(signal.SIGKILL)
    alice.expect("* reconnecting...")
    # While alice is away, dave talks on another server with the same Redis.
    other = server_process(*redis)
    dave = join(other.address, "dave")
    for text in ("missed 1", "missed 2"):
        dave.say(text)
    dave.messages(2)
    dave.close()
    other.signal(signal.SIGTERM)  # flushes its writes to Redis
    assert other.wait() == 0
    back = server_process(*redis, port=port)  # back on alice's address
    alice.expect("[dave] missed 2", timeout=RECONNECT_WITHIN_S)
    alice.expect("* alice joined the chat")
    carol = join(back.address, "carol")
    carol.say("after")
    alice.expect("[carol] after")
    carol.close()
    assert alice.finish() == 0
    for text in ("[carol] before", "[dave] missed 1", "[dave] missed 2", "[carol] after"):
        assert sum(text in line for line in alice.seen) == 1, (text, alice.seen)


def test_line_answered_not_sent_is_sent_again(pipe_client):
    """When the server answers NOT_SENT (cut off from the others), the client resends it."""
    servicer = NotSentOnce()
    with serving(servicer) as address:
        alice = pipe_client(address, "alice")
        alice.send("hello")
        alice.expect("! not sent")
        alice.expect("[you] hello")
        assert alice.finish() == 0
    assert servicer.received == ["hello", "hello"]


def test_own_message_replayed_after_a_rejoin_counts_as_its_echo(pipe_client):
    """When the call drops after the server stored a line, the replay confirms it: not resent."""
    servicer = DropsBeforeTheEcho()
    with serving(servicer) as address:
        alice = pipe_client(address, "alice")
        alice.send("hello")
        alice.expect("* reconnecting...")
        alice.expect("[you] hello")  # replayed on the rejoin
        alice.send("next")
        alice.expect("[you] next")
        assert alice.finish() == 0
    assert servicer.received == ["hello", "next"]


@pytest.mark.timeout(60)
def test_line_typed_into_a_dead_connection_is_sent_after_the_rejoin(server, terminal):
    """When the network dies silently, the client notices within ~20 s and resends the line."""
    bob = join(server.address, "bob")
    proxy = Proxy(server.port)
    try:
        alice = terminal(proxy.address, "alice")
        proxy.black_hole()
        alice.send("into the void\r")
        alice.expect_exact("* reconnecting...", timeout=DEAD_NOTICED_WITHIN_S)
        proxy.restore()
        alice.expect_exact("[you] into the void", timeout=RECONNECT_WITHIN_S)
        said = bob.next_event("chat_message", timeout=RECONNECT_WITHIN_S).chat_message
        assert (said.username, said.message) == ("alice", "into the void")
        alice.send("/quit\r")
        assert alice.exit_code() == 0
        bob.next_event("user_event", where=lambda e: e.type == pb.USER_LEFT)
        assert not [e for e in bob.drain() if e.WhichOneof("event") == "chat_message"]
    finally:
        bob.close()
        proxy.close()


def test_every_line_carries_its_own_key_the_same_on_each_resend(pipe_client):
    """When a line is sent again (NOT_SENT), it carries the key it first had; each line its own."""
    servicer = NotSentOnce()
    with serving(servicer) as address:
        alice = pipe_client(address, "alice")
        for text in ("one", "two", "one"):
            alice.send(text)
        assert alice.finish() == 0
    assert servicer.received == ["one", "one", "two", "two", "one"]
    keys = servicer.keys
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys), keys
    assert keys[0] == keys[1] != keys[2] == keys[3], keys
    assert keys[4] not in keys[:4]  # the same text typed again is another line


def test_line_sent_again_after_a_rejoin_keeps_its_key(pipe_client):
    """When the call drops before a line was taken, it is sent again after the rejoin, same key."""
    servicer = DropsTheFirstLine()
    with serving(servicer) as address:
        alice = pipe_client(address, "alice")
        alice.send("hello")
        alice.expect("* reconnecting...")
        alice.expect("[you] hello")
        assert alice.finish() == 0
    assert servicer.received == ["hello", "hello"]
    assert servicer.keys[0] and servicer.keys[0] == servicer.keys[1]


@pytest.mark.timeout(40)
def test_server_answering_not_sent_for_10_s_is_left_for_the_next(server, pipe_client):
    """When a server answers NOT_SENT for about 10 s, the client moves to the next address
    and the line goes there, once."""
    bob = join(server.address, "bob")
    with serving(NeverSends()) as cut_off:
        alice = pipe_client(f"{cut_off},{server.address}", "alice")
        alice.send("hello")
        alice.expect("* reconnecting... (the server could not send for 10 s)", timeout=15)
        alice.expect("[you] hello", timeout=RECONNECT_WITHIN_S)
        assert alice.finish() == 0
    said = bob.next_event("chat_message").chat_message
    assert (said.username, said.message) == ("alice", "hello")
    assert not [e for e in bob.drain() if e.WhichOneof("event") == "chat_message"]
    bob.close()


@pytest.mark.timeout(40)
def test_end_of_input_waits_bounded_and_names_lines_not_confirmed(pipe_client):
    """When lines are still pending at the end of input and none moves for 10 s, the client
    names each: the one sent without an answer as possibly delivered, the other as not
    sent; and exits 1."""
    with serving(NeverEchoes()) as address:
        alice = pipe_client(address, "alice")
        alice.send("one")
        alice.send("two")
        assert alice.finish(timeout=20) == 1
        assert "* waiting for 2 lines not yet confirmed (up to 10 s without progress)" in alice.seen
        assert alice.stderr().splitlines() == [
            "! sent, not confirmed (it may still arrive): one",
            "! not sent: two",
        ]


def test_join_refused_unavailable_is_tried_again_not_an_error(pipe_client):
    """When the server refuses the first join UNAVAILABLE (it cannot take us now), the
    client tries again a moment later, joins, and its line goes."""
    servicer = RefusesTheFirstJoin()
    with serving(servicer) as address:
        alice = pipe_client(address, "alice")
        alice.send("hello")
        alice.expect("cannot join now: the chat is reconnecting; trying again in")
        alice.expect("[you] hello")
        assert alice.finish() == 0
    assert servicer.joins == 2


class Sent:
    """A stand-in for a Link, for Lines alone: what went on it, and whether it was left."""

    def __init__(self):
        self.sent: queue.Queue = queue.Queue()  # ClientEvents, in order
        self.left: queue.Queue = queue.Queue()  # why Lines left it

    def send(self, event) -> None:
        self.sent.put(event)


def test_line_without_an_answer_is_sent_again_on_the_next_call_never_given_up(monkeypatch):
    """When a line gets no answer at all, the client leaves that call and sends the line,
    same key, on the next; on leaving it is named as possibly delivered, not as lost."""
    monkeypatch.setattr(lines_module, "ECHO_TIMEOUT_S", 0.3)  # 30 s in the real client
    lines = lines_module.Lines(lambda notice: None, lambda link, why: link.left.put(why))
    stuck, fresh = Sent(), Sent()
    lines.add(lines_module.message_line("hello", room="lobby"))
    lines.up(stuck)
    first = stuck.sent.get(timeout=5).chat_message
    assert stuck.left.get(timeout=5) == lines_module.SILENT  # left, not given up
    assert lines.count() == 1
    lines.up(fresh)
    again = fresh.sent.get(timeout=5).chat_message
    assert (again.message, again.key) == (first.message, first.key)
    lines.close()
    assert lines.left() == [("hello", True)]  # it may have been delivered: never "not sent"
