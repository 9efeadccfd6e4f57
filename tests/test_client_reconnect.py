"""The client when the server goes away: it rejoins and shows exactly what it missed."""

import signal

import pytest
from clients import RECONNECT_WITHIN_S
from conftest import free_port
from wire import join


def test_terminal_rejoins_after_a_crash_keeping_the_half_typed_line(terminal, server_process):
    """When the server dies mid-line, the client rejoins its restarted server; the line survives."""
    port = free_port()
    first = server_process(port=port)
    alice = terminal(first.address, "alice")
    alice.send("half")
    alice.expect_exact("half")  # echoed on the input line
    first.signal(signal.SIGKILL)
    alice.expect_exact("* reconnecting...")
    again = server_process(port=port)
    alice.expect_exact("* alice joined the chat", timeout=RECONNECT_WITHIN_S)
    alice.expect_exact("> half")
    alice.send(" done\r")
    alice.expect_exact("[you] half done")
    again.signal(signal.SIGTERM)
    alice.expect_exact("server shut down")
    assert alice.exit_code() == 1
    assert b"Traceback" not in alice.before


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
