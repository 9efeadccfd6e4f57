"""The client when the server goes away: it rejoins and shows exactly what it missed."""

import signal

import pytest
from clients import RECONNECT_WITHIN_S
from conftest import ServerProcess, free_port
from wire import join

# -- reconnect ------------------------------------------------------------------------


class ServerOnPort(ServerProcess):
    """A ServerProcess on a port the test picks, so a server can come back in place."""

    def __init__(self, port: int, *args: str):
        super().__init__("--port", str(port), *args)  # click keeps the last --port
        self.port, self.address = port, f"127.0.0.1:{port}"


def test_terminal_rejoins_after_a_crash_keeping_the_half_typed_line(terminal):
    """When the server dies mid-line, the client rejoins its restarted server; the line survives."""
    port = free_port()
    servers = [ServerOnPort(port)]
    try:
        alice = terminal(servers[0].address, "alice")
        alice.send("half")
        alice.expect_exact("half")  # echoed on the input line
        servers[0].signal(signal.SIGKILL)
        alice.expect_exact("* reconnecting...")
        servers.append(ServerOnPort(port))
        alice.expect_exact("* alice joined the chat", timeout=RECONNECT_WITHIN_S)
        alice.expect_exact("> half")
        alice.send(" done\r")
        alice.expect_exact("[you] half done")
        servers[1].signal(signal.SIGTERM)
        alice.expect_exact("server shut down")
        assert alice.exit_code() == 1
        assert b"Traceback" not in alice.before
    finally:
        for server in servers:
            server.stop()


def test_piped_line_sent_during_a_restart_arrives_after_the_rejoin(pipe_client):
    """When a line is piped while the server is down, it is sent once the client rejoins."""
    port = free_port()
    servers = [ServerOnPort(port)]
    try:
        alice = pipe_client(servers[0].address, "alice")
        alice.send("one")
        alice.expect("[you] one")
        servers[0].signal(signal.SIGKILL)
        alice.expect("* reconnecting...")
        alice.send("two")
        servers.append(ServerOnPort(port))
        alice.expect("[you] two", timeout=RECONNECT_WITHIN_S)
        assert alice.finish() == 0
        assert sum("[you] two" in line for line in alice.seen) == 1
    finally:
        for server in servers:
            server.stop()


@pytest.mark.timeout(60)
def test_reconnect_after_a_crash_shows_each_missed_message_once(redis_proc, pipe_client):
    """When the server dies and comes back, the client rejoins and shows what it missed, once."""
    port, redis = free_port(), ("--redis-url", redis_proc.url)
    servers = [ServerOnPort(port, *redis)]
    try:
        alice = pipe_client(servers[0].address, "alice")
        alice.expect("* alice joined the chat")
        carol = join(servers[0].address, "carol")
        carol.say("before")
        alice.expect("[carol] before")
        servers[0].signal(signal.SIGKILL)
        alice.expect("* reconnecting...")
        # While alice is away, dave talks on another server with the same Redis.
        servers.append(ServerProcess(*redis))
        dave = join(servers[1].address, "dave")
        for text in ("missed 1", "missed 2"):
            dave.say(text)
        dave.messages(2)
        dave.close()
        servers[1].signal(signal.SIGTERM)  # flushes its writes to Redis
        assert servers[1].wait() == 0
        servers.append(ServerOnPort(port, *redis))  # back on alice's address
        alice.expect("[dave] missed 2", timeout=RECONNECT_WITHIN_S)
        alice.expect("* alice joined the chat")
        carol = join(servers[2].address, "carol")
        carol.say("after")
        alice.expect("[carol] after")
        carol.close()
        assert alice.finish() == 0
        for text in ("[carol] before", "[dave] missed 1", "[dave] missed 2", "[carol] after"):
            assert sum(text in line for line in alice.seen) == 1, (text, alice.seen)
    finally:
        for server in servers:
            server.stop()
