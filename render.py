"""The client's user side: how server events look, and what the user's lines mean.

client.py is the protocol side (the Chat call, rejoining, pending lines);
this file is what the user sees. `Renderer` turns each `ServerEvent` into
one line of text; `parse` tells a command from text to send; `read_lines`
reads piped input. prompt.py is the input line on a terminal.

The receive thread calls `Renderer.show` for every event while the main
thread reads input, so the renderer's lock serialises output and guards the
set of people typing. NOTE: everything received is passed through
`sanitize.clean_text` before it is printed. The server cleans text too, but
a client must not trust whatever it connects to: the only escape codes that
ever reach the terminal are this file's own colours. A closed stdout
(`client.py | head -1`) raises `OutputClosed` from every later print, so
whichever thread meets it first, the client ends quietly.
"""

import os
import queue
import sys
import threading
import time
import zlib

import click

import chat_pb2 as pb
from sanitize import NAME_RULE, clean_text, is_valid_name

# SGR colour codes (ESC [ code m). Names get one of PALETTE, picked by a
# hash of the name, so "alice" has the same colour in every client and run.
PALETTE = ("31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96")
DIM = "2"
WARN = "1;33"  # bold yellow: notices that something went wrong
HISTORY_MARK = "[history] "  # before replayed messages; "[alice] hi" stays greppable
NO_CLOCK = "--:--"  # --timestamps, for a timestamp no clock can show (10**17, say)
EOF = object()  # from read_lines: the input has ended
COMMANDS = {"/help": "list these commands", "/quit": "leave the chat (Ctrl-D does too)"}
ESCAPE = "//"  # a line starting with it is text starting with "/"


class OutputClosed(Exception):
    """stdout is gone (a closed pipe): the client ends, quietly."""


def parse(line: str) -> tuple[str, str]:
    """What a line is: ("command", "/help"), ("unknown", "/x") or ("text", what to send).

    Only a known command, exactly, is a command; "//x" sends "/x". Piped
    input sends an "unknown" line as text ("/var/lib/db is 91% full"); a
    terminal asks first.
    """
    word = line.strip()
    if word in COMMANDS:
        return "command", word
    if word.startswith(ESCAPE):
        return "text", word[1:]
    if word.startswith("/") and " " not in word:
        return "unknown", line
    return "text", line


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

    def __init__(self, me: str, colour=False, timestamps=False, show_typing=True):
        self.me = me
        self.colour = colour
        self.timestamps = timestamps
        self.show_typing = show_typing  # off when piped: a plain stream cannot unprint
        self.on_typing_change = lambda: None  # the Prompt sets this to repaint
        self._lock = threading.Lock()  # serialises printing; guards _typing and _closed
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
        self._print(self.paint(f"* {text}", DIM))

    def problem(self, text: str) -> None:
        self._print(self.paint(f"! {text}", WARN))

    def refuse(self, text: str) -> None:
        """One line on stderr: a line of ours that the client will not send."""
        with self._lock:
            print(self.paint(f"! {text}", WARN), file=sys.stderr, flush=True)

    def help(self) -> None:
        for name, what in COMMANDS.items():
            self.notice(f"{name}  {what}")
        self.notice(f"{ESCAPE}text  send a line that starts with /")

    def typing_line(self) -> str:
        """ "* alice, bob typing..." or "" when nobody is."""
        with self._lock:
            names = list(self._typing)
        return f"* {', '.join(names)} typing..." if names else ""

    def clear_typing(self) -> None:
        """Forget who was typing (the call dropped: no TYPING_STOP will come)."""
        with self._lock:
            self._typing.clear()
        self.on_typing_change()

    # -- one method per kind of event (the oneof's field names) -------------

    def _show_chat_message(self, m: pb.ChatMessageEvent) -> None:
        name = clean_text(m.username)
        who = self.paint("you" if name == self.me else name, name_colour(name))
        mark = self.paint(HISTORY_MARK, DIM) if m.replay else ""
        self._print(f"{mark}[{who}] {clean_text(m.message)}", m.timestamp)

    def _show_user_event(self, e: pb.UserEvent) -> None:
        verb = {pb.USER_JOINED: "joined", pb.USER_LEFT: "left"}.get(e.type)
        if verb is None:
            return
        name = clean_text(e.username)
        if e.type == pb.USER_LEFT:
            self._set_typing(name, False)
        who = self.paint(name, name_colour(name))
        star, what = self.paint("*", DIM), self.paint(f"{verb} the chat", DIM)
        self._print(f"{star} {who} {what}", e.timestamp)

    def _show_typing_event(self, e: pb.TypingEvent) -> None:
        self._set_typing(clean_text(e.username), e.type == pb.TYPING_START)

    def _show_system_event(self, e: pb.SystemEvent) -> None:
        text = clean_text(e.message)
        if e.code == pb.SYSTEM_INFO:
            self._print(self.paint(f"* {text}", DIM), e.timestamp)
        else:  # refused, rate limited, shutting down: the user should notice
            self._print(self.paint(f"! {text}", WARN), e.timestamp)

    # -- output -----------------------------------------------------------

    def _set_typing(self, name: str, typing: bool) -> None:
        if not self.show_typing:
            return
        with self._lock:
            if typing == (name in self._typing):
                return  # not a change
            if typing:
                self._typing[name] = None
            else:
                del self._typing[name]
        self.on_typing_change()

    def _print(self, line: str, timestamp: int = 0) -> None:
        if self.timestamps:
            line = f"{self.paint(clock(timestamp), DIM)} {line}"
        with self._lock:  # print looks up sys.stdout now: prompt_toolkit may have patched it
            if self._closed:
                raise OutputClosed
            try:
                print(line, flush=True)
            except BrokenPipeError:
                self._closed = True
                silence_stdout()
                raise OutputClosed from None


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


def read_lines(fd: int, lines: queue.Queue) -> None:
    """The stdin thread (piped input): each line into `lines`, then EOF.

    Reads the file descriptor with os.read, not sys.stdin: a daemon thread
    still blocked inside sys.stdin's buffer when the program exits would
    make the interpreter abort on its lock.
    """
    pending = b""
    while chunk := os.read(fd, 65536):
        *complete, pending = (pending + chunk).split(b"\n")
        for raw in complete:
            lines.put(raw.decode(errors="replace"))
    if pending:
        lines.put(pending.decode(errors="replace"))
    lines.put(EOF)
