"""The client's rooms: which it is in, which one is current, the last id seen in each.

One `RoomState` per session (client.py's `Chat.rooms`), the one place the
rest of the client asks about rooms:

- `joined()`: the rooms we are in, in the order we joined them (`--room`
  first, then each `/join`); what a reconnect joins again;
- `current`: where what we type goes, and what the prompt names;
- `last_seen(room)`: the id of the newest message shown in that room, sent
  with the room's join after a reconnect so the server sends exactly what
  was missed there (ids increase within a room, not across rooms);
- `confirmed(room)`: the server has said, on this call, that we are in it
  (our own USER_JOINED): only then is typing sent there, as the server
  refuses typing into a room we are not in, and a refusal arriving while a
  line is in flight would be taken for that line's.

terminal/commands.py changes it when the user types `/join` and `/part`
(at once: a line typed after `/join #ops` goes to #ops, as it is queued
after the join); a user interface may `switch` to another joined room (a key
to the next room with unread lines). The receive thread calls `is_new`
for each message. `on_change` is called, outside the lock, after the
joined rooms or the current one changed (the prompt redraws).

NOTE: `_lock` guards every field; nothing is called while holding it.
"""

import threading

from sanitize import LOBBY
from store import id_key


class RoomState:
    """Joined rooms, the current one, and the last id seen per room; see the module docstring."""

    def __init__(self, rooms=(LOBBY,)):
        self._lock = threading.Lock()
        self._joined: list[str] = list(dict.fromkeys(rooms)) or [LOBBY]  # in joining order
        self._current = self._joined[0]  # "" when we are in no room
        self._last_seen: dict[str, str] = {}  # room -> id of the newest message shown there
        self._confirmed: set[str] = set()  # rooms the server put us in, on this call
        self.on_change = lambda: None  # set by a user interface: redraw

    @property
    def current(self) -> str:
        """The room what we type goes to; "" when we are in none."""
        with self._lock:
            return self._current

    def joined(self) -> list[str]:
        """The rooms we are in (or are joining), in the order we joined them."""
        with self._lock:
            return list(self._joined)

    def last_seen(self, room: str) -> str:
        """The id of the newest message shown in `room`, "" if none."""
        with self._lock:
            return self._last_seen.get(room, "")

    # -- from the main thread: what the user asked for ---------------------------

    def join(self, room: str) -> bool:
        """Make `room` the current one; True if it is new to us (the caller sends the join)."""
        with self._lock:
            new = room not in self._joined
            if new:
                self._joined.append(room)
            self._current = room
        self.on_change()
        return new

    def switch(self, room: str) -> bool:
        """Make a room we are in the current one; False if we are not in it."""
        with self._lock:
            if room not in self._joined:
                return False
            self._current = room
        self.on_change()
        return True

    def part(self, room: str) -> bool:
        """Leave `room` (False if we are not in it); the room joined last before it is current."""
        with self._lock:
            if room not in self._joined:
                return False
            self._joined.remove(room)
            if self._current == room:
                self._current = self._joined[-1] if self._joined else ""
        self.on_change()
        return True

    def confirmed(self, room: str) -> bool:
        """Has the server said, on this call, that we are in `room`?"""
        with self._lock:
            return room in self._confirmed

    def new_call(self) -> None:
        """A new call begins: no room is confirmed on it yet."""
        with self._lock:
            self._confirmed.clear()

    # -- from the receive thread ----------------------------------------------------

    def entered(self, room: str, inside: bool) -> None:
        """The server says we are in `room` now (`inside`), or no longer."""
        with self._lock:
            if inside:
                self._confirmed.add(room)
            else:
                self._confirmed.discard(room)

    def is_new(self, room: str, message_id: str) -> bool:
        """False for an id at or before the last one shown in `room`; else remember it."""
        try:
            key = id_key(message_id)
        except ValueError:
            return True  # no usable id (a direct message, an older server): cannot dedupe
        with self._lock:
            last = self._last_seen.get(room)
            if last is not None and key <= id_key(last):
                return False
            self._last_seen[room] = message_id
            return True
