"""The client's user side: how server events look, and what the user types.

client.py is the protocol side (the Chat call, rejoining, piped lines);
this file is what the user sees and types. `Renderer` turns each
`ServerEvent` into one line of text; `Prompt` is the prompt_toolkit input
line on a terminal, with incoming lines above it and who is typing just
over it; `read_lines` reads piped input.

The receive thread calls `Renderer.show` for every event while the main
thread reads input, so the renderer's lock serialises output and guards the
set of people typing. NOTE: everything received is passed through
`sanitize.clean_text` before it is printed. The server cleans text too, but
a client must not trust whatever it connects to: the only escape codes that
ever reach the terminal are this file's own colours.
"""

import asyncio
import os
import queue
import signal
import threading
import time
import zlib

import click
from prompt_toolkit import PromptSession
from prompt_toolkit.patch_stdout import patch_stdout

import chat_pb2 as pb
from sanitize import NAME_RULE, clean_text, is_valid_name

PROMPT = "> "
TYPING_IDLE_S = 2.0  # no keystroke for this long: we stopped typing (SPEC §4)

# SGR colour codes (ESC [ code m). Names get one of PALETTE, picked by a
# hash of the name, so "alice" has the same colour in every client and run.
PALETTE = ("31", "32", "33", "34", "35", "36", "91", "92", "93", "94", "95", "96")
DIM = "2"
WARN = "1;33"  # bold yellow: notices that something went wrong
HISTORY_MARK = "[history] "  # before replayed messages; "[alice] hi" stays greppable
EOF = object()  # from read_lines: the input has ended
COMMANDS = {"/help": "list these commands", "/quit": "leave the chat (Ctrl-D does too)"}


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
        self._lock = threading.Lock()  # serialises printing; guards _typing
        self._typing: dict[str, None] = {}  # names typing now, first starter first

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

    def command(self, word: str) -> bool:
        """Run `word` if it is a /command other than /quit; True if it was one."""
        if not word.startswith("/"):
            return False
        if word == "/help":
            for name, what in COMMANDS.items():
                self.notice(f"{name}  {what}")
        else:
            self.problem(f"unknown command {word}: try /help")
        return True

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
            clock = time.strftime("%H:%M", time.localtime(timestamp or time.time()))
            line = f"{self.paint(clock, DIM)} {line}"
        with self._lock:  # print looks up sys.stdout now: prompt_toolkit may have patched it
            print(line, flush=True)


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


class Interrupted(Exception):
    """A read was ended from another thread (the chat call ended)."""


class Prompt:
    """The input line on a terminal, with the typing line above it.

    Lines printed while a line is being typed appear above the input line,
    which is redrawn with whatever was half-typed. The first keystroke sends
    TYPING_START; a cleared line, a sent line or TYPING_IDLE_S without a
    keystroke sends TYPING_STOP; only changes are sent. Everything here runs
    on the main thread except `interrupt`, which the receive thread calls.

    Ctrl-C during a read is a key, and the read raises KeyboardInterrupt.
    NOTE: a SIGINT (Ctrl-C between reads, when the terminal is not in raw
    mode, or `kill -INT`) is always ours: reads run with prompt_toolkit's
    own SIGINT handling off, which could drop one that came while a read
    was starting. A KeyboardInterrupt raised at a random point can land in
    a `__del__` and be lost, so `_on_sigint` only notes it and ends the
    current read, or the next one at once; while connecting it stops the
    wait at once.
    """

    def __init__(self, chat):
        self._chat = chat  # a client.Chat: what to send, and how to rejoin
        self._typing = False  # what the server was last told
        self._idle = None  # asyncio TimerHandle: TYPING_STOP after TYPING_IDLE_S
        self._ctrl_c = False  # SIGINT came between reads
        self._connecting = False  # in chat.connect() or chat.recover()
        renderer = chat.renderer
        # The typing line sits just above the input line, part of the prompt.
        # NOTE: not prompt_toolkit's bottom_toolbar, which is only drawn once
        # the terminal has answered a cursor-position query; some never do.
        self._session = PromptSession(
            lambda: f"{renderer.typing_line()}\n{PROMPT}", erase_when_done=True
        )
        self._session.default_buffer.on_text_changed += self._text_changed
        renderer.on_typing_change = self._session.app.invalidate  # thread-safe repaint

    def run(self) -> None:
        """Join, then read lines until /quit, sending each.

        Raises EOFError (Ctrl-D), KeyboardInterrupt (Ctrl-C), or ChatError.
        When the call drops, the read is interrupted, `chat.recover()`
        rejoins, and the half-typed line comes back on the new input line.
        """
        chat = self._chat
        chat.on_down = self.interrupt
        signal.signal(signal.SIGINT, self._on_sigint)  # reads leave it in place
        with patch_stdout(raw=True):  # print() lands above the input line, colours kept
            self._connect(chat.connect)
            keep = ""
            while True:
                line = self._read(default=keep)
                keep = ""
                if chat.link.ended.is_set():  # dropped: the line was not sent; keep it
                    keep = self._session.default_buffer.text if line is None else line
                    self._connect(chat.recover)
                    self._typing = False  # the new call starts with nobody typing
                elif line is None:
                    continue  # interrupted by an earlier call's end
                elif line.strip() == "/quit":
                    return
                elif not chat.renderer.command(line.strip()) and clean_text(line):
                    chat.say(line)

    def interrupt(self) -> None:
        """From any thread: end the current read (the call ended)."""
        app = self._session.app
        loop = app.loop
        if app.is_running and loop is not None:
            try:
                loop.call_soon_threadsafe(self._exit)
            except RuntimeError:
                pass  # the loop closed meanwhile: the next read's pre_run catches it

    def _read(self, default: str) -> str | None:
        """One line, or None if interrupted.

        NOTE: pre_run checks once the prompt is up, so an `interrupt()` or a
        Ctrl-C that came while no read was running is not missed.
        """
        ended = self._chat.link.ended
        try:
            return self._session.prompt(
                default=default,
                pre_run=lambda: (ended.is_set() or self._ctrl_c) and self._exit(),
                handle_sigint=False,  # _on_sigint handles it, during reads too
            )
        except Interrupted:
            if self._ctrl_c:
                raise KeyboardInterrupt from None
            return None
        finally:
            self._set_typing(False)

    def _connect(self, step) -> None:
        self._connecting = True
        try:
            step()
        finally:
            self._connecting = False

    def _on_sigint(self, signum, frame) -> None:
        self._ctrl_c = True
        if self._connecting:
            raise KeyboardInterrupt  # stop waiting for the server
        self.interrupt()  # end the read if one is running; else pre_run sees _ctrl_c

    def _exit(self) -> None:
        """On the prompt's event loop: end the read if it is still going."""
        future = self._session.app.future
        if future is not None and not future.done():
            self._session.app.exit(exception=Interrupted())

    def _text_changed(self, buffer) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # the line was reset between reads, not typed
        self._set_typing(bool(buffer.text))  # cancels the idle timer
        if buffer.text:
            self._idle = loop.call_later(TYPING_IDLE_S, self._set_typing, False)

    def _set_typing(self, typing: bool) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if typing != self._typing:
            self._typing = typing
            self._chat.typing(typing)
