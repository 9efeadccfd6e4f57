"""The client's parts for rooms, alone: commands, lines with joins, rooms, roster, renderings."""

import threading

import pytest

import chat_pb2 as pb
from terminal.commands import parse
from terminal.lines import Lines, echo_key, join_line, message_line, part_line, room_key
from terminal.render import BELL, MENTION, Renderer, mentions
from terminal.rooms import RoomState
from terminal.roster import Roster

# -- what a line is ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, parsed",
    [
        ("/join #rust", ("command", "/join", "#rust")),
        ("  /msg bob  hi there ", ("command", "/msg", "bob  hi there")),
        ("/who", ("command", "/who", "")),
        ("/who is there?", ("unknown", "/who", "/who is there?")),
        ("/who #rust", ("command", "/who", "#rust")),
        ("/J #rust", ("command", "/join", "#rust")),
        ("/j rust", ("command", "/join", "rust")),
        ("/LEAVE", ("command", "/part", "")),
        ("/names go", ("command", "/who", "go")),
        ("/List", ("command", "/rooms", "")),
        ("/exit", ("command", "/quit", "")),
        ("/rooms are full", ("unknown", "/rooms", "/rooms are full")),
        ("/var/lib/db is 91% full", ("unknown", "/var/lib/db", "/var/lib/db is 91% full")),
        ("//help", ("text", "", "/help")),
        ("hello /join", ("text", "", "hello /join")),
        ("/J #rust", ("command", "/join", "#rust")),
        ("/Leave", ("command", "/part", "")),
        ("/part #go", ("command", "/part", "#go")),
        ("/LIST", ("command", "/rooms", "")),
        ("/names #go", ("command", "/who", "#go")),
        ("/exit", ("command", "/quit", "")),
    ],
)
def test_a_line_is_a_command_only_when_its_first_word_is_one(line, parsed):
    """When a line starts with a known command (taking what follows), it is that command."""
    assert parse(line) == parsed


# -- lines with joins and leaves --------------------------------------------------------------


class Recorder:
    """A stand-in for link.Link: what the send thread put on the call."""

    def __init__(self):
        self.sent: list[pb.ClientEvent] = []
        self.changed = threading.Condition()

    def send(self, event):
        with self.changed:
            self.sent.append(event)
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[pb.ClientEvent]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.sent) >= count, timeout=5)
            return list(self.sent)


def test_a_join_waits_for_the_line_before_and_the_next_waits_for_the_join():
    """When text, a join, text into the joined room and a leave are entered, each goes only
    once the one before is confirmed, and a refusal while the join is in flight is the join's."""
    lines, link = Lines(lambda notice: None), Recorder()
    for line in (message_line("one", room="lobby"), join_line("ops", "/join ops"),
                 message_line("two", room="ops"), part_line("ops", "/part")):  # fmt: skip
        lines.add(line)
    lines.up(link)
    assert len(link.wait_for(1)) == 1
    lines.confirm(echo_key(pb.ChatMessageEvent(message="one", room="lobby")))
    join = link.wait_for(2)[1]
    assert (join.user_event.type, join.user_event.room) == (pb.USER_JOINED, "ops")
    lines.refused(pb.RATE_LIMITED, "rate limited: retry in 0.1 s")
    assert link.wait_for(3)[2] == join  # the join again, not "two"
    lines.confirm(room_key(pb.USER_JOINED, "ops"))
    two = link.wait_for(4)[3].chat_message
    assert (two.message, two.room) == ("two", "ops")
    lines.confirm(echo_key(pb.ChatMessageEvent(message="two", room="lobby")))  # not its echo
    assert lines.count() == 2
    lines.confirm(echo_key(pb.ChatMessageEvent(message="two", room="ops")))
    part = link.wait_for(5)[4].user_event
    assert (part.type, part.room) == (pb.USER_LEFT, "ops")
    lines.confirm(room_key(pb.USER_LEFT, "ops"))
    assert lines.count() == 0
    lines.close()


def test_rejoins_go_before_the_lines_still_pending():
    """When a call is up again, the joins of the other rooms go first, then what was pending."""
    lines, link = Lines(lambda notice: None), Recorder()
    lines.add(message_line("pending", room="go"))
    lines.up(link, [join_line("go", "/join #go", "5-0")])
    rejoin = link.wait_for(1)[0].user_event
    assert (rejoin.room, rejoin.last_seen_id) == ("go", "5-0")
    lines.confirm(room_key(pb.USER_JOINED, "go"))
    assert link.wait_for(2)[1].chat_message.message == "pending"
    lines.close()


def test_room_state_keeps_joined_rooms_the_current_one_and_last_ids_per_room():
    """When rooms are joined, switched to and left, the current one follows; ids are new
    or not per room; a room is confirmed by the server on each call anew."""
    rooms = RoomState(["ops", "lobby", "ops"])
    assert (rooms.joined(), rooms.current) == (["ops", "lobby"], "ops")
    assert rooms.join("rust") and rooms.current == "rust"
    assert not rooms.join("ops") and rooms.current == "ops"  # a room we are in: switch only
    assert rooms.switch("lobby") and not rooms.switch("go")
    assert rooms.part("lobby") and rooms.current == "rust"  # the one joined last
    assert not rooms.part("lobby")
    assert rooms.is_new("rust", "10-0") and rooms.is_new("ops", "5-0")
    assert not rooms.is_new("rust", "9-0") and not rooms.is_new("rust", "10-0")
    assert rooms.is_new("rust", "") and rooms.last_seen("rust") == "10-0"
    assert rooms.part("rust") and rooms.part("ops") and rooms.current == ""
    assert not rooms.confirmed("go")  # typing goes only to a room the server put us in
    rooms.entered("go", True)
    assert rooms.confirmed("go")
    rooms.new_call()
    assert not rooms.confirmed("go")


