"""What a terminal shows: the real client's output played into a terminal emulator (pyte).

prompt_toolkit redraws only the cells that changed: when a room's unread
count goes from 2 to 3, the bytes on the wire are a cursor move and "3".
So a test that asks what the prompt says reads the screen, not the bytes.
`Screen` is pexpect's `logfile_read`: every byte the test reads from the
client's pseudo-terminal is fed to the emulator as well, and the bells
are counted (a bell draws nothing).
"""

import time

import pexpect
import pyte
from clients import Terminal
from wire import EVENT_TIMEOUT_S

COLUMNS, ROWS = 100, 24  # what clients.Terminal sets on the pty
BELL = b"\a"


class Screen:
    """A terminal's screen, fed by a pexpect child's reads."""

    def __init__(self, child: Terminal):
        self.child = child
        self._screen = pyte.Screen(COLUMNS, ROWS)
        self._stream = pyte.ByteStream(self._screen)
        self.bells = 0  # bells rung so far
        child.logfile_read = self  # pexpect writes here what each read got

    def write(self, data: bytes) -> None:
        self.bells += data.count(BELL)
        self._stream.feed(data)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        """The rows with something on them, top to bottom, trailing blanks cut."""
        return [row.rstrip() for row in self._screen.display if row.strip()]

    def prompt(self) -> str:
        """The input line: the last row with something on it."""
        return self.lines()[-1]

    def wait_for(self, check, timeout=EVENT_TIMEOUT_S, what="") -> None:
        """Read the client's output until `check(self)` holds; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while not check(self):
            if time.monotonic() > deadline:
                shown = "\n".join(self.lines())
                raise AssertionError(f"not on screen within {timeout} s: {what}\n{shown}")
            try:
                self.child.read_nonblocking(4096, timeout=0.1)
            except pexpect.TIMEOUT:
                pass

    def shows(self, text: str, timeout=EVENT_TIMEOUT_S) -> None:
        """Wait until `text` is on a row of the screen."""
        self.wait_for(lambda s: any(text in row for row in s.lines()), timeout, repr(text))

    def prompt_is(self, text: str, timeout=EVENT_TIMEOUT_S) -> None:
        """Wait until the input line reads `text` (trailing spaces aside)."""
        self.wait_for(lambda s: s.prompt() == text.rstrip(), timeout, f"prompt {text!r}")
