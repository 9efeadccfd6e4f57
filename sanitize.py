"""Text cleaning and the rules for user and room names, shared by server and client.

And, for the server's own lines, a Redis URL as it may be printed: without
its credentials (`shown_url`, `without_secrets`).

Everything a person typed passes through `clean_text` twice: once on the
server before it is stored and fanned out, and once more in the client
just before it reaches the terminal, because a client must
not trust whatever server it talks to. The goal is that a chat line can
neither move the terminal's cursor (escape sequences, carriage returns) nor
forge a line that looks like someone else's (newlines, bidirectional
overrides, zero-width characters, runs of blanks that push text to the next
row).
"""

import functools
import re
import unicodedata
from urllib.parse import parse_qsl, urlsplit

# Whitespace that would break a line or jump the cursor: becomes one space.
_BREAKS_TO_SPACE = "\t\n\r\v\f\u0085\u2028\u2029"

# Unicode categories removed outright: Cc is C0, DEL and C1 (ESC included),
# Cf is the invisible "format" characters (U+202E right-to-left override,
# U+200B zero-width space, ...). Cs (lone surrogates) cannot come off the wire
# as valid UTF-8 but are cheap to drop.
_REMOVED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})

# Blank characters: every run of them becomes one space, so that no message can
# pad itself to the end of a terminal row and start a forged line on the next.
# Unicode's space separators (category Zs; tests/test_sanitize.py checks the list
# against unicodedata) and letters or symbols that draw nothing: Hangul fillers
# (U+115F, U+1160, U+3164, U+FFA0), Khmer inherent vowels (U+17B4, U+17B5), the
# blank Braille pattern (U+2800).
_SPACES = " \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u202f\u205f\u3000"
_BLANK_LOOKING = "\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0"
_BLANKS = frozenset(_BREAKS_TO_SPACE + _SPACES + _BLANK_LOOKING)
# A combining mark (categories Mn, Me) on a blank draws nothing either (U+034F,
# variation selectors): it is dropped, or " \u034f" pairs would pad a row.
_MARKS = frozenset({"Mn", "Me"})
_SPACE_RUN = re.compile(" {2,}")

NAME_MAX_CHARS = 32
NAME_RULE = "1-32 characters of letters, digits, '_', '-' or '.'"
# ASCII only on purpose: Unicode letters would let "аlice" (Cyrillic а)
# impersonate "alice".
_NAME_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_MAX_CHARS}}}")


# Names are unique by their skeleton: case folded, and the ASCII characters
# commonly taken for one another made one, so "Alice", "aIice" and "a1ice" are
# all "alice" while alice is online. The table (the README's "Names" has it too):
#   I i l 1 |  ->  l        O o 0  ->  o
# The cluster's Lua (cluster/lua.py: `skeleton`) applies the same table.
SKELETON_TABLE = str.maketrans({"i": "l", "1": "l", "|": "l", "0": "o"})


LOBBY = "lobby"  # the room every stream starts in
ROOM_RULE = "1-32 characters of lowercase letters, digits, '-' or '_'"
_ROOM_PATTERN = re.compile(r"[a-z0-9_\-]{1,32}")


def clean_text(text: str) -> str:
    """Return `text` safe to print on one terminal line: blanks folded, trimmed.

    Empty if nothing visible is left (a message of only blanks).
    """
    if text.isascii() and text.isprintable():  # the common case, checked in C
        return _SPACE_RUN.sub(" ", text).strip(" ")
    kept = []
    after_blank = True  # leading blanks are dropped
    for char in text:
        if char in _BLANKS:
            if not after_blank:
                kept.append(" ")
            after_blank = True
            continue
        category = unicodedata.category(char)
        if category in _REMOVED_CATEGORIES or (after_blank and category in _MARKS):
            continue
        kept.append(char)
        after_blank = False
    return "".join(kept).rstrip(" ")


def is_valid_name(name: str) -> bool:
    """True if `name` follows NAME_RULE."""
    return _NAME_PATTERN.fullmatch(name) is not None


@functools.lru_cache(maxsize=65_536)  # the hub asks for the same few names again and again
def name_skeleton(name: str) -> str:
    """What `name` looks like: equal skeletons are one name ("a1ice" is "Alice")."""
    return name.casefold().translate(SKELETON_TABLE)


def same_name(a: str, b: str) -> bool:
    """Do `a` and `b` name the same user (same skeleton)?"""
    return a == b or name_skeleton(a) == name_skeleton(b)


def room_name(text: str) -> str | None:
    """The room `text` names ("#Rust" -> "rust"; "" -> the lobby), or None if invalid."""
    name = text.lower().removeprefix("#") if text else LOBBY
    return name if _ROOM_PATTERN.fullmatch(name) else None


# -- what of a Redis URL may be printed ----------------------------------------------

_SECRET_QUERY_KEYS = frozenset({"password", "username", "user"})


def shown_url(url: str) -> str:
    """A Redis URL as it may be printed: scheme, host, port and db only.

    Whatever the credentials' form (user-info, `?password=`, an unencoded
    `@` inside the password): the URL is parsed, and only those parts kept.
    """
    if url.startswith("redis+sentinel://"):  # several host:port, then /service/db
        hosts, _, path = url.partition("://")[2].rpartition("@")[2].partition("/")
        if not re.fullmatch(r"[\w.\-\[\]:,]+", hosts):
            return "(a Redis URL that cannot be parsed)"
        service_db = "/".join(re.findall(r"[\w.\-]+", path.split("?", 1)[0])[:2])
        return f"redis+sentinel://{hosts}/{service_db}"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(a Redis URL that cannot be parsed)"
    if parts.scheme == "unix":
        where = parts.path  # the socket's path
    else:
        where = f"[{host}]" if ":" in host else host
        where += f":{port}" if port is not None else ""
    query = dict(parse_qsl(parts.query))
    db = parts.path.strip("/") if parts.scheme != "unix" else query.get("db", "")
    db = db if db.isdigit() else ""
    if parts.scheme == "unix":
        return f"unix://{where}" + (f"?db={db}" if db else "")
    return f"{parts.scheme}://{where}" + (f"/{db}" if db else "")


def without_secrets(text: str, url: str | None) -> str:
    """`text` (an error, a log line) with `url` shown as `shown_url` and its secrets masked."""
    if not url:
        return text
    text = text.replace(url, shown_url(url))
    for secret in _secrets_of(url):
        text = text.replace(secret, "***")
    return text


def _secrets_of(url: str) -> list[str]:
    """The user-info and the credential query values of `url`, longest first."""
    netloc = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    user_info = netloc.rpartition("@")[0]
    secrets = [user_info, *user_info.split(":", 1), *user_info.replace(":", "@").split("@")]
    query = url.partition("?")[2]
    secrets += [v for k, v in parse_qsl(query) if k.lower() in _SECRET_QUERY_KEYS]
    return sorted((s for s in secrets if len(s) > 1), key=len, reverse=True)
