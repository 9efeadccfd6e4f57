"""How server events look: one line of text for each `ServerEvent`.

client.py is the protocol side (the Chat call, rejoining, pending lines);
this file is what the user sees. `Renderer.show` turns each event into one
line: `[alice] hi`, `[you -> bob] psst`, `* alice waves`, `* bob joined
#rust`; a direct message to us, and a message that mentions our name, is
highlighted, with the terminal's bell on a terminal. On a terminal a line
of a room goes to terminal/view.py, which prints it if that room is the
current one and keeps and counts it otherwise; piped, every line is
printed, a message of a room other than the lobby after its room (`#rust
[alice] hi`). terminal/commands.py runs what the user types;
terminal/prompt.py is the input line on a terminal, terminal/piped.py reads piped input.

The receive thread calls `Renderer.show` for every event while the main
thread reads input, so the renderer's lock serialises output and guards the
set of people typing, and `room`, the room whose typing is shown:
`enter_room` changes it (the receive thread when the server confirms a
join or a leave, the main thread on a switch) and clears the typing line
in one step, so no typing of the room left can slip in after. NOTE: everything
received is passed through `sanitize.clean_text` before it is printed.
The server cleans text too, but a client must not trust whatever it
connects to: the only escape codes that ever reach the terminal are this
file's own colours and, on a terminal, the bell of a mention or a direct
message. A closed stdout (`client.py | head -1`) silences every later
print and nothing else: the client goes on sending what it was given,
then ends quietly.

A long line is wrapped by the client, not by the terminal (terminal/wrap.py):
the text goes on under itself, its continuation rows indented, so no row of
a message starts at column 0, and a message padded to the end of a row
cannot start the next with `[alice] ...`. Piped output is wrapped alike, at
$COLUMNS (default 80): one header, then an indented body.
"""

import os
import re
import shutil
import sys
import threading
import time
import zlib

import click

import chat_pb2 as pb
from sanitize import LOBBY, NAME_RULE, clean_text, is_valid_name, name_skeleton
from terminal.wrap import wrap

# SGR colour codes (ESC [ code m). Names get one of PALETTE, picked by a
# hash of the name, so "alice" has the same colour in every client and run.
PALETTE = ("31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96")
DIM = "2"
WARN = "1;33"  # bold yellow: notices that something went wrong
MENTION = "1;7"  # bold, reversed: a message that names us
BELL = "\a"  # rings the terminal's bell (on a terminal only)
HISTORY_MARK = "[history] "  # before replayed messages; "[alice] hi" stays greppable
NO_CLOCK = "--:--"  # --timestamps, for a timestamp no clock can show (10**17, say)
# A mention is the name with no name character touching it: "alice", "@alice,"
# and "alice." mention alice; "malice", "alice_2" and "alice.b" do not. A word
# is a run of name characters ("|" too: it passes for "l"), its final dots not in it.
WORD_PATTERN = re.compile(r"[\w.\-|]+")
DEFAULT_COLUMNS = 80  # piped, without $COLUMNS


def mentions(name: str, text: str) -> bool:
    """Does `text` name `name` as a word ("alice", "@alice", "Alice:", "a1ice")?

    Any case, and look-alike characters, as names are matched (sanitize.name_skeleton).
    """
    skeleton = name_skeleton(name)
    for found in WORD_PATTERN.finditer(text):
        word = found.group().rstrip(".")
        if len(word) == len(name) and name_skeleton(word) == skeleton:
            return True
    return False


def use_colour(stream) -> bool:
    """Colours on a terminal only, and never when NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


def ask_name() -> str:
    """Ask on the terminal until the answer follows the server's rule."""

    def check(name: str) -> str:
        if not is_valid_name(name):
            raise click.BadParameter(f"use {NAME_RULE}")
        return name

    return click.prompt("name", value_proc=check)


