"""The terminal's view of several rooms, alone: the real Renderer and View, fed events."""

import pytest

import chat_pb2 as pb
from terminal.render import BELL, MENTION, Renderer
from terminal.view import KEPT_LINES, View

pytestmark = pytest.mark.timeout(10)


def message(name, text, room="lobby", **fields):
    event = pb.ChatMessageEvent(username=name, message=text, room=room, **fields)
    return pb.ServerEvent(chat_message=event)


def user(kind, name, room):
    return pb.ServerEvent(user_event=pb.UserEvent(type=kind, username=name, room=room))


def on_screen(me="alice", room="lobby", bell=False):
    """A renderer with a terminal's view, as the Prompt sets it up."""
    renderer = Renderer(me, bell=bell)
    ring = lambda: renderer.emit("", ring=True, end="")  # noqa: E731
    renderer.view = View(renderer.emit, ring, room)
    return renderer, renderer.view


def test_only_the_current_room_shows_and_the_prompt_counts_the_others(capsys):
    """When lines come from three rooms, only the current one's print; the prompt counts the
    others' in the order they began, marked "!" where one mentions us."""
    renderer, view = on_screen()
    for event in (
        message("bob", "lobby line"),
        message("bob", "rust one", "rust"),
        message("carol", "go one", "go"),
        message("bob", "rust two", "rust"),
        message("carol", "hey @Alice", "go"),
    ):
        renderer.show(event)
    assert capsys.readouterr().out.splitlines() == ["[bob] lobby line"]
    assert view.unread() == {"rust": 2, "go": 2}
    assert view.prompt("> ") == "#lobby [#rust 2, #go 2!]> "


def test_switching_shows_the_missed_lines_then_the_room_live(capsys):
    """When alice switches to #rust, its missed lines print under a header, its count goes,
    its next line prints live, and the room she left starts counting."""
    renderer, view = on_screen()
    renderer.show(message("bob", "missed one", "rust"))
    renderer.show(user(pb.USER_JOINED, "carol", "rust"))  # kept, not counted
    renderer.show(message("bob", "missed two", "rust"))
    renderer.enter_room("rust")
    renderer.show(message("bob", "live", "rust"))
    renderer.show(message("dave", "meanwhile", "lobby"))
    assert capsys.readouterr().out.splitlines() == [
        "-- #rust: 2 new --",
        "[bob] missed one",
        "* carol joined #rust",
        "[bob] missed two",
        "[bob] live",
    ]
    assert view.prompt("> ") == "#rust [#lobby 1]> "


def test_a_direct_message_shows_in_any_room_and_rings(capsys):
    """When bob sends alice a direct message while her screen is on #rust, it prints at once,
    highlighted with the bell; her own direct message rings nothing."""
    renderer, view = on_screen(room="rust", bell=True)
    renderer.show(message("bob", "psst", room="", to="alice"))
    renderer.show(message("alice", "hi", room="", to="bob"))
    assert capsys.readouterr().out.splitlines() == [f"[bob -> you] psst{BELL}", "[you -> bob] hi"]
    assert view.unread() == {}


def test_a_direct_message_to_us_is_highlighted_like_a_mention(capsys):
    """When colour is on, a direct message from someone else has its text highlighted; the
    echo of our own has not."""
    renderer, _ = on_screen()
    renderer.colour = True
    renderer.show(message("bob", "psst", room="", to="alice"))
    renderer.show(message("alice", "hi", room="", to="bob"))
    theirs, ours = capsys.readouterr().out.splitlines()
    assert f"\x1b[{MENTION}mpsst\x1b[0m" in theirs and f"\x1b[{MENTION}m" not in ours


def test_a_mention_in_another_room_rings_at_once_and_marks_the_room(capsys):
    """When carol names alice in #go while alice reads #lobby, the bell rings now (no line
    printed), #go is marked, and Alt-A goes there before an older unread room."""
    renderer, view = on_screen(bell=True)
    renderer.show(message("bob", "no one named", "rust"))
    assert capsys.readouterr().out == ""
    renderer.show(message("carol", "ALICE: look", "go"))
    assert capsys.readouterr().out == BELL
    assert view.prompt("> ") == "#lobby [#rust 1, #go 1!]> "
    assert view.next_unread() == "go"
    renderer.enter_room("go")  # the missed mention prints, and rings no more
    assert capsys.readouterr().out.splitlines() == ["-- #go: 1 new --", "[carol] ALICE: look"]
    assert view.next_unread() == "rust"


def test_a_room_keeps_its_last_lines_and_says_how_many_it_dropped(capsys):
    """When more lines than a room keeps arrive off screen, the switch shows the last ones
    kept and the header counts them all."""
    renderer, view = on_screen()
    extra = 7
    for n in range(KEPT_LINES + extra):
        renderer.show(message("bob", f"line {n}", "rust"))
    assert view.unread() == {"rust": KEPT_LINES + extra}
    renderer.enter_room("rust")
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"-- #rust: {KEPT_LINES + extra} new, {extra} older not kept --"
    assert out[1:] == [f"[bob] line {n}" for n in range(extra, KEPT_LINES + extra)]


def test_history_of_a_first_join_is_kept_but_a_resume_after_a_rejoin_counts(capsys):
    """When #rust's history arrives on our first join it is kept, not counted; after a
    rejoin, what was missed while away (replayed) counts as unread."""
    renderer, view = on_screen()
    renderer.show(message("bob", "old", "rust", replay=True))
    renderer.show(user(pb.USER_JOINED, "alice", "rust"))  # ours: shows wherever we are
    assert view.unread() == {}
    assert capsys.readouterr().out.splitlines() == ["* alice joined #rust"]
    renderer.show(message("bob", "missed while away", "rust", replay=True))  # the rejoin's
    assert view.unread() == {"rust": 1}
    renderer.enter_room("rust")
    assert capsys.readouterr().out.splitlines() == [
        "-- #rust: 1 new --",
        "[history] [bob] old",
        "[history] [bob] missed while away",
    ]


def test_leaving_a_room_forgets_its_lines_and_our_own_lines_are_not_news(capsys):
    """When alice's own line of another room comes back, it is kept but not counted; when
    she leaves a room, its count goes from the prompt."""
    renderer, view = on_screen()
    renderer.show(message("alice", "mine", "rust"))
    renderer.show(message("bob", "theirs", "go"))
    assert view.unread() == {"go": 1}
    renderer.show(user(pb.USER_LEFT, "alice", "go"))
    assert view.prompt("> ") == "#lobby> "
    assert capsys.readouterr().out.splitlines() == ["* alice left #go"]


def test_piped_every_room_shows_and_names_its_room(capsys):
    """When output is piped (no view), every room's line prints, a room other than the lobby
    named before it, and nothing rings."""
    renderer = Renderer("alice")
    renderer.show(message("bob", "here", "lobby"))
    renderer.show(message("bob", "alice, there", "rust"))
    renderer.show(message("bob", "waves", "go", action=True))
    assert capsys.readouterr().out.splitlines() == [
        "[bob] here",
        "#rust [bob] alice, there",
        "#go * bob waves",
    ]
