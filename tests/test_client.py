"""The terminal client (SPEC §4): piped and on a terminal, errors, reconnect.

Clients run as real subprocesses (`python client.py`): piped ones with
stdin/stdout pipes, interactive ones on a pseudo-terminal with pexpect.
Every wait is on output, with a deadline.
"""

import fcntl
import os
import queue
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from concurrent import futures

import grpc
import pexpect
import pexpect.fdpexpect
import pytest
from conftest import (
    EVENT_TIMEOUT_S,
    ROOT,
    ServerProcess,
    free_port,
    join,
)

import chat_pb2 as pb
import chat_pb2_grpc
from render import Renderer, name_colour, use_colour

CLIENT = str(ROOT / "client.py")
# Plain output to match against; no cursor-position queries a pty cannot answer.
CLIENT_ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("CHAT_NAME", "CHAT_ADDRESS")},
    **{"NO_COLOR": "1", "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"},
}
pytestmark = pytest.mark.timeout(30)  # each test; the reconnect one gets more

ERROR_WITHIN_S = 5.0  # SPEC §4: an error is reported this fast, never a hang
# With Redis, a SIGKILLed server's users count as online until its liveness
# key expires (~12 s, SPEC §7): the rejoin gets ALREADY_EXISTS and retries
# with backoff (waits up to 5 s) until then.
RECONNECT_WITHIN_S = 25.0


class PipeClient:
    """`python client.py` with stdin, stdout and stderr piped; lines read with deadlines."""

    def __init__(self, address: str, name: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, CLIENT, "--name", name, "--address", address, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=CLIENT_ENV,
            cwd=ROOT,
        )
        self.seen: list[str] = []  # every stdout line read so far
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, text: str, timeout=EVENT_TIMEOUT_S) -> str:
        """The next stdout line containing `text`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout} s in {self.seen}") from None
            if line is None:
                raise AssertionError(f"output ended without {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout=10.0) -> int:
        """Close stdin, wait for the exit, collect the rest of stdout."""
        self.proc.stdin.close()
        code = self.proc.wait(timeout)
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code

    def stderr(self) -> str:
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def pipe_client():
    started = []

    def start(*args):
        client = PipeClient(*args)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


class Terminal(pexpect.fdpexpect.fdspawn):
    """`python client.py` on a pseudo-terminal, so it runs interactively.

    NOTE: started with subprocess, not pexpect.spawn: pexpect forks this
    process, and gRPC's fork handlers, with this process's gRPC threads
    running, can break the child before it execs. The child gets no
    controlling terminal, so ^C reaches it as a key, not as SIGINT.
    """

    def __init__(self, address: str, name: str | None):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        naming = ["--name", name] if name else []
        self.proc = subprocess.Popen(
            [sys.executable, CLIENT, *naming, "--address", address],
            stdin=slave, stdout=slave, stderr=slave, env=CLIENT_ENV, cwd=ROOT,
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        super().__init__(master, timeout=EVENT_TIMEOUT_S)

    def exit_code(self) -> int:
        """Wait for the end of output and of the process."""
        self.expect(pexpect.EOF)
        return self.proc.wait(EVENT_TIMEOUT_S)


@pytest.fixture
def terminal():
    """Start interactive clients; each has joined when it is returned."""
    started = []

    def start(address: str, name: str) -> Terminal:
        child = Terminal(address, name)
        started.append(child)
        child.expect_exact(f"* {name} joined the chat")
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(5)
        child.close()


def run_client(*args: str, stdin: str = "") -> tuple[subprocess.CompletedProcess, float]:
    """Run a piped client to its end; return the result and how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, CLIENT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=CLIENT_ENV,
        cwd=ROOT,
        timeout=3 * ERROR_WITHIN_S,
    )
    return result, time.monotonic() - started


def assert_one_clean_error(result: subprocess.CompletedProcess, took_s: float, words: str):
    assert result.returncode != 0
    assert took_s < ERROR_WITHIN_S
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr


# -- piped -----------------------------------------------------------------------


def test_piped_message_shows_as_you_to_sender_and_by_name_to_others(server, pipe_client):
    """When alice pipes a line, she sees [you] and bob sees [alice], with joins and leaves."""
    bob = pipe_client(server.address, "bob")
    bob.expect("* bob joined the chat")
    alice = pipe_client(server.address, "alice")
    alice.send("hello")
    assert alice.finish() == 0
    assert "* alice joined the chat" in alice.seen and "[you] hello" in alice.seen
    bob.expect("* alice joined the chat")
    bob.expect("[alice] hello")
    bob.expect("* alice left the chat")
    assert bob.finish() == 0


def test_piped_lines_over_the_rate_limit_all_arrive_once_in_order(server_factory, pipe_client):
    """When piped lines outrun the rate limit, the client resends until each got through."""
    server = server_factory(rate=5.0, burst=2)
    alice = pipe_client(server.address, "alice")
    lines = [f"line {n}" for n in range(6)]
    for line in lines:
        alice.send(line)
    assert alice.finish() == 0
    echoes = [seen for seen in alice.seen if seen.startswith("[you] ")]
    assert echoes == [f"[you] {line}" for line in lines]
    assert any(seen.startswith("! rate limited") for seen in alice.seen)


