"""Wrapping a line to the terminal's width, its body indented under its start.

terminal/render.py builds each line as a head (`[alice] `, with colours)
and a body (the text) and calls `wrap`. A terminal left to wrap a long line
itself starts each next row at column 0, where a message padded to the end
of a row could put `[alice] I owe mallory...` and pass for alice's line.
Wrapped here, every row of a body but the first is indented under the
text (or HANG columns in, if that leaves it too narrow), so only a head
ever starts at column 0.

Widths are terminal columns, not characters: a wide East Asian character
takes 2, a combining mark 0, and our own colour codes none.
"""

import re
import unicodedata

SGR_PATTERN = re.compile(r"\x1b\[[0-9;]*m")  # our colours: they take no column
NARROWEST_BODY = 20  # columns: a body narrower than this hangs by HANG instead
HANG = 4  # columns a continuation row is indented by when the head is too wide


def width(text: str) -> int:
    """Columns `text` takes on a terminal: wide East Asian 2, marks 0, colours 0."""
    return sum(_char_width(char) for char in SGR_PATTERN.sub("", text))


def _char_width(char: str) -> int:
    if unicodedata.category(char) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def wrap(head: str, body: str, columns: int) -> list[tuple[str, str]]:
    """`head` + `body` as rows of (head or indent, body's text) that fit `columns`.

    Only the first row starts at column 0.

    The body goes on under its own start (or HANG columns in, if that would
    leave it narrower than NARROWEST_BODY), broken between words; a word too
    long for a row is split. The last column stays free: terminals differ on
    a row filled to its end.
    """
    usable = max(columns - 1, 2 * HANG)
    start = width(head)
    hang = start if usable - start >= NARROWEST_BODY else HANG
    if start >= usable:  # a head wider than the row (a tiny terminal): broken too, uncoloured
        head, rows = "", _break(f"{SGR_PATTERN.sub('', head)}{body}", usable, usable - hang)
    else:
        rows = _break(body, usable - start, usable - hang)
    return [(head, rows[0]), *((" " * hang, row) for row in rows[1:])]


def _break(text: str, first: int, rest: int) -> list[str]:
    """`text` in rows of at most `first`, then `rest` columns, broken between words."""
    rows: list[str] = []
    line: list[str] = []
    used, room = 0, first
    for word in text.split(" ") if text else ():
        size = width(word)
        if line and used + 1 + size > room:  # this word starts the next row
            rows.append(" ".join(line))
            line, used, room = [], 0, rest
        while size > room:  # a word longer than a row: split (`line` is empty here)
            piece = _fitting(word, room)
            rows.append(piece)
            word, room = word[len(piece) :], rest
            size = width(word)
        if word:
            used += size + bool(line)
            line.append(word)
    rows.append(" ".join(line))
    return rows


def _fitting(word: str, room: int) -> str:
    """The longest start of `word` that fits `room` columns (one character at least)."""
    used = 0
    for i, char in enumerate(word):
        used += _char_width(char)
        if used > room:
            return word[: max(i, 1)]
    return word
