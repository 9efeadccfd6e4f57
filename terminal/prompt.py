"""The input line on a terminal: what the user types, with incoming lines above it.

client.py runs `Prompt` when stdin and stdout are a terminal (terminal/piped.py
otherwise). It reads lines with prompt_toolkit and hands each to
`Commands.enter` (terminal/commands.py); terminal/render.py prints what arrives, above the
input line, through terminal/view.py (only the current room's lines; the
others' are kept and counted), and the typing line just over it. The prompt
names the current room and every other room with unread lines
(`#lobby [#rust 3, #go 1!]> `), redrawn as they come; Alt-A goes to the
next room with unread lines, as in irssi. Tab completes commands, rooms and
names (terminal/complete.py). While the user types, this file tells the server:
TYPING_START on the first keystroke, again every TYPING_REPEAT_S while the
keys keep coming (the server takes 5 s of silence as a stop), and
TYPING_STOP after TYPING_IDLE_S without a key, on a sent line or a cleared
one. Everything here runs on the main thread except `interrupt`, which the
receive thread calls when a call ends.
"""

import asyncio
import signal
import time

from prompt_toolkit import PromptSession
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.patch_stdout import patch_stdout

from terminal.commands import Commands
from terminal.complete import Completions
from terminal.view import View

PROMPT = "> "  # after the rooms: "#lobby [#rust 3]> "
NEXT_UNREAD_KEY = ("escape", "a")  # Alt-A (Meta-A), as in irssi
TYPING_IDLE_S = 2.0  # no keystroke for this long: we stopped typing
# While typing goes on, repeat TYPING_START this often: with keys at most
# TYPING_IDLE_S apart, the server hears from us within 4.5 s, under its 5 s.
TYPING_REPEAT_S = 2.5


class Interrupted(Exception):
    """A read was ended from another thread (the chat call ended)."""


class Prompt:
    """The input line on a terminal, with the typing line above it.

    Lines printed while a line is being typed appear above the input line,
    which is redrawn with whatever was half-typed. A line the user pressed
    Enter on goes to `Commands.enter`; what it sends is kept until its echo
    comes back, across a rejoin too.

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
        self._commands = Commands(chat)
        self._typing = False  # what the server was last told
        self._told_at = 0.0  # monotonic, when it was last told we are typing
        self._idle = None  # asyncio TimerHandle: TYPING_STOP after TYPING_IDLE_S
        self._ctrl_c = False  # SIGINT came between reads
        self._connecting = False  # in chat.connect() or chat.recover()
        renderer = chat.renderer
        ring = lambda: renderer.emit("", ring=True, end="")  # noqa: E731
        self._view = renderer.view = View(renderer.emit, ring, chat.room)
        keys = KeyBindings()
        keys.add(*NEXT_UNREAD_KEY)(lambda event: self._next_unread())
        # The typing line sits just above the input line, part of the prompt.
        # NOTE: not prompt_toolkit's bottom_toolbar, which is only drawn once
        # the terminal has answered a cursor-position query; some never do.
        self._session = PromptSession(
            lambda: f"{renderer.typing_line()}\n{self._view.prompt(PROMPT)}",
            erase_when_done=True,
            completer=Completions(chat),
            complete_while_typing=False,  # Tab only: no menu popping up over the chat
            key_bindings=keys,
        )
        self._session.default_buffer.on_text_changed += self._text_changed
        renderer.on_typing_change = self._session.app.invalidate  # thread-safe repaint
        self._view.on_change = self._session.app.invalidate

    def run(self) -> None:
        """Join, then read lines until /quit, sending each.

        Raises EOFError (Ctrl-D), KeyboardInterrupt (Ctrl-C), or ChatError.
        When the call drops, the read is interrupted, `chat.recover()`
        rejoins, and the half-typed line comes back on the new input line;
        lines already entered are sent again by `chat`.
        """
        chat = self._chat
        chat.on_down = self.interrupt
        signal.signal(signal.SIGINT, self._on_sigint)  # reads leave it in place
        with patch_stdout(raw=True):  # print() lands above the input line, colours kept
            self._connect(chat.start)
            keep = ""
            while True:
                try:
                    line = self._read(default=keep)
                except EOFError:  # Ctrl-D
                    return self._connect(chat.flush)  # lines not yet confirmed; Ctrl-C stops
                keep = ""
                if line is not None and not self._commands.enter(line, interactive=True):
                    return self._connect(chat.flush)  # /quit
                if chat.link.ended.is_set():  # dropped: keep the half-typed line
                    keep = self._session.default_buffer.text if line is None else ""
                    self._connect(chat.recover)
                    self._typing = False  # the new call starts with nobody typing

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

    def _next_unread(self) -> None:
        """Alt-A, on the prompt's loop: go to the next room with unread lines, if any."""
        if (room := self._view.next_unread()) is not None:
            self._commands.switch(room)

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
        """Tell the server of a change, and repeat a start every TYPING_REPEAT_S."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        now = time.monotonic()
        if typing != self._typing or (typing and now - self._told_at >= TYPING_REPEAT_S):
            self._typing = typing
            self._told_at = now
            self._chat.typing(typing)