def test_history_is_marked_and_timestamps_prefix_the_time(server, pipe_client):
    """When a client joins after messages were sent, it shows them as history."""
    carol = join(server.address, "carol")
    carol.say("earlier")
    carol.messages(1)
    alice = pipe_client(server.address, "alice", "--timestamps")
    line = alice.expect("[carol] earlier")
    assert "[history]" in line
    assert line[:2].isdigit() and line[2] == ":" and line[5] == " "  # "HH:MM ..."
    assert alice.finish() == 0
    carol.close()


def test_escape_codes_in_a_message_never_reach_the_screen(server, pipe_client):
    """When someone sends escape sequences, the other client prints none of them."""
    bob = pipe_client(server.address, "bob")
    bob.expect("* bob joined the chat")
    mallory = join(server.address, "mallory")
    mallory.say("\x1b[2Jwiped \x1b]0;owned\x07title")
    bob.expect("[mallory] ")
    assert bob.finish() == 0
    assert not any("\x1b" in line or "\x07" in line for line in bob.seen), bob.seen
    mallory.close()


class LyingServicer(chat_pb2_grpc.ChatServiceServicer):
    """A server that sends escape codes, to show the client cleans text itself."""

    def Chat(self, request_iterator, context):
        name = next(request_iterator).user_event.username
        evil = "\x1b[2Jwiped \x1b]0;owned\x07title\nforged"
        yield pb.ServerEvent(chat_message=pb.ChatMessageEvent(username="ev\x1bil", message=evil))
        yield pb.ServerEvent(system_event=pb.SystemEvent(message="\x1b[31mnotice"))
        yield pb.ServerEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
        for _ in request_iterator:  # until the client leaves
            pass


