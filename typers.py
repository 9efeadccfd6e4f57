"""Typing indicators: the hub's methods for who is typing, and where.

Part of the Hub (hub.py), kept in this file so each reads in one sitting:
these methods take the hub's `_lock` and use its directory and fan-out.
A user types in one room at a time (the one named by its TypingEvent);
a start in another room first stops the one before. Only changes are
forwarded, at most a few a second per user, and a typer silent for
TYPING_SILENCE_S (hub.py) gets a TYPING_STOP on their behalf. Other
servers hear a start again every TYPING_RETOLD_S while it lasts: they end
it as we do, after the silence time without news.
"""

import time

import chat_pb2 as pb
from events import typing_event
from member import Client

# Typing changes forwarded per client: a burst, then a few a second. A client
# flipping START/STOP in a loop would otherwise make us fan out thousands a second.
TYPING_CHANGES_BURST = 4
TYPING_CHANGES_PER_S = 2.0
# Other servers end a typing indicator after TYPING_SILENCE_S without news, as we
# do: while our user keeps typing, they are told again this often.
TYPING_RETOLD_S = 2.0


class Typers:
    """The hub's typing methods; see the module docstring."""

    def typing(self, client: Client, kind, room: str) -> None:
        """Forward a change of typing state in `room` to its other members; drop repeats.

        One room at a time: a start in another room first stops the one
        before. Changes past the client's typing bucket are dropped silently,
        the state left as the others last saw it (typing is ephemeral: a start
        that stays ends by the silence timer, or with the next message).
        """
        with self._lock:
            if room not in client.rooms or self._dir.clients.get(client.name) is not client:
                return
            starting = kind == pb.TYPING_START
            was_typing = client.typing_timer is not None
            is_change = starting != was_typing or (starting and client.typing_room != room)
            if is_change and self._typing_changes.try_take(client.name):
                return
            if not starting:
                self._stop_typing_locked(client)
                return
            if was_typing and client.typing_room != room:
                self._stop_typing_locked(client)
                was_typing = False
            if was_typing:
                client.typing_timer.cancel()  # still typing: restart the silence clock
            client.typing_timer = self._timers.schedule(
                self._typing_silence_s, lambda: self._typing_timeout(client)
            )
            if not was_typing:
                client.typing_room = room
                event = typing_event(client.name, pb.TYPING_START, room)
                self._broadcast_locked(event, room, skip=client)
            if not was_typing or time.monotonic() - client.typing_told_at > TYPING_RETOLD_S:
                client.typing_told_at = time.monotonic()  # other servers' silence clocks
                self.cluster.publish_typing(client.name, pb.TYPING_START, room)

    def _typing_timeout(self, client: Client) -> None:
        """Timer thread: the typer fell silent."""
        with self._lock:
            if client.name in self._dir.clients:
                self._stop_typing_locked(client)

    def _stop_typing_locked(self, client: Client) -> None:
        if client.typing_timer is None:
            return
        client.typing_timer.cancel()
        client.typing_timer = None
        room = client.typing_room
        event = typing_event(client.name, pb.TYPING_STOP, room)
        self._broadcast_locked(event, room, skip=client)
        self.cluster.publish_typing(client.name, pb.TYPING_STOP, room)
