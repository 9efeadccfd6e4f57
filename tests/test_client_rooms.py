"""The real client in rooms: --room, /join, /part, /msg, /me, /who, /rooms, mentions, Tab.

Each test runs `python client.py` as a subprocess (piped, or on a
pseudo-terminal) against a real server, with wire clients (tests/wire.py)
as witnesses of what reached which room.
"""

import signal

import pytest
from clients import RECONNECT_WITHIN_S
from conftest import free_port
from wire import EVENT_TIMEOUT_S, join

import chat_pb2 as pb

BELL = "\a"


def said(conn, text: str) -> pb.ChatMessageEvent:
    """The next chat message `conn` gets with `text` (others skipped)."""
    event = conn.next_event("chat_message", where=lambda m: m.message == text)
    return event.chat_message


def no_messages(conn) -> list[str]:
    """Everything `conn` got so far that is a chat message (expected: none)."""
    return [e.chat_message.message for e in conn.drain() if e.WhichOneof("event") == "chat_message"]


# -- piped ---------------------------------------------------------------------------


def test_piped_room_flag_posts_to_that_room_only(server, pipe_client):
    """When ci pipes a line with --room ops, #ops gets it and the lobby does not."""
    ops = join(server.address, "opswatch", room="ops")
    lobby = join(server.address, "lobbywatch")
    ci = pipe_client(server.address, "ci", "--room", "ops")
    ci.send("deployed")
    assert said(ops, "deployed").room == "ops"
    assert ci.finish() == 0
    assert "* ci joined #ops" in ci.seen and "#ops [you] deployed" in ci.seen
    assert no_messages(lobby) == []
    ops.close()
    lobby.close()


def test_piped_join_takes_the_lines_after_it_and_part_comes_back(server, pipe_client):
    """When piped lines hold /join #ops and /part, each text line goes to the room it follows,
    and ci leaves #ops, never the lobby."""
    ops = join(server.address, "opswatch", room="ops")
    lobby = join(server.address, "lobbywatch")
    ci = pipe_client(server.address, "ci")
    for line in ("before", "/join #ops", "inside", "/part", "after"):
        ci.send(line)
    ci.expect("[you] after")
    assert ci.finish() == 0
    assert [said(lobby, t).message for t in ("before", "after")] == ["before", "after"]
    assert said(ops, "inside").room == "ops"
    assert no_messages(ops) == []
    assert "* ci joined #ops" in ci.seen and "* ci joined the chat" in ci.seen
    assert "* ci left #ops" in ci.seen and "* ci left the chat" not in ci.seen
    ops.close()
    lobby.close()


def test_piped_joins_over_the_rate_limit_wait_their_turn(server_factory, pipe_client):
    """When a join or a leave is rate limited, it is sent again after the wait, and the lines
    after it still land in their room: a refusal of the join is not taken for a line's."""
    server = server_factory(rate=4.0, burst=1)
    ops = join(server.address, "opswatch", room="ops")
    lobby = join(server.address, "lobbywatch")
    ci = pipe_client(server.address, "ci")
    for line in ("one", "/join ops", "two", "/part", "three"):
        ci.send(line)
    ci.expect("[you] three", timeout=2 * EVENT_TIMEOUT_S)
    assert ci.finish() == 0
    assert [said(lobby, t).message for t in ("one", "three")] == ["one", "three"]
    assert said(ops, "two").room == "ops"
    assert any(line.startswith("! rate limited") for line in ci.seen), ci.seen
    assert [line for line in ci.seen if "[you]" in line] == [
        "[you] one", "#ops [you] two", "[you] three"
    ]  # fmt: skip
    ops.close()
    lobby.close()


def test_piped_msg_and_me_render_on_both_sides(server, pipe_client):
    """When alice pipes /msg bob and /me, each side sees the direct message and the action
    as the README shows; a /msg to someone away is dropped with a notice."""
    bob = pipe_client(server.address, "bob")
    bob.expect("* bob joined the chat")
    alice = pipe_client(server.address, "alice")
    for line in ("/msg bob psst", "/msg nobody hello?", "/me waves", "done"):
        alice.send(line)
    alice.expect("[you] done")
    assert alice.finish() == 1  # the /msg to nobody did not go
    assert "[you -> bob] psst" in alice.seen and "* alice waves" in alice.seen
    assert "! nobody is not online" in alice.seen
    bob.expect("[alice -> you] psst")
    bob.expect("* alice waves")
    assert bob.finish() == 0
    assert not any("hello?" in line for line in alice.seen + bob.seen)


def test_piped_rooms_lists_every_room_with_its_count(server, pipe_client):
    """When ci pipes /rooms, it prints every room with how many are in it, its own marked."""
    conns = [join(server.address, name, room=room) for name, room in
             [("g", "go"), ("r1", "rust"), ("r2", "rust")]]  # fmt: skip
    ci = pipe_client(server.address, "ci")
    ci.send("/rooms")
    ci.expect("* rooms (3): #go (1), #lobby (1, here), #rust (2)")
    ci.send("/join #go")
    ci.send("/join #lobby")  # ours: made current
    ci.send("/rooms")
    ci.expect("* rooms (3): #go (2, yours), #lobby (1, here), #rust (2)")
    assert ci.finish() == 0
    for conn in conns:
        conn.close()