def test_client_cleans_text_even_if_the_server_does_not(pipe_client):
    """When a server sends escape codes, the client strips them before printing."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(LyingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        alice = pipe_client(f"127.0.0.1:{port}", "alice")
        line = alice.expect("wiped")
        assert line == "[evil] [2Jwiped ]0;ownedtitle forged"  # defused: ESC, BEL, \n gone
        assert alice.finish() == 0
        assert not any("\x1b" in line or "\x07" in line for line in alice.seen), alice.seen
    finally:
        server.stop(0)


# -- on a terminal -------------------------------------------------------------------


def test_terminal_keeps_a_half_typed_line_while_messages_arrive(server, terminal):
    """When bob writes while alice is typing, her line survives and is sent whole."""
    alice = terminal(server.address, "alice")
    bob = terminal(server.address, "bob")
    alice.expect_exact("* bob joined the chat")
    alice.send("hel")
    bob.expect_exact("alice typing...")
    bob.send("hi alice\r")
    alice.expect_exact("[bob] hi alice")
    alice.expect_exact("> hel")  # the input line, redrawn below the new message
    alice.send("lo there\r")
    bob.expect_exact("[alice] hello there")
    alice.expect_exact("[you] hello there")
    bob.send("/quit\r")
    assert bob.exit_code() == 0
    alice.expect_exact("* bob left the chat")


def test_terminal_typing_starts_on_a_key_and_stops_when_idle_or_cleared(server, terminal):
    """When alice types, others get TYPING_START; 2 s idle or a cleared line sends STOP."""
    watcher = join(server.address, "watcher")
    alice = terminal(server.address, "alice")
    typing = lambda kind: watcher.next_event(  # noqa: E731
        "typing_event", timeout=EVENT_TIMEOUT_S, where=lambda e: e.type == kind
    )
    alice.send("h")
    typing(pb.TYPING_START)
    started = time.monotonic()
    typing(pb.TYPING_STOP)
    assert time.monotonic() - started < 4.0  # the client's 2 s, not the server's 5 s
    alice.send("i")
    typing(pb.TYPING_START)
    alice.send("\x7f\x7f")  # backspace twice: the line is empty again
    typing(pb.TYPING_STOP)
    alice.send("\x04")  # Ctrl-D
    assert alice.exit_code() == 0
    watcher.close()


def test_terminal_asks_for_a_name_until_it_follows_the_rule(server):
    """When --name is left out on a terminal, the client asks until the name is valid."""
    alice = Terminal(server.address, None)
    try:
        alice.expect_exact("name:")
        alice.send("al ice\r")
        alice.expect_exact("use 1-32 characters")
        alice.send("alice\r")
        alice.expect_exact("* alice joined the chat")
        alice.send("/quit\r")
        assert alice.exit_code() == 0
    finally:
        alice.proc.kill()
        alice.close()


def test_terminal_help_lists_commands_and_ctrl_c_leaves_cleanly(server, terminal):
    """When the user types /help, commands are listed; Ctrl-C then exits 0, no traceback."""
    alice = terminal(server.address, "alice")
    alice.send("/help\r")
    alice.expect_exact("/quit")
    alice.expect_exact(">")  # the next read is up: the terminal is in raw mode
    alice.send("\x03")  # Ctrl-C, as a key
    assert alice.exit_code() == 0
    assert b"Traceback" not in alice.before


def test_terminal_sigint_between_reads_leaves_cleanly(server, terminal):
    """When SIGINT comes while no line is being read, the client still exits 0, no traceback."""
    alice = terminal(server.address, "alice")
    alice.send("/help\r")
    alice.expect_exact("/help")  # printed between two reads
    alice.proc.send_signal(signal.SIGINT)
    assert alice.exit_code() == 0
    assert b"Traceback" not in alice.before and b"Exception" not in alice.before


# -- errors ----------------------------------------------------------------------------


def test_unreachable_server_is_one_error_line(tmp_path):
    """When nothing listens at the address, the client says so and exits non-zero."""
    result, took_s = run_client("--name", "alice", "--address", f"127.0.0.1:{free_port()}")
    assert_one_clean_error(result, took_s, "cannot reach")


def test_name_taken_is_one_error_line(server):
    """When the name is online, the client says so and exits non-zero."""
    alice = join(server.address, "alice")
    result, took_s = run_client("--name", "alice", "--address", server.address)
    assert_one_clean_error(result, took_s, "alice is already online")
    alice.close()


@pytest.mark.parametrize("name", ["al ice", "a" * 33, "bob!"])
def test_invalid_name_is_one_error_line(name):
    """When the name breaks the rule, the client says so before connecting."""
    result, took_s = run_client("--name", name, "--address", "127.0.0.1:1")
    assert_one_clean_error(result, took_s, "invalid name")


def test_piped_without_a_name_is_one_error_line():
    """When input is piped and no name is given, the client says so instead of asking."""
    result, took_s = run_client("--address", "127.0.0.1:1", stdin="hello\n")
    assert_one_clean_error(result, took_s, "no name")


def test_server_shutdown_ends_a_waiting_client_with_an_error(server_process, pipe_client):
    """When the server stops (SIGTERM), a waiting client says so and exits non-zero."""
    server = server_process()
    bob = pipe_client(server.address, "bob")
    bob.expect("* bob joined the chat")
    server.signal(signal.SIGTERM)
    assert bob.proc.wait(ERROR_WITHIN_S) != 0
    error = bob.stderr()
    assert "server shut down" in error and "Traceback" not in error
    assert server.wait() == 0


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


# -- the renderer, alone ----------------------------------------------------------------


def chat(name: str, text: str, replay=False) -> pb.ServerEvent:
    message = pb.ChatMessageEvent(username=name, message=text, replay=replay)
    return pb.ServerEvent(chat_message=message)


def typing(name: str, kind) -> pb.ServerEvent:
    return pb.ServerEvent(typing_event=pb.TypingEvent(username=name, type=kind))


def test_renderer_lines_follow_the_spec(capsys):
    """When events arrive, each becomes the line SPEC §4 shows."""
    renderer = Renderer("me")
    renderer.show(chat("me", "hello"))
    renderer.show(chat("alice", "hi", replay=True))
    renderer.show(pb.ServerEvent(user_event=pb.UserEvent(type=pb.USER_LEFT, username="bob")))
    renderer.show(pb.ServerEvent(system_event=pb.SystemEvent(message="x", code=pb.RATE_LIMITED)))
    assert capsys.readouterr().out.splitlines() == [
        "[you] hello",
        "[history] [alice] hi",
        "* bob left the chat",
        "! x",
    ]


def test_renderer_typing_line_lists_typers_until_they_stop(capsys):
    """When several people type, the typing line names them all; a stop removes one."""
    renderer = Renderer("me")
    assert renderer.typing_line() == ""
    renderer.show(typing("alice", pb.TYPING_START))
    renderer.show(typing("bob", pb.TYPING_START))
    assert renderer.typing_line() == "* alice, bob typing..."
    renderer.show(typing("alice", pb.TYPING_STOP))
    assert renderer.typing_line() == "* bob typing..."
    renderer.show(pb.ServerEvent(user_event=pb.UserEvent(type=pb.USER_LEFT, username="bob")))
    assert renderer.typing_line() == ""


def test_renderer_colours_names_stably_and_only_when_asked(capsys):
    """When colour is on, a name always gets the same colour; off, no escape codes at all."""
    assert name_colour("alice") == name_colour("alice")
    Renderer("me", colour=True).show(chat("alice", "hi"))
    assert f"\x1b[{name_colour('alice')}malice\x1b[0m" in capsys.readouterr().out
    Renderer("me", colour=False).show(chat("alice", "hi"))
    assert "\x1b" not in capsys.readouterr().out


def test_no_color_switches_colour_off(monkeypatch):
    """When NO_COLOR is set, even a terminal gets no colour."""

    class Tty:
        def isatty(self):
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())
    monkeypatch.delenv("NO_COLOR")
    assert use_colour(Tty())
