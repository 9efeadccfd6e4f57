"""Text cleaning and the rules for user and room names, shared by server and client.

Everything a person typed passes through `clean_text` twice: once on the
server before it is stored and fanned out, and once more in the client
just before it reaches the terminal, because a client must
not trust whatever server it talks to. The goal is that a chat line can
neither move the terminal's cursor (escape sequences, carriage returns) nor
forge a line that looks like someone else's (newlines, bidirectional
overrides, zero-width characters).
"""

import re
import unicodedata

# Whitespace that would break a line or jump the cursor: becomes one space.
_BREAKS_TO_SPACE = "\t\n\r\v\f\u0085\u2028\u2029"

# Unicode categories removed outright: Cc is C0, DEL and C1 (ESC included),
# Cf is the invisible "format" characters (U+202E right-to-left override,
# U+200B zero-width space, ...). Cs (lone surrogates) cannot come off the wire
# as valid UTF-8 but are cheap to drop.
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})

NAME_MAX_CHARS = 32
NAME_RULE = "1-32 characters of letters, digits, '_', '-' or '.'"
# ASCII only on purpose: Unicode letters would let "аlice" (Cyrillic а)
# impersonate "alice".
_NAME_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_MAX_CHARS}}}")


LOBBY = "lobby"  # the room every stream starts in
ROOM_RULE = "1-32 characters of lowercase letters, digits, '-' or '_'"
_ROOM_PATTERN = re.compile(r"[a-z0-9_\-]{1,32}")


def clean_text(text: str) -> str:
    """Return `text` safe to print on one terminal line, trimmed of spaces."""
    if text.isprintable():  # the common case, checked in C: nothing to remove
        return text.strip()
    kept = []
    for char in text:
        if char in _BREAKS_TO_SPACE:
            kept.append(" ")
        elif unicodedata.category(char) not in _REMOVED_CATEGORIES:
            kept.append(char)
    return "".join(kept).strip()


def is_valid_name(name: str) -> bool:
    """True if `name` follows NAME_RULE."""
    return _NAME_PATTERN.fullmatch(name) is not None


def room_name(text: str) -> str | None:
    """The room `text` names ("#Rust" -> "rust"; "" -> the lobby), or None if invalid."""
    name = text.lower().removeprefix("#") if text else LOBBY
    return name if _ROOM_PATTERN.fullmatch(name) else None
