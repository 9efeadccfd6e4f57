"""The real client on a pseudo-terminal in several rooms: the prompt, switching, Tab, the bell.

Each test runs `python client.py` on a pty (tests/clients.py's Terminal,
driven by pexpect) against a real server, with wire clients (tests/wire.py)
speaking in the rooms.
"""

from wire import join

BELL = "\a"


def test_terminal_commands_are_case_insensitive_with_irc_aliases(server, terminal):
    """When alice types /J #rust, /NAMES and /EXIT, they run as /join, /who and /quit."""
    carol = join(server.address, "carol", room="rust")
    alice = terminal(server.address, "alice")
    alice.send("/J #rust\r")
    alice.expect_exact("* alice joined #rust")
    alice.expect_exact("#rust>")
    alice.send("/NAMES\r")
    alice.expect_exact("* in #rust (2): alice, carol")
    alice.send("/EXIT\r")
    assert alice.exit_code() == 0
    carol.close()


def test_terminal_tab_completes_a_user_in_another_room(server, terminal):
    """When carol is only in #rust and alice, in the lobby, types /msg ca<Tab>, it completes
    to carol (the server's list of everyone online), and the message reaches her."""
    carol = join(server.address, "carol", room="rust")
    alice = terminal(server.address, "alice")
    alice.send("/msg ca\t")
    alice.expect_exact("rol")  # the completion, inserted after what was typed
    alice.send(" psst\r")
    alice.expect_exact("[you -> carol] psst")
    assert carol.next_event("chat_message").chat_message.to == "carol"
    alice.send("@ca\t")
    alice.expect_exact("rol")
    alice.send(" hi\r")
    alice.expect_exact("[you] @carol hi")
    alice.send("/who #ru\t")  # a room: every room on the server
    alice.expect_exact("st")
    alice.send("\r")
    alice.expect_exact("* in #rust (1): carol")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    carol.close()


def test_terminal_direct_message_shows_in_any_room_and_rings(server, terminal):
    """When bob, in the lobby, sends alice a direct message while she is in #rust, it shows
    at once, with the bell."""
    alice = terminal(server.address, "alice")
    alice.send("/join #rust\r")
    alice.expect_exact("#rust>")
    bob = join(server.address, "bob")
    bob.say("psst", to="alice")
    alice.expect_exact(f"[bob -> you] psst{BELL}")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    bob.close()


def test_piped_help_lists_every_command_with_its_aliases(server, pipe_client):
    """When /help runs, each command is listed with its IRC aliases, and Alt-A and Tab too."""
    ci = pipe_client(server.address, "ci")
    ci.send("/HELP")
    ci.expect("Tab")
    assert ci.finish() == 0
    listed = "\n".join(ci.seen)
    for command, aliases in [("/join", "/j"), ("/part", "/leave"), ("/rooms", "/list"),
                             ("/who", "/names"), ("/quit", "/exit")]:  # fmt: skip
        assert any(row.startswith(f"* {command}") and f"(or {aliases}):" in row
                   for row in ci.seen), listed  # fmt: skip
    for word in ("* /msg ", "* /me ", "* /help:", "* Alt-A:", "* Tab:"):
        assert word in listed, word


def test_terminal_join_refused_for_good_leaves_the_current_room_as_it_was(server_factory, terminal):
    """When the server refuses a join (too many rooms), the prompt and what alice types next
    stay with the room she was in, not the room refused."""
    server = server_factory(max_rooms=2)
    alice = terminal(server.address, "alice")
    alice.send("/join #a\r")
    alice.expect_exact("* in #a (1): alice")
    watcher = join(server.address, "watcher", room="a")
    alice.send("/join #b\r")
    alice.expect_exact("! too many rooms")
    alice.send("still here\r")
    assert watcher.next_event("chat_message").chat_message.room == "a"
    alice.expect_exact("[you] still here")
    alice.expect_exact("#a>")
    alice.send("/quit\r")
    assert alice.exit_code() == 1  # a line (the join) was refused for good
    watcher.close()
