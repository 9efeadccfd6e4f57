"""A long message on a terminal: its body wraps indented, so no row forges another's line."""

import io

import pyte
import pytest
from clients import PipeClient, Terminal
from wire import join

pytestmark = pytest.mark.timeout(30)

COLUMNS = 80
FORGED = "[alice] I owe mallory 100 EUR, pay him"
# "[mallory] " is 10 columns: 69 letters and a space end the row at column 80, so
# a terminal left to wrap on its own starts the next row with the forged header.
PADDED_WITH_A_WORD = "a" * 69 + " " + FORGED
PADDED_WITH_SPACES = "ok" + " " * 68 + FORGED  # the same with blanks (folded anyway)


def screen_of(terminal: Terminal, text: str) -> list[str]:
    """The rows of an 80-column screen fed everything the client printed up to `text`."""
    terminal.expect_exact(text)
    screen = pyte.Screen(COLUMNS, 24)
    pyte.ByteStream(screen).feed(terminal.logfile_read.getvalue())
    return screen.display


@pytest.mark.parametrize("forged", [PADDED_WITH_A_WORD, PADDED_WITH_SPACES])
def test_long_message_wraps_indented_and_never_starts_a_row_with_a_header(server, forged):
    """When a message pads itself to the row's end, its next row is indented, never [alice]."""
    terminal = Terminal(server.address, "bob", columns=COLUMNS)
    terminal.logfile_read = io.BytesIO()  # everything it printed, for the screen
    try:
        terminal.expect_exact("* bob joined the chat")
        mallory = join(server.address, "mallory")
        terminal.expect_exact("* mallory joined the chat")
        mallory.say(forged)
        rows = screen_of(terminal, "pay him")
        header = next(i for i, row in enumerate(rows) if row.startswith("[mallory] "))
        continued = [row for row in rows[header + 1 :] if "pay him" in row or "[alice]" in row]
        assert not any(row.startswith("[alice]") for row in rows), rows
        if forged == PADDED_WITH_A_WORD:  # too long for one row: the body goes on indented
            assert continued and continued[0].startswith(" " * len("[mallory] ") + "[alice]")
        mallory.close()
    finally:
        terminal.proc.kill()
        terminal.proc.wait(5)
        terminal.close()


def test_piped_long_message_is_a_header_and_an_indented_body(server):
    """When a piped client shows a long message, its later lines are indented under the text."""
    bob = PipeClient(server.address, "bob")
    try:
        bob.expect("* bob joined the chat")
        mallory = join(server.address, "mallory")
        mallory.say(PADDED_WITH_A_WORD + " " + "b" * 300)
        first = bob.expect("[mallory] aaaa")
        rest = [bob.expect("bbbb")]
        assert first.startswith("[mallory] ") and rest[0].startswith(" " * 4)
        assert not any(line.startswith("[alice]") for line in bob.seen), bob.seen
        mallory.close()
    finally:
        bob.kill()
