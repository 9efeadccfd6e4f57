"""Who is in our rooms, as far as the client knows: the names that Tab completes.

The client is never sent a list of members to keep; it pieces one together
from what passes by, for each room it is in. client.py hands every event
to `Roster.see` on the receive thread:

    our USER_JOINED with a room   --> a room of ours, names to learn
    our USER_LEFT with a room     --> not ours any more: forget its names
    "in #rust (2): alice, carol"  --> the server's list, sent after each join
    USER_JOINED / USER_LEFT       --> one name more or less, in one of our rooms

and terminal/commands.py's `/who` hands it the answer of ListUsers.
terminal/complete.py reads `names()` and `rooms()` when Tab is pressed,
on a thread of prompt_toolkit's.

NOTE: `_lock` guards `_rooms`; nothing blocks while holding it.
"""

import re
import threading

import chat_pb2 as pb
from sanitize import LOBBY, clean_text, is_valid_name

# The server's notice after a join or a move: "in #rust (2): alice, carol".
PRESENT = re.compile(r"in #([a-z0-9_\-]+) \(\d+\): (.*)")


class Roster:
    """The names online in each of our rooms (ours left out)."""

    def __init__(self, me: str, room: str = LOBBY):
        self.me = me
        self._lock = threading.Lock()
        self._rooms: dict[str, set[str]] = {room: set()}  # our room -> the others in it

    def names(self, room: str | None = None) -> list[str]:
        """Everyone in `room`, or in any of our rooms."""
        with self._lock:
            rooms = [self._rooms.get(room, set())] if room else list(self._rooms.values())
            return sorted(set().union(*rooms), key=str.lower)

    def rooms(self) -> list[str]:
        with self._lock:
            return sorted(self._rooms)

    def reset(self, room: str, names) -> None:
        """Everyone in `room` now, if it is one of ours (a ListUsers answer, say)."""
        with self._lock:
            if room in self._rooms:
                self._rooms[room] = {n for n in names if n != self.me and is_valid_name(n)}

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
            if e.username == self.me:
                if e.type == pb.USER_JOINED:
                    self._rooms.setdefault(room, set())
                elif e.type == pb.USER_LEFT:
                    self._rooms.pop(room, None)
            elif room in self._rooms and is_valid_name(e.username):
                if e.type == pb.USER_JOINED:
                    self._rooms[room].add(e.username)
                elif e.type == pb.USER_LEFT:
                    self._rooms[room].discard(e.username)
