"""The other servers, as the hub sees them: none (`Alone`), or their users.

With Redis, cluster/presence.py follows what the other servers' users do and calls
the hub with it from its own thread: `remote_event` (joined, changed rooms,
left, typed), `resync_remote` (after a gap: everyone, at once), `remote_direct`
(a direct message for one of ours) and `kick` (our user's name is held
elsewhere). These methods are part of the Hub (hub.py), kept in this file
so each reads in one sitting: they take the hub's `_lock` and use its
directory (rooms.py) and fan-out like the rest of the hub.

Without Redis the hub's cluster is `Alone`, a null object: no one to tell,
no one to hear from, and the single-server path has no `if redis:` in it.
"""

import chat_pb2 as pb
from events import direct_event, system_event, typing_event, user_event
from member import DRAIN, KICKED
from rooms import Remote

RESYNC_CHUNK = 200  # changes of a resync announced at once; then the queues get room


class ClaimUnconfirmed(Exception):
    """The name's claim cannot be confirmed in a Redis other servers share: retry later."""


class Alone:
    """The single-server case: no one to share with, nothing to do.

    The same methods as `cluster.Cluster`, which shares names and live
    events with the other servers on one Redis.
    """

    def claim(self, name: str, room: str) -> str | None:
        return ""  # always granted; the hub checks names online here

    def set_rooms(self, name: str, claim: str, rooms: list[str]) -> None:
        pass

    def release(self, name: str, claim: str) -> None:
        pass

    def publish_typing(self, name: str, kind, room: str) -> None:
        pass

    def direct(self, sender, to, text, timestamp: int, action: bool, key: str = "") -> None:
        pass  # never called: with no other servers, no recipient is remote

    def first_direct(self, sender: str, key: str) -> bool:
        return True  # the hub remembers the keys it took; no one else takes any

    def start(self, hub) -> None:
        pass

    def close(self) -> None:
        pass


class RemoteUsers:
    """The hub's methods for other servers' users; see the module docstring."""

    def remote_event(self, kind: str, name: str, typing=0, rooms=frozenset()) -> None:
        """Cluster thread: another server's user joined, changed rooms, left, or typed.

        `rooms`: every room they are in now (joined, rooms), or the room they
        type in (typing). Only changes are announced, so an event that
        arrives twice (or after a resync already told it) is shown once.
        """
        with self._lock:
            if name in self._dir.clients:
                return  # about a name online here: ours is the one that counts
            if kind in ("joined", "rooms"):
                self._remote_at_locked(name, set(rooms))
            elif kind == "left":
                self._remote_leave_locked(name)
            elif kind == "typing" and name in self._dir.remote:
                room = next(iter(rooms), "")
                self._remote_typing_locked(name, room if typing == pb.TYPING_START else "")

    def resync_remote(self, users: dict[str, set[str]]) -> None:
        """Cluster thread: after a gap in the events, `users` (name -> rooms) are the others'.

        Announce who left, joined or left rooms meanwhile. Typing changes in
        the gap are unknown: every remote typer stops (a typer's client repeats START).
        """
        with self._lock:
            for name in [n for n, user in self._dir.remote.items() if user.typing]:
                self._remote_typing_locked(name, "")
            gone = sorted(self._dir.remote.keys() - users.keys())
        here = sorted(users.items())
        for start in range(0, max(len(gone), len(here)), RESYNC_CHUNK):  # paced (hub.make_room)
            self.make_room(2 * RESYNC_CHUNK)
            with self._lock:
                for name in gone[start : start + RESYNC_CHUNK]:
                    self._remote_leave_locked(name)
                for name, rooms in here[start : start + RESYNC_CHUNK]:
                    if name not in self._dir.clients:
                        self._remote_at_locked(name, rooms)

    def kick(self, name: str, text: str) -> None:
        """Cluster thread: our `name` is held on another server; that one wins."""
        with self._lock:
            client = self._dir.clients.get(name)
            if client is None:
                return
            self._put(client, system_event(text))
            client.ending = KICKED
            self._remove_locked(client)
            self._remote_at_locked(name, set(client.rooms))  # the other one is online
        client.wake()

    def end_all(self, text: str) -> None:
        """Cluster thread: we are cut off and will be reaped; every session reconnects elsewhere."""
        notice = system_event(text, pb.SHUTTING_DOWN)
        with self._lock:  # all go at once: no USER_LEFT to one another
            clients = list(self._dir.clients.values())
            for client in clients:
                if client.typing_timer is not None:
                    client.typing_timer.cancel()
                    client.typing_timer = None
                self._dir.remove(client)
                self._put(client, notice)
                client.ending = DRAIN
        for client in clients:
            client.wake()

    def _remote_at_locked(self, name: str, rooms: set[str]) -> None:
        """A remote user is in `rooms`: a leave from each room left, a join in each new one."""
        user = self._dir.remote.get(name)
        if user is None:
            user = self._dir.remote[name] = Remote()
        if user.typing and user.typing not in rooms:
            self._remote_typing_locked(name, "")
        for room in sorted(user.rooms - rooms):
            user.rooms.discard(room)
            self._broadcast_locked(user_event(pb.USER_LEFT, name, room), room)
        for room in sorted(rooms - user.rooms):
            user.rooms.add(room)
            self._broadcast_locked(user_event(pb.USER_JOINED, name, room), room)

    def _remote_leave_locked(self, name: str) -> None:
        user = self._dir.remote.get(name)
        if user is not None:
            self._remote_typing_locked(name, "")
            del self._dir.remote[name]
            for room in sorted(user.rooms):
                self._broadcast_locked(user_event(pb.USER_LEFT, name, room), room)

    def _remote_typing_locked(self, name: str, room: str) -> None:
        """`name` types in `room` now, or still does ("": types nowhere); tell the rooms that
        changed. Soft state, as ours: with no news for the silence time, it stops (a STOP
        lost in a fault)."""
        user = self._dir.remote[name]
        timer = self._remote_typers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if room and room not in user.rooms:
            room = ""  # typing where we do not know them to be: not shown
        if room:
            self._remote_typers[name] = self._timers.schedule(
                self._typing_silence_s, lambda: self._remote_typing_silent(name, user)
            )
        if user.typing == room:
            return
        if user.typing:
            stop = typing_event(name, pb.TYPING_STOP, user.typing)
            self._broadcast_locked(stop, user.typing)
        user.typing = room
        if room:
            self._broadcast_locked(typing_event(name, pb.TYPING_START, room), room)

    def holds(self, name: str) -> bool:
        """Cluster thread: is `name` online here?"""
        with self._lock:
            return name in self._dir.clients

    def _remote_typing_silent(self, name: str, user: Remote) -> None:
        """Timer thread: another server's typer sent no news for the silence time."""
        with self._lock:
            if self._dir.remote.get(name) is user and user.typing:
                self._remote_typing_locked(name, "")

    def remote_direct(self, sender: str, to: str, text: str, timestamp: int, action: bool):
        """Cluster thread: a direct message from another server, for `to` if they are ours."""
        with self._lock:
            recipient = self._dir.clients.get(to)
            if recipient is not None:
                event = direct_event(sender, to, text, timestamp, action)
                self._put_or_evict_locked(recipient, event)
