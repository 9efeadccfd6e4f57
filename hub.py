"""The hub: who is online and in which room, and fan-out of every event to queues.

Each joined user is a `Client` (member.py) holding a bounded `queue.Queue`
of outgoing `ServerEvent`s. The Chat handler in session.py drains that
queue (it is the user's response stream); the hub only ever *puts* into it.
The hub is called from many threads at once: every client's reader thread
(messages, typing, joining and leaving rooms), the pool threads (join, leave), the timer thread
(typing timeouts) and, with Redis, the store's follower and the cluster's
follower (messages from the stream, events of other servers).

    reader thread --post()--> [hub lock: store, put into every queue of the room]
                                 |          |          |
                              queue A    queue B    queue C  <- one per client
                                 |          |          |
                           generator A  generator B  generator C  (pool threads)

A room's events (messages, typing, joins and leaves) go to that room's
members only, once each, however many rooms a member is in; a direct
message to one user wherever they are (in any room, or none).

NOTE: one lock, `_lock`, guards the directory (rooms.py: our clients, their
rooms, and the users of other servers as far as we know them) *and* the
order of broadcasts. A message is stored and put into every queue of its
room inside one critical section, so all members see one order. Inside it
we only do non-blocking things: `put_nowait`, and the store's `append`
(which never touches the network). A client whose queue is full is evicted
rather than waited for, so one slow reader never holds up the others.

With Redis the store's `append` usually returns nothing to deliver: the
message is delivered when it comes back from the stream, through `deliver`,
in the stream's order.
"""

import logging
import queue
import threading
import time

import chat_pb2 as pb
import metrics
from cluster.remote import Alone, RemoteUsers
from direct import DirectMessages
from events import message_event, now_s, system_event, user_event
from member import DRAIN, EVICTED, Client, Echo, Replay, Timed
from ratelimit import Buckets
from rooms import Directory
from store import Duplicate, Message, Recent, id_key
from timers import Timers
from typers import TYPING_CHANGES_BURST, TYPING_CHANGES_PER_S, Typers

log = logging.getLogger(__name__)

TYPING_SILENCE_S = 5.0  # a typer silent this long gets a TYPING_STOP on their behalf
EVICT_GRACE_S = 5.0  # an evicted client's call is cancelled if its stream is still stuck
# A burst from the stream (a dead server's users leaving, another tool's batch) is
# paced: before each batch of at least PACE_FROM events, the follower waits (up to
# PACE_WAIT_S) until every queue has room for it, so a client that keeps reading
# is never evicted for a burst it did not cause; one that does not read still is.
PACE_FROM = 50
PACE_WAIT_S = 5.0
PACE_POLL_S = 0.02  # NOTE: queues signal no "has room": the wait looks this often


class NameTaken(Exception):
    """The username is already online."""


class ShuttingDown(Exception):
    """The server is stopping: no one joins any more."""


