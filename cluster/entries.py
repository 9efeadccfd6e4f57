"""Message entries in Redis streams: what our servers write, and reading back anything.

cluster/store.py writes each accepted message as one entry (`Pending.fields`)
and reads entries in two places, the follower (live delivery) and history
(joins, cluster/history.py). Both turn each entry into a `Message` here.
Our servers write `username`, `message`, `timestamp`, `server` and `seq`,
plus `room` outside the lobby, `action` for /me, `key` for a line with one,
and `events` (cluster/order.py; the write script adds it); another tool may write
anything (`redis-cli XADD chat:messages '*' text hi`). An entry is never
skipped and `to_message` never raises:

- a missing or empty `username` shows as `unknown`; `message` missing is "";
- a missing or non-integer `timestamp` is the entry id's time; one outside
  0 .. year 9999 is clamped into it, so every client can render it;
- an entry without `server`/`seq` (another tool's) is its own origin and is
  delivered once, like any other; its text and name are cleaned as a
  client's would be (our own servers cleaned theirs before writing);
- no `room` (or one that is not a room name) means the lobby.

Each bad entry is logged once (a bounded memory of the ids already logged),
however often history reads it again.
"""

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

from sanitize import LOBBY, NAME_MAX_CHARS, clean_text, room_name
from store import Message, id_key

log = logging.getLogger(__name__)

UNKNOWN_USER = "unknown"  # the name shown for an entry without one
MAX_TIMESTAMP_S = 253_402_300_799  # 9999-12-31 23:59:59 UTC: the last second clients render
WARNED_MAX = 10_000  # bad entry ids remembered as already logged; beyond, the oldest go

_warned_lock = threading.Lock()  # guards _warned (the follower and every join read entries)
_warned: OrderedDict[str, None] = OrderedDict()


@dataclass(slots=True)
class Pending:
    """A message accepted here and not yet written; `id` is set once delivered."""

    seq: int  # this server's sequence number: dedupes writes and outage deliveries
    username: str
    text: str
    timestamp: int
    room: str = LOBBY
    action: bool = False
    id: str | None = None
    key: str = ""  # the sender's key for this line ("": none)
    # Written before, under this id ("": unknown), then lost by Redis: written again
    written: str | None = None

    def message(self) -> Message:
        return Message(
            self.id, self.username, self.text, self.timestamp, self.room, self.action, self.key
        )

    def fields(self, server_id: str) -> dict:
        """The entry's fields; a lobby message's are what they were before rooms."""
        fields = {"username": self.username, "message": self.text, "timestamp": self.timestamp,
                  "server": server_id, "seq": self.seq}  # fmt: skip
        if self.room != LOBBY:
            fields["room"] = self.room
        if self.action:
            fields["action"] = 1
        if self.key:
            fields["key"] = self.key
        return fields


def to_message(entry_id: str, fields: dict) -> Message:
    """The message an entry holds, with defaults for what is missing or malformed."""
    problems = []
    username = fields.get("username") or ""
    text = fields.get("message")
    if text is None:
        problems.append("no message")
        text = ""
    if "server" not in fields:  # another tool's entry: clean it as a client would
        username, text = clean_text(username)[:NAME_MAX_CHARS], clean_text(text)
    if not username:
        problems.append("no username")
        username = UNKNOWN_USER
    timestamp = _timestamp(entry_id, fields.get("timestamp"), problems)
    room = room_name(fields.get("room") or LOBBY)
    if room is None:
        problems.append(f"room {fields['room']!r}")
    if problems:
        _warn_once(entry_id, problems)
    action = fields.get("action") in ("1", "true")
    key = fields.get("key", "")
    return Message(entry_id, username, text, timestamp, room or LOBBY, action, key)


def origin(entry_id: str, fields: dict) -> tuple[str, int]:
    """(server, seq) of an entry; an entry without them is its own origin, seq 0."""
    try:
        return fields["server"], int(fields["seq"])
    except (KeyError, ValueError):
        return entry_id, 0


def _timestamp(entry_id: str, raw: str | None, problems: list) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        problems.append(f"timestamp {raw!r}")
        return id_key(entry_id)[0] // 1000  # the time Redis stored it
    clamped = min(max(value, 0), MAX_TIMESTAMP_S)
    if clamped != value:
        problems.append(f"timestamp {value} out of range")
    return clamped


def _warn_once(entry_id: str, problems: list) -> None:
    with _warned_lock:
        if entry_id in _warned:
            return
        _warned[entry_id] = None
        if len(_warned) > WARNED_MAX:
            _warned.popitem(last=False)
    log.warning("stream entry %s shown with defaults: %s", entry_id, ", ".join(problems))
