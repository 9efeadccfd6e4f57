"""Which room is on screen: its lines above the input, the other rooms' kept and counted.

On a terminal the user is in several rooms at once but reads one, the
current room, as in irssi or Slack. terminal/render.py turns each event
into a line and hands the lines that belong to a room to `View.place`; a
line of the current room is printed at once, a line of any other room is
kept (its last KEPT_LINES) and counted, and terminal/prompt.py shows the
counts in the prompt (`#lobby [#rust 3, #go 1!]> `, "!" when a line there
mentions us). `switch` makes another room current and prints what was
missed there first, so its live lines follow in order. Lines that belong
to no room (direct messages, the server's notices, the client's own) never
come here: they show whatever the current room.

    receive thread: Renderer.show --> View.place --> printed, or kept and counted
    main thread:    /join of a joined room, Alt-A (Commands.switch)  \
    receive thread: our join or leave confirmed (client.py)           --> Renderer.enter_room
                    --> View.switch --> the missed lines printed, then the room is live

What counts as unread: others' messages and actions, live, or missed while
the connection was down (replayed after a rejoin). Joins and leaves are
kept and shown on a switch but not counted, and so is a room's history
when we first join it: it is context, not news.

NOTE: one lock, `_lock`, guards every field, and is held while printing
(Renderer.emit, which takes the renderer's lock after it: always in that
order), so a switch's missed lines are printed before any live line of the
room that arrives meanwhile. `on_change` (a repaint of the prompt) is
called outside it.
"""

import threading
from collections import deque

KEPT_LINES = 500  # per room not on screen: what a switch can still show of it
MORE = "!"  # after a room's count in the prompt: a line there mentions us


class View:
    """The current room, and for each other room the lines kept and the unread count."""

    def __init__(self, write, ring, room: str | None):
        self._write = write  # prints one line above the input (Renderer.emit)
        self._ring = ring  # rings the terminal's bell, printing nothing
        self.on_change = lambda: None  # the prompt's repaint (thread-safe)
        self._lock = threading.Lock()
        self._current = room or None  # the room on screen; None when in no room
        self._kept: dict[str, deque[str]] = {}  # room -> its last lines not yet shown
        self._unread: dict[str, int] = {}  # room -> lines counted; in order of first unread
        self._dropped: dict[str, int] = {}  # room -> lines missed past KEPT_LINES
        self._mentioned: set[str] = set()  # rooms with an unread line that mentions us
        self._joined: set[str] = set()  # rooms whose join we saw: a replay there is news

    @property
    def current(self) -> str | None:
        with self._lock:
            return self._current

    def place(self, room: str, line: str, news=False, replay=False, mention=False, ring=False):
        """A line of `room` (receive thread): print it if on screen, else keep and count it.

        `news`: someone else's message or action (counted), not a join, a
        leave or our own line; `replay`: history, counted only after a
        rejoin; `mention`: it names us (marked "!"); `ring`: ring the bell.
        """
        with self._lock:
            if room == self._current:
                return self._write(line, ring)
            self._keep(room, line)
            if news and (not replay or room in self._joined):
                self._unread[room] = self._unread.get(room, 0) + 1
                if mention:
                    self._mentioned.add(room)
            if ring:
                self._ring()
        self.on_change()

    def joined(self, room: str) -> None:
        """We are in `room` (our own join): after a rejoin, its replayed lines are news."""
        with self._lock:
            self._joined.add(room)

    def left(self, room: str) -> None:
        """We left `room`: forget what it kept."""
        with self._lock:
            self._joined.discard(room)
            self._forget(room)
        self.on_change()

    def switch(self, room: str | None) -> None:
        """Make `room` current (None or "": no room): print what was missed there, then live."""
        room = room or None
        with self._lock:
            if room == self._current:
                return
            self._current = room
            if room is not None:
                self._show_missed(room)
        self.on_change()

    def next_unread(self) -> str | None:
        """Where Alt-A goes: the first room that mentions us, else the first with unread lines."""
        with self._lock:
            rooms = [r for r in self._unread if r in self._mentioned] or list(self._unread)
        return rooms[0] if rooms else None

    def prompt(self, end: str) -> str:
        """ "#lobby [#rust 3, #go 1!]> ": the current room, then each with unread lines."""
        with self._lock:
            here = f"#{self._current}" if self._current is not None else ""
            counts = [f"#{r} {n}{MORE if r in self._mentioned else ''}"
                      for r, n in self._unread.items()]  # fmt: skip
        others = f"[{', '.join(counts)}]" if counts else ""
        return " ".join(part for part in (here, others) if part) + end

    def unread(self) -> dict[str, int]:
        """Each room with unread lines, and how many (for tests and the lab)."""
        with self._lock:
            return dict(self._unread)

    # -- under the lock ---------------------------------------------------------

    def _keep(self, room: str, line: str) -> None:
        kept = self._kept.setdefault(room, deque(maxlen=KEPT_LINES))
        if len(kept) == KEPT_LINES:
            self._dropped[room] = self._dropped.get(room, 0) + 1
        kept.append(line)

    def _show_missed(self, room: str) -> None:
        """Print a header and the lines `room` kept, unread or not; none are unread after."""
        kept, unread = self._kept.get(room, ()), self._unread.get(room, 0)
        dropped = self._dropped.get(room, 0)
        news = f": {unread} new" if unread else ""
        lost = f", {dropped} older not kept" if dropped else ""
        self._write(f"-- #{room}{news}{lost} --", False)  # where the lines below belong
        for line in kept:
            self._write(line, False)
        self._forget(room)

    def _forget(self, room: str) -> None:
        self._kept.pop(room, None)
        self._unread.pop(room, None)
        self._dropped.pop(room, None)
        self._mentioned.discard(room)