class Hub(RemoteUsers, Typers, DirectMessages):
    """The registry of online clients and the fan-out to their queues.

    Its methods for the other servers' users are in cluster/remote.py, its
    typing indicators in typers.py, direct messages in direct.py.
    """

    def __init__(
        self,
        store,
        timers: Timers,
        cluster=None,
        typing_silence_s: float = TYPING_SILENCE_S,
        evict_grace_s: float = EVICT_GRACE_S,
    ):
        self.store = store
        self.cluster = cluster or Alone()  # the other servers, if any (cluster/presence.py)
        self._timers = timers
        self._typing_silence_s = typing_silence_s
        self._evict_grace_s = evict_grace_s
        # `_lock` guards _dir, _closing and the order of every broadcast.
        self._lock = threading.Lock()
        self._dir = Directory()  # who is online, here and elsewhere, and in which rooms
        # room -> id of the last message of it we delivered: where a joiner's history stops
        self._last_id: dict[str, str] = {}
        self._closing = False  # shut_down() has begun: joins are refused
        # Typing changes, by name (a reconnect refills nothing); its own lock, taken inside ours.
        self._typing_changes = Buckets(TYPING_CHANGES_PER_S, TYPING_CHANGES_BURST)
        # (sender, key) -> the echo of a direct message taken (messages: the store's). Under _lock.
        self._directs = Recent()
        self._remote_typers: dict = {}  # other servers' typers -> their silence Timer; under _lock

    def count(self) -> int:
        with self._lock:
            return len(self._dir.clients)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._dir.clients)

    def rooms(self) -> dict[str, int]:
        """Every room with a member here or elsewhere (and the lobby): member counts."""
        with self._lock:
            return self._dir.rooms()

    def users(self, room: str | None = None) -> list[tuple[str, list[str]]]:
        """(name, its rooms sorted) of everyone online, or of everyone in `room`."""
        with self._lock:
            return self._dir.users(room)

    def queue_depths(self) -> list[int]:
        """Events waiting in each of our clients' queues (for metrics)."""
        with self._lock:
            return [client.queue.qsize() for client in self._dir.clients.values()]

    # -- joining and leaving ----------------------------------------------

    def join(self, client: Client, last_seen_id: str = "") -> None:
        """Register `client` in its first room: history, then USER_JOINED, then who is there.

        The other servers heard of the join from the name's claim (cluster/presence.py).
        """
        with self._lock:
            if self._closing:
                raise ShuttingDown()
            if self._online_as_locked(client.name, here_only=True) is not None:
                raise NameTaken(client.name)  # "Alice" while alice is here, too
            self._dir.remote.pop(client.name, None)  # a stale view of another server
            self._dir.add(client)
            for room in client.rooms:
                self._enter_room_locked(client, room, last_seen_id)

    def enter(self, client: Client, room: str, last_seen_id: str = "") -> bool:
        """Add `room` to `client`'s rooms, announced as a join; the others stay as they are.

        False if `client` is already there (or gone): nothing happens.
        """
        with self._lock:
            if room in client.rooms or self._dir.clients.get(client.name) is not client:
                return False
            self._dir.enter(client, room)
            self._enter_room_locked(client, room, last_seen_id)
            rooms = sorted(client.rooms)
        self.cluster.set_rooms(client.name, client.claim, rooms)
        return True

    def part(self, client: Client, room: str) -> bool:
        """Take `room` from `client`'s rooms: its members, `client` included, get USER_LEFT.

        The stream stays, in no room at all if that was the last. False if
        `client` is not in `room` (or gone): nothing happens.
        """
        with self._lock:
            if room not in client.rooms or self._dir.clients.get(client.name) is not client:
                return False
            if client.typing_room == room:
                self._stop_typing_locked(client)
            self._broadcast_locked(user_event(pb.USER_LEFT, client.name, room), room)
            self._dir.part(client, room)
            rooms = sorted(client.rooms)
        self.cluster.set_rooms(client.name, client.claim, rooms)
        return True

    def _enter_room_locked(self, client: Client, room: str, last_seen_id: str = "") -> None:
        # The generator sends the history up to the last message delivered so far.
        upto = self._last_id.get(room) or self.store.followed_from(room)
        self._put(client, Replay(room, last_seen_id, upto))
        self._broadcast_locked(user_event(pb.USER_JOINED, client.name, room), room)
        present = self._dir.names_in(room)
        notice = f"in #{room} ({len(present)}): {', '.join(present)}"
        self._put(client, system_event(notice))

    def leave(self, client: Client, ending: str) -> bool:
        """Remove `client` if still registered, tell the rest; wake its generator.

        Safe to call more than once and from any thread: only the first call
        for a registered client announces USER_LEFT.
        """
        with self._lock:
            if client.ending is None:
                client.ending = ending
            removed = self._dir.clients.get(client.name) is client
            if removed:
                self._remove_locked(client)
        client.wake()
        return removed

    def _remove_locked(self, client: Client) -> None:
        self._stop_typing_locked(client)
        self._dir.remove(client)
        for room in sorted(client.rooms):  # each room it was in hears the leave
            self._broadcast_locked(user_event(pb.USER_LEFT, client.name, room), room)

    # -- what clients say ---------------------------------------------------

    def tell(self, client: Client, event: pb.ServerEvent) -> None:
        """Send `event` to one client only (a notice; order with broadcasts is loose).

        A full queue evicts the client, whatever filled it: its own refusals too.
        """
        with self._lock:
            self._put_or_evict_locked(client, event)

    def post(
        self, client: Client, text: str, room: str, action: bool = False, key: str = ""
    ) -> bool:
        """Store an accepted message and send it to `room`, sender included.

        Returns False, storing nothing, if the sender is no longer online or
        not in `room`.
        A line whose `key` was taken already is echoed to its sender alone,
        with the id it had then.
        """
        with self._lock:
            if room not in client.rooms or self._dir.clients.get(client.name) is not client:
                return False
            self._stop_typing_locked(client)
            # In memory: this message. With Redis: usually none, the stream
            # delivers it in order; during an outage, what the store holds.
            accepted = time.time()
            try:
                ready = self.store.append(client.name, text, now_s(), room, action, key)
            except Duplicate as duplicate:
                self._put_or_evict_locked(client, Echo(message_event(duplicate.first)))
                return True
            for message in ready:
                self._deliver_locked(message, accepted)
        metrics.ACCEPTED.inc()
        return True

    def echo(self, message: Message) -> None:
        """Store thread: `message` was sent again; its sender alone gets it (its first id)."""
        with self._lock:
            client = self._dir.clients.get(message.username)
            if client is not None:
                self._put_or_evict_locked(client, Echo(message_event(message)))

    def deliver(self, messages: list[Message]) -> None:
        """Store thread: fan out messages that came back from the stream, in order."""
        self.make_room(len(messages))
        with self._lock:
            for message in messages:
                # Accepted on some server: the time its id says Redis stored it.
                self._deliver_locked(message, id_key(message.id)[0] / 1000)

    def _deliver_locked(self, message: Message, accepted: float) -> None:
        self._last_id[message.room] = message.id  # a join from now on reads history up to it
        self._broadcast_locked(Timed(message_event(message), accepted), message.room)

    # -- shutting down ------------------------------------------------------

    def shut_down(self, notice: pb.ServerEvent) -> None:
        """Send `notice` to everyone, then end every stream once it is drained.

        From now on joins are refused (ShuttingDown), so no stream that joins
        during the shutdown grace is left without the notice.
        """
        with self._lock:
            self._closing = True
            clients = list(self._dir.clients.values())
            self._dir = Directory()
            for client in clients:
                if not self._put(client, notice):
                    log.warning("%s missed the shutdown notice: queue full", client.name)
                client.ending = DRAIN
        for client in clients:
            client.wake()

    # -- fan-out --------------------------------------------------------------

    def make_room(self, events: int) -> None:
        """Follower threads: wait (bounded) until every queue can take a burst of `events`."""
        if events < PACE_FROM:
            return
        deadline = time.monotonic() + PACE_WAIT_S
        while time.monotonic() < deadline:
            with self._lock:
                crowded = any(
                    c.queue.maxsize - c.queue.qsize() < min(events, c.queue.maxsize // 2)
                    for c in self._dir.clients.values()
                )
            if not crowded:
                return
            time.sleep(PACE_POLL_S)

    def _broadcast_locked(self, event, room: str, skip: Client | None = None) -> None:
        """Put one event object into every queue in `room` but `skip`'s; evict the full ones."""
        members = self._dir.members(room)
        evicted = [c for c in members if c is not skip and not self._put(c, event)]
        metrics.DELIVERIES.inc(len(members) - (skip is not None) - len(evicted))
        for client in evicted:  # each removal broadcasts USER_LEFT, which may evict more
            if self._dir.clients.get(client.name) is client:
                self._evict_locked(client)

    def _put_or_evict_locked(self, client: Client, event) -> None:
        if not self._put(client, event) and self._dir.clients.get(client.name) is client:
            self._evict_locked(client)

    def _evict_locked(self, client: Client) -> None:
        log.warning("evicting %s: %d events behind", client.name, client.queue.qsize())
        metrics.EVICTIONS.inc()
        client.ending = EVICTED
        self._remove_locked(client)
        self._timers.schedule(self._evict_grace_s, client.cancel)

    @staticmethod
    def _put(client: Client, event: pb.ServerEvent) -> bool:
        try:
            client.queue.put_nowait(event)
            return True
        except queue.Full:
            return False