def test_a_direct_message_is_confirmed_by_its_echo_to_that_user_only():
    """When /msg bob hi is pending, a room message "hi" is not its echo; the echo to bob is."""
    lines, link = Lines(lambda notice: None), Recorder()
    lines.add(message_line("hi", to="bob"))
    lines.up(link)
    link.wait_for(1)
    lines.confirm(echo_key(pb.ChatMessageEvent(message="hi")))
    assert lines.count() == 1
    lines.confirm(echo_key(pb.ChatMessageEvent(message="hi", to="bob", username="me")))
    assert lines.count() == 0
    lines.close()


# -- the roster ----------------------------------------------------------------------------


def user(kind, name, room="lobby"):
    return pb.ServerEvent(user_event=pb.UserEvent(type=kind, username=name, room=room))


def info(text):
    return pb.ServerEvent(system_event=pb.SystemEvent(message=text))


def test_roster_follows_our_rooms_from_notices_joins_and_leaves():
    """When events pass by, the roster holds the others in each of our rooms, and only those."""
    roster = Roster("me")
    roster.see(info("in #lobby (3): me, bob, Carol"))
    roster.see(user(pb.USER_JOINED, "dave", "rust"))  # not one of our rooms
    roster.see(user(pb.USER_LEFT, "bob"))
    assert roster.names() == ["Carol"]
    roster.see(user(pb.USER_JOINED, "me", "rust"))  # a second room
    roster.see(info("in #rust (2): dave, me"))
    roster.see(user(pb.USER_JOINED, "erin", "rust"))
    assert roster.names("rust") == ["dave", "erin"] and roster.rooms() == ["lobby", "rust"]
    assert roster.names() == ["Carol", "dave", "erin"]
    roster.see(user(pb.USER_LEFT, "me", "lobby"))  # we left the lobby: its names go
    assert roster.names() == ["dave", "erin"] and roster.rooms() == ["rust"]


# -- renderings ------------------------------------------------------------------------------


def message(name, text, **fields):
    return pb.ServerEvent(chat_message=pb.ChatMessageEvent(username=name, message=text, **fields))


def test_renderer_shows_direct_messages_actions_and_rooms(capsys):
    """When DMs, actions and room joins arrive, each reads as the README shows."""
    renderer = Renderer("me")
    for event in (
        message("alice", "psst", to="me"),
        message("me", "psst", to="bob"),
        message("alice", "waves", action=True),
        message("me", "waves", action=True),
        user(pb.USER_JOINED, "bob", "rust"),
        user(pb.USER_LEFT, "bob", "rust"),
        user(pb.USER_JOINED, "bob", "lobby"),
        user(pb.USER_LEFT, "bob", ""),
    ):
        renderer.show(event)
    assert capsys.readouterr().out.splitlines() == [
        "[alice -> you] psst",
        "[you -> bob] psst",
        "* alice waves",
        "* me waves",
        "* bob joined #rust",
        "* bob left #rust",
        "* bob joined the chat",
        "* bob left the chat",
    ]


@pytest.mark.parametrize(
    "text, named",
    [("alice", True), ("@alice: hi", True), ("hi ALICE.", True), ("malice", False),
     ("alice_2", False), ("alice.b", False), ("bob", False)],
)  # fmt: skip
def test_a_mention_is_the_name_as_a_word_in_any_case(text, named):
    """When a message holds the name as a word (any case, @ or not), it mentions the user."""
    assert mentions("alice", text) is named


def test_a_mention_is_highlighted_and_rings_only_live_and_only_with_the_bell_on(capsys):
    """When someone else names us, the text is highlighted (with colour) and rings (with the
    bell on), except in history; our own mention of ourselves rings nothing."""
    Renderer("alice", colour=True, bell=True).show(message("bob", "hi alice"))
    out = capsys.readouterr().out
    assert f"\x1b[{MENTION}mhi alice\x1b[0m" in out and out.endswith(f"{BELL}\n")
    Renderer("alice", bell=True).show(message("bob", "hi alice", replay=True))
    Renderer("alice", bell=True).show(message("alice", "i am alice"))
    Renderer("alice").show(message("bob", "hi alice"))
    assert BELL not in capsys.readouterr().out


def test_typing_of_another_room_is_not_shown():
    """When a typing event of a room we left arrives, the typing line ignores it."""
    renderer = Renderer("me")
    renderer.enter_room("rust")
    renderer.show(pb.ServerEvent(typing_event=pb.TypingEvent(username="a", type=1, room="lobby")))
    assert renderer.typing_line() == ""
    renderer.show(pb.ServerEvent(typing_event=pb.TypingEvent(username="b", type=1, room="rust")))
    assert renderer.typing_line() == "* b typing..."
