"""The client on a terminal, and the renderer on its own."""

import signal
import time

import pytest
from clients import Terminal
from wire import EVENT_TIMEOUT_S, join

import chat_pb2 as pb
from terminal.render import Renderer, name_colour, use_colour

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


def test_terminal_sigint_during_a_read_leaves_cleanly(server, terminal):
    """When SIGINT comes while a line is being read, the client exits 0, no traceback."""
    alice = terminal(server.address, "alice")
    alice.send("half")
    alice.expect_exact("half")  # the read is up, with a half-typed line
    alice.proc.send_signal(signal.SIGINT)
    assert alice.exit_code() == 0
    assert b"Traceback" not in alice.before


# -- the renderer, alone ----------------------------------------------------------------


def chat(name: str, text: str, replay=False) -> pb.ServerEvent:
    message = pb.ChatMessageEvent(username=name, message=text, replay=replay)
    return pb.ServerEvent(chat_message=message)


def typing(name: str, kind) -> pb.ServerEvent:
    return pb.ServerEvent(typing_event=pb.TypingEvent(username=name, type=kind))


def test_renderer_lines_follow_the_spec(capsys):
    """When events arrive, each becomes the line the README shows."""
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


def test_terminal_keeps_typing_shown_while_the_keys_keep_coming(server, terminal):
    """When alice types for longer than the server's 5 s silence rule, no stop is sent."""
    watcher = join(server.address, "watcher")
    alice = terminal(server.address, "alice")
    is_stop = lambda e: e.type == pb.TYPING_STOP  # noqa: E731
    alice.send("a")
    watcher.next_event("typing_event", where=lambda e: e.type == pb.TYPING_START)
    typing_until = time.monotonic() + 6.5
    while time.monotonic() < typing_until:
        with pytest.raises(AssertionError, match="no typing_event"):
            watcher.next_event("typing_event", timeout=0.5, where=is_stop)  # a key every 0.5 s
        alice.send("a")
    alice.send("\r")
    watcher.next_event("typing_event", where=is_stop)
    alice.expect_exact("[you] aaa")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    watcher.close()


def test_terminal_lines_over_the_rate_limit_are_resent_in_order(server_factory, terminal):
    """When lines typed at once outrun the rate limit, each is sent after the wait named."""
    server = server_factory(rate=2.0, burst=1)
    bob = join(server.address, "bob")
    alice = terminal(server.address, "alice")
    alice.send("one\rtwo\rthree\r")
    assert [m.message for m in bob.messages(3)] == ["one", "two", "three"]
    alice.expect_exact("[you] three")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    bob.next_event("user_event", where=lambda e: e.type == pb.USER_LEFT)
    assert not [e for e in bob.drain() if e.WhichOneof("event") == "chat_message"]  # once each
    bob.close()


@pytest.mark.parametrize("leave", ["/quit", "ctrl-d"])
def test_quit_waits_for_the_lines_the_rate_limit_holds_and_says_so(server_factory, terminal, leave):
    """When /quit or Ctrl-D comes while typed lines still wait on the rate limit, the client
    says it waits, sends each, then leaves with status 0."""
    server = server_factory(rate=1.0, burst=1)
    bob = join(server.address, "bob")
    alice = terminal(server.address, "alice")
    alice.send("one\rtwo\rthree\rfour\r")
    if leave == "/quit":
        alice.send("/quit\r")
    else:  # typed ahead, a Ctrl-D could reach the terminal between two reads, as EOF
        alice.send("x")
        alice.expect_exact("> x")  # a read is running: the keys below are its own
        alice.send("\x7f\x04")  # empty the line, then Ctrl-D
    alice.expect_exact("* waiting for")
    assert alice.exit_code() == 0
    assert [m.message for m in bob.messages(4)] == ["one", "two", "three", "four"]
    bob.close()
