"""The real client in several rooms at once, on a pseudo-terminal read as a screen.

Only the current room's lines above the input, the others counted in the
prompt and marked where they name us, Alt-A and /join to switch, and
piped output with every room's lines. Each test runs `python client.py` on
a pty (tests/clients.py's Terminal), played into a terminal emulator
(tests/screen.py), against a real server, with wire clients
(tests/wire.py) speaking in the rooms.
"""

import pytest
from clients import Terminal
from screen import Screen
from wire import join

import chat_pb2 as pb

# -- several rooms at once (the screen as a terminal shows it: tests/screen.py) ------------


@pytest.fixture
def screen():
    """Start interactive clients read through a terminal emulator; each has joined."""
    started = []

    def start(address: str, name: str) -> Screen:
        child = Terminal(address, name)
        started.append(child)
        shown = Screen(child)
        shown.shows(f"* {name} joined the chat")
        return shown

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(5)
        child.close()


def joined(conn, name: str, room: str) -> None:
    """Wait until `conn` sees `name` join `room` (so what is said there reaches them)."""
    conn.next_event(
        "user_event",
        where=lambda e: e.type == pb.USER_JOINED and e.username == name and e.room == room,
    )


def in_rooms(alice: Screen, *rooms: str) -> None:
    """alice joins each room in turn, then goes back to the lobby (a switch: no join)."""
    for room in rooms:
        alice.child.send(f"/join #{room}\r")
        alice.prompt_is(f"#{room}> ")
        alice.shows(f"* alice joined #{room}")
    alice.child.send("/join #lobby\r")
    alice.prompt_is("#lobby> ")


def test_terminal_prompt_counts_unread_lines_and_alt_a_goes_to_a_mention_first(server, screen):
    """When #rust and #go talk while alice reads #lobby, none of it shows; her prompt counts
    each room, marks #go where carol named her (and the bell rang once); Alt-A goes to #go
    first, then to #rust, each showing what she missed."""
    bob, carol = join(server.address, "bob", room="rust"), join(server.address, "carol", room="go")
    alice = screen(server.address, "alice")
    in_rooms(alice, "rust", "go")
    joined(bob, "alice", "rust")
    joined(carol, "alice", "go")
    bob.say("one", room="rust")
    bob.say("two", room="rust")
    alice.prompt_is("#lobby [#rust 2]> ")
    assert alice.bells == 0
    carol.say("ALICE: look", room="go")
    alice.prompt_is("#lobby [#rust 2, #go 1!]> ")  # in the order their first unread came
    alice.wait_for(lambda shown: shown.bells == 1, what="the bell")
    assert not any("[bob]" in row or "[carol]" in row for row in alice.lines())
    alice.child.send("\x1ba")  # Alt-A
    alice.prompt_is("#go [#rust 2]> ")
    alice.shows("-- #go: 1 new --")
    alice.shows("[carol] ALICE: look")
    alice.child.send("\x1ba")
    alice.prompt_is("#rust> ")
    alice.shows("-- #rust: 2 new --")
    rows = alice.lines()
    assert rows.index("[bob] one") == rows.index("-- #rust: 2 new --") + 1
    assert alice.bells == 1  # the missed mention shown rings no more
    alice.child.send("/quit\r")
    assert alice.child.exit_code() == 0
    bob.close()
    carol.close()


def test_terminal_switching_shows_the_missed_lines_then_the_room_live(server, screen):
    """When alice goes back to #rust with /join, she sees what bob said there while she was
    away, under a header, then his next line live; what she types goes to #rust."""
    bob = join(server.address, "bob", room="rust")
    alice = screen(server.address, "alice")
    in_rooms(alice, "rust")
    joined(bob, "alice", "rust")
    bob.say("missed one", room="rust")
    bob.say("missed two", room="rust")
    alice.prompt_is("#lobby [#rust 2]> ")
    alice.child.send("/j rust\r")
    alice.prompt_is("#rust> ")
    bob.say("live", room="rust")
    alice.shows("[bob] live")
    rows = alice.lines()
    start = rows.index("-- #rust: 2 new --")
    assert rows[start + 1 : start + 3] == ["[bob] missed one", "[bob] missed two"]
    assert rows.index("[bob] live") > start + 2
    alice.child.send("hello rust\r")
    assert (
        bob.next_event("chat_message", where=lambda m: m.username == "alice").chat_message.room
        == "rust"
    )
    alice.child.send("/quit\r")
    assert alice.child.exit_code() == 0
    bob.close()


def test_piped_shows_every_rooms_lines_with_their_room(server, pipe_client):
    """When a piped client is in #lobby and #ops, both rooms' lines print, #ops's after its
    room, with no prompt and no bell."""
    ci = pipe_client(server.address, "ci", "--room", "lobby", "--room", "ops")
    ci.expect("* ci joined #ops")
    ops, lobby = join(server.address, "opswatch", room="ops"), join(server.address, "lobbywatch")
    ops.say("ci: deploy?", room="ops")
    ci.expect("#ops [opswatch] ci: deploy?")
    lobby.say("hello ci")
    ci.expect("[lobbywatch] hello ci")
    assert ci.finish() == 0
    assert not any("\a" in line or ">" in line.partition(" ")[0] for line in ci.seen)
    ops.close()
    lobby.close()
