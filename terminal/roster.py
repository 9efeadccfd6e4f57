"""Who is in our room, as far as the client knows: the names that Tab completes.

The client is never sent a list of members to keep; it pieces one together
from what passes by. client.py hands every event to `Roster.see` on the
receive thread:

    our USER_JOINED with a room   --> a new room: forget the old names
    "in #rust (2): alice, carol"  --> the server's list, sent after each join
    USER_JOINED / USER_LEFT       --> one name more or less, if in our room

and terminal/commands.py's `/who` hands it the answer of ListUsers. terminal/prompt.py's
completer reads `names()` on the main thread.

NOTE: `_lock` guards `room` and `_names`; nothing blocks while holding it.
"""

import re
import threading

import chat_pb2 as pb
from sanitize import LOBBY, clean_text, is_valid_name

# The server's notice after a join or a move: "in #rust (2): alice, carol".
PRESENT = re.compile(r"in #([a-z0-9_\-]+) \(\d+\): (.*)")


class Roster:
    """The names online in our current room (ours left out)."""

    def __init__(self, me: str, room: str = LOBBY):
        self.me = me
        self._lock = threading.Lock()
        self.room = room  # the room the names are of
        self._names: set[str] = set()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._names, key=str.lower)

    def reset(self, room: str, names) -> None:
        """Everyone in `room` now, if it is still ours (a ListUsers answer, say)."""
        with self._lock:
            if room == self.room:
                self._names = {n for n in names if n != self.me and is_valid_name(n)}

    def see(self, event: pb.ServerEvent) -> None:
        """Learn from one event (receive thread)."""
        kind = event.WhichOneof("event")
        if kind == "user_event":
            self._see_user(event.user_event)
        elif kind == "system_event" and event.system_event.code == pb.SYSTEM_INFO:
            if match := PRESENT.fullmatch(clean_text(event.system_event.message)):
                self.reset(match[1], match[2].split(", "))

    def _see_user(self, e: pb.UserEvent) -> None:
        room = e.room or LOBBY
        with self._lock:
            if e.username == self.me and e.type == pb.USER_JOINED:
                if room != self.room:
                    self.room, self._names = room, set()
            elif room == self.room and is_valid_name(e.username):
                if e.type == pb.USER_JOINED:
                    self._names.add(e.username)
                elif e.type == pb.USER_LEFT:
                    self._names.discard(e.username)