def test_a_mention_is_plain_without_a_bell_when_piped(server, pipe_client):
    """When someone names alice and her output is piped, the line has no bell."""
    alice = pipe_client(server.address, "alice")
    alice.expect("* alice joined the chat")
    bob = join(server.address, "bob")
    bob.say("hi @Alice, look")
    line = alice.expect("[bob] hi @Alice, look")
    assert BELL not in line and "\x1b" not in line
    assert alice.finish() == 0
    bob.close()


@pytest.mark.timeout(60)
def test_a_reconnect_rejoins_the_room_it_was_in(pipe_client, server_process):
    """When the server restarts, the client rejoins #ops, and its next line goes there."""
    port = free_port()
    first = server_process(port=port)
    alice = pipe_client(first.address, "alice")
    alice.send("/join #ops")
    alice.send("one")
    alice.expect("[you] one")
    first.signal(signal.SIGKILL)
    alice.expect("* reconnecting...")
    again = server_process(port=port)
    ops = join(again.address, "opswatch", room="ops")
    alice.expect("* alice joined #ops", timeout=RECONNECT_WITHIN_S)
    alice.send("two")
    assert said(ops, "two").room == "ops"
    assert alice.finish() == 0
    ops.close()


@pytest.mark.timeout(90)
def test_a_restart_resumes_three_rooms_each_after_its_own_id(
    pipe_client, server_process, redis_proc
):
    """When the server is killed and restarted while alice is in lobby, #rust and #go, she
    gets what each room said meanwhile, once, then each room live; nothing seen before
    comes again."""
    port, rooms = free_port(), ("lobby", "rust", "go")
    first = server_process("--redis-url", redis_proc.url, "--no-rate-limit", port=port)
    alice = pipe_client(first.address, "alice", *[f"--room={room}" for room in rooms])
    alice.expect("* alice joined #go")
    before = [join(first.address, f"b{room}", room=room) for room in rooms]
    for room, conn in zip(rooms, before, strict=True):
        conn.say(f"{room} before")
        assert said(conn, f"{room} before").room == room
        alice.expect(f"[b{room}] {room} before")
    first.signal(signal.SIGKILL)
    alice.expect("* reconnecting...")
    again = server_process("--redis-url", redis_proc.url, "--no-rate-limit", port=port)
    during = [join(again.address, f"d{room}", room=room) for room in rooms]
    for room, conn in zip(rooms, during, strict=True):
        conn.say(f"{room} during")
        said(conn, f"{room} during")
    for room in rooms:
        alice.expect(f"[d{room}] {room} during", timeout=RECONNECT_WITHIN_S)
    for room, conn in zip(rooms, during, strict=True):
        conn.say(f"{room} after")
        alice.expect(f"[d{room}] {room} after")
    assert alice.finish() == 0
    for room in rooms:
        for when in ("before", "during", "after"):
            shown = [line for line in alice.seen if line.endswith(f"] {room} {when}")]
            assert len(shown) == 1, (room, when, alice.seen)
    for conn in (*before, *during):
        conn.close()


# -- on a terminal ---------------------------------------------------------------------


def test_terminal_join_changes_the_prompt_and_who_lists_the_room(server, terminal):
    """When alice types /join #rust, her prompt becomes #rust> ; /who lists who is there."""
    carol = join(server.address, "carol", room="rust")
    alice = terminal(server.address, "alice")
    alice.expect_exact("#lobby>")
    alice.send("/join #rust\r")
    alice.expect_exact("* alice joined #rust")
    alice.expect_exact("* in #rust (2): alice, carol")  # the server's notice
    alice.expect_exact("#rust>")
    dave = join(server.address, "dave", room="rust")
    alice.expect_exact("* dave joined #rust")
    alice.send("/who\r")
    alice.expect_exact("* in #rust (3): alice, carol, dave")
    alice.send("/part\r")
    alice.expect_exact("#lobby>")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    carol.close()
    dave.close()


def test_terminal_mention_rings_the_bell(server, terminal):
    """When bob names alice, her terminal gets the line with a bell; other lines ring none."""
    alice = terminal(server.address, "alice")
    bob = join(server.address, "bob")
    alice.expect_exact("* bob joined the chat")
    bob.say("no one named")
    alice.expect_exact("[bob] no one named")
    bob.say("alice: lunch?")
    alice.expect_exact(f"[bob] alice: lunch?{BELL}")
    assert BELL.encode() not in alice.before  # nothing rang since "no one named"
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    bob.close()


def test_terminal_tab_completes_commands_and_names(server, terminal):
    """When alice presses Tab after /jo, she gets /join; after /msg b, bob's name."""
    carol = join(server.address, "carol")
    alice = terminal(server.address, "alice")  # carol: from the join notice
    bob = join(server.address, "bob")
    alice.expect_exact("* bob joined the chat")  # bob: from his USER_JOINED
    alice.send("/msg b\t")
    alice.expect_exact("/msg bob")
    alice.send(" psst\r")
    alice.expect_exact("[you -> bob] psst")
    alice.send("@ca\t")
    alice.expect_exact("rol")  # the completion, inserted after what was typed
    alice.send(" hi\r")
    alice.expect_exact("[you] @carol hi")
    alice.send("/jo\t")
    alice.expect_exact("/join")
    alice.send(" #rust\r")
    alice.expect_exact("#rust>")
    alice.send("/quit\r")
    assert alice.exit_code() == 0
    carol.close()
    bob.close()