def name_colour(name: str) -> str:
    """The colour of `name`: crc32, not hash(), which changes from run to run."""
    return PALETTE[zlib.crc32(name.encode()) % len(PALETTE)]


class Renderer:
    """Prints server events as lines; keeps who is typing for the typing line."""

    def __init__(self, me: str, colour=False, timestamps=False, show_typing=True, bell=False):
        self.me = me
        self.colour = colour
        self.timestamps = timestamps
        self.show_typing = show_typing  # off when piped: a plain stream cannot unprint
        self.bell = bell  # ring on a mention: on a terminal only
        self.room = LOBBY  # whose typing is shown; written under _lock
        self.view = None  # a terminal's view.View (set by the Prompt); None when piped
        self.on_typing_change = lambda: None  # the Prompt sets this to repaint
        self._lock = threading.Lock()  # serialises printing; guards room, _typing and _closed
        self._typing: dict[str, None] = {}  # names typing now, first starter first
        self._closed = False  # stdout is gone

    def paint(self, text: str, sgr: str) -> str:
        return f"\x1b[{sgr}m{text}\x1b[0m" if self.colour else text

    def show(self, event: pb.ServerEvent) -> None:
        """Print one event from the server (called on the receive thread)."""
        kind = event.WhichOneof("event")
        if kind is not None:
            getattr(self, f"_show_{kind}")(getattr(event, kind))

    def notice(self, text: str) -> None:
        """A line from the client itself, e.g. "* reconnecting...\""""
        self._print(self.paint("* ", DIM), body=text, sgr=DIM)

    def problem(self, text: str) -> None:
        self._print(self.paint("! ", WARN), body=text, sgr=WARN)

    def refuse(self, text: str) -> None:
        """One line on stderr: a line of ours that the client will not send."""
        with self._lock:
            print(self.paint(f"! {text}", WARN), file=sys.stderr, flush=True)

    def typing_line(self) -> str:
        """ "* alice, bob typing..." or "" when nobody is."""
        with self._lock:
            names = list(self._typing)
        return f"* {', '.join(names)} typing..." if names else ""

    def enter_room(self, room: str) -> None:
        """`room` is on screen now: its typing only, what was missed there, a new prompt."""
        with self._lock:
            self.room = room
            self._typing.clear()
        self.on_typing_change()
        if self.view is not None:
            self.view.switch(room)

    def clear_typing(self) -> None:
        """Forget who was typing (the call dropped: no TYPING_STOP will come)."""
        with self._lock:
            self._typing.clear()
        self.on_typing_change()

    # -- one method per kind of event (the oneof's field names) -------------

    def _show_chat_message(self, m: pb.ChatMessageEvent) -> None:
        name, text = clean_text(m.username), clean_text(m.message)
        # For us: a direct message from someone else, or a message naming us.
        named_us = name != self.me and (bool(m.to) or mentions(self.me, text))
        room = None if m.to else clean_text(m.room) or LOBBY  # a DM is in no room
        mark = self.paint(HISTORY_MARK, DIM) if m.replay else ""
        if self.view is None and room not in (None, LOBBY):  # piped: say which room
            mark = f"{self.paint(f'#{room}', DIM)} {mark}"
        if m.to:  # a direct message: "[alice -> you] psst", "[you -> bob] psst"
            to = clean_text(m.to)
            route = f"{self.who(name)} -> {self.who(to)}"
            head = f"[{route}] * {self.named(name)} " if m.action else f"[{route}] "
        elif m.action:  # /me: "* alice waves", ours too
            head = f"* {self.named(name)} "
        else:
            head = f"[{self.who(name)}] "
        ring = named_us and self.bell and not m.replay  # history rings no bell
        how = {"news": name != self.me, "replay": m.replay, "mention": named_us and not m.replay}
        sgr = MENTION if named_us else ""
        self._print(f"{mark}{head}", m.timestamp, ring, room, body=text, sgr=sgr, **how)

    def who(self, name: str) -> str:
        """A name in brackets, in its colour: ours is "you"."""
        return self.paint("you" if name == self.me else name, name_colour(name))

    def named(self, name: str) -> str:
        return self.paint(name, name_colour(name))

    def _show_user_event(self, e: pb.UserEvent) -> None:
        verb = {pb.USER_JOINED: "joined", pb.USER_LEFT: "left"}.get(e.type)
        if verb is None:
            return
        name, room = clean_text(e.username), clean_text(e.room) or LOBBY
        if e.type == pb.USER_LEFT:
            self._set_typing(name, False)
        if name == self.me and self.view is not None:  # ours show wherever we are
            self.view.joined(room) if e.type == pb.USER_JOINED else self.view.left(room)
        where = "the chat" if room == LOBBY else f"#{room}"  # the lobby reads as before rooms
        star, what = self.paint("*", DIM), f"{verb} {where}"
        line_room = None if name == self.me else room
        self._print(
            f"{star} {self.named(name)} ", e.timestamp, False, line_room, body=what, sgr=DIM
        )

    def _show_typing_event(self, e: pb.TypingEvent) -> None:
        typing = e.type == pb.TYPING_START
        self._set_typing(clean_text(e.username), typing, clean_text(e.room) or LOBBY)

    def _show_system_event(self, e: pb.SystemEvent) -> None:
        text = clean_text(e.message)
        if e.code == pb.SYSTEM_INFO:
            self._print(self.paint("* ", DIM), e.timestamp, body=text, sgr=DIM)
        else:  # refused, rate limited, shutting down: the user should notice
            self._print(self.paint("! ", WARN), e.timestamp, body=text, sgr=WARN)

    # -- output -----------------------------------------------------------

    def _set_typing(self, name: str, typing: bool, room: str | None = None) -> None:
        """`name` started or stopped typing (in `room`: ignored unless it is on screen)."""
        if not self.show_typing:
            return
        with self._lock:
            if room is not None and room != self.room:
                return  # another room's: only the current room's typing shows
            if typing == (name in self._typing):
                return  # not a change
            if typing:
                self._typing[name] = None
            else:
                del self._typing[name]
        self.on_typing_change()

    def _print(
        self, head: str, timestamp=0, ring=False, room: str | None = None, body="", sgr="", **how
    ) -> None:
        """Print `head` and `body` now, or, on a terminal, hand a room's line to the view.

        The body (painted `sgr`) is wrapped under itself to the width (`wrap`).
        `room` is None for a line that shows whatever the room (a direct
        message, a notice); `how` says what kind of line it is (View.place).
        """
        if self.timestamps:
            head = f"{self.paint(clock(timestamp), DIM)} {head}"
        columns = shutil.get_terminal_size((DEFAULT_COLUMNS, 24)).columns
        paint = (lambda text: self.paint(text, sgr)) if sgr else (lambda text: text)
        line = "\n".join(start + paint(text) for start, text in wrap(head, body, columns))
        if room is not None and self.view is not None:
            self.view.place(room, line, ring=ring, **how)
        else:
            self.emit(line, ring)

    def emit(self, line: str, ring: bool = False, end: str = "\n") -> None:
        """Print one line above the input (with the bell after it when `ring`)."""
        if ring:
            line += BELL
        with self._lock:  # print looks up sys.stdout now: prompt_toolkit may have patched it
            if self._closed:
                return  # stdout is gone: output stops, the chat does not
            try:
                print(line, end=end, flush=True)
            except BrokenPipeError:
                self._closed = True
                silence_stdout()


def clock(timestamp: int) -> str:
    """HH:MM of a Unix time; now for 0 (missing); NO_CLOCK for what no clock shows."""
    try:
        return time.strftime("%H:%M", time.localtime(timestamp or time.time()))
    except (OverflowError, OSError, ValueError):
        return NO_CLOCK


def silence_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
