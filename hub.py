"""The hub: who is online, and fan-out of every event to their queues.

Each joined user is a `Client` holding a bounded `queue.Queue` of outgoing
`ServerEvent`s. The Chat handler in server.py drains that queue (it is the
user's response stream); the hub only ever *puts* into it. The hub is called
from many threads at once: every client's reader thread (messages, typing),
the pool threads (join, leave), the timer thread (typing timeouts) and, with
Redis, the store's follower and the cluster's follower (messages from the
stream and events of other servers: `deliver`, `remote_event`,
`resync_remote`, `kick`).

    reader thread --post()--> [hub lock: id, store, put into every queue]
                                 |          |          |
                              queue A    queue B    queue C  <- one per client
                                 |          |          |
                           generator A  generator B  generator C  (pool threads)

NOTE: one lock, `_lock`, guards the registry (our clients, and the users
of other servers as far as we know them) *and* the order of broadcasts.
A message gets its id and is put into every queue inside one critical
section, so all clients see all messages in the same order. Inside it we
only do non-blocking things: `put_nowait`, and the store's `append` (which
never touches the network). A client whose queue is full is evicted rather
than waited for, so one slow reader never holds up the others.

With Redis the store's `append` usually returns nothing to deliver: the
message is delivered when it comes back from the stream, through `deliver`,
in the stream's order.
"""

import logging
import queue
import threading

import chat_pb2 as pb
from events import message_event, now_s, system_event, typing_event, user_event
from member import DRAIN, EVICTED, KICKED, Client
from ratelimit import Buckets
from store import Message
from timers import Timers

log = logging.getLogger(__name__)

TYPING_SILENCE_S = 5.0  # a typer silent this long gets a TYPING_STOP on their behalf
EVICT_GRACE_S = 5.0  # an evicted client's call is cancelled if its stream is still stuck
# Typing changes forwarded per client: a burst, then a few a second. A client
# flipping START/STOP in a loop would otherwise make us fan out thousands a second.
TYPING_CHANGES_BURST = 4
TYPING_CHANGES_PER_S = 2.0


class NameTaken(Exception):
    """The username is already online."""


class ShuttingDown(Exception):
    """The server is stopping: no one joins any more."""


class Alone:
    """The single-server case: no one to share with, nothing to do.

    The same methods as `cluster.Cluster`, which shares names and live
    events with the other servers on one Redis.
    """

    def claim(self, name: str) -> str | None:
        return ""  # always granted; the hub checks names online here

    def release(self, name: str, claim: str) -> None:
        pass

    def publish_typing(self, name: str, kind) -> None:
        pass

    def start(self, hub) -> None:
        pass

    def close(self) -> None:
        pass


class Hub:
    """The registry of online clients and the fan-out to their queues."""

    def __init__(
        self,
        store,
        timers: Timers,
        cluster=None,
        typing_silence_s: float = TYPING_SILENCE_S,
        evict_grace_s: float = EVICT_GRACE_S,
    ):
        self.store = store
        self.cluster = cluster or Alone()  # the other servers, if any (cluster.py)
        self._timers = timers
        self._typing_silence_s = typing_silence_s
        self._evict_grace_s = evict_grace_s
        # `_lock` guards _clients, _remote, _closing and the order of every broadcast.
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}  # our joined users
        self._remote: dict[str, bool] = {}  # other servers' users -> typing now?
        self._closing = False  # shut_down() has begun: joins are refused
        # Typing changes, by name (a reconnect refills nothing); its own lock, taken inside ours.
        self._typing_changes = Buckets(TYPING_CHANGES_PER_S, TYPING_CHANGES_BURST)

    def count(self) -> int:
        with self._lock:
            return len(self._clients)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._clients)

    def online_names(self) -> list[str]:
        """Everyone online as far as this server knows: ours and the others'."""
        with self._lock:
            return sorted(self._clients.keys() | self._remote.keys())

    # -- joining and leaving ----------------------------------------------

    def join(self, client: Client) -> None:
        """Register `client` and announce it here (its claim told the other servers)."""
        with self._lock:
            if self._closing:
                raise ShuttingDown()
            if client.name in self._clients:
                raise NameTaken(client.name)
            self._clients[client.name] = client
            self._remote.pop(client.name, None)  # a stale view of another server
            self._broadcast_locked(user_event(pb.USER_JOINED, client.name))

    def leave(self, client: Client, ending: str) -> bool:
        """Remove `client` if still registered, tell the rest; wake its generator.

        Safe to call more than once and from any thread: only the first call
        for a registered client announces USER_LEFT.
        """
        with self._lock:
            if client.ending is None:
                client.ending = ending
            removed = self._clients.get(client.name) is client
            if removed:
                self._remove_locked(client)
        client.wake()
        return removed

    def _remove_locked(self, client: Client) -> None:
        del self._clients[client.name]
        self._stop_typing_locked(client)
        self._broadcast_locked(user_event(pb.USER_LEFT, client.name))

    # -- what clients say ---------------------------------------------------

    def tell(self, client: Client, event: pb.ServerEvent) -> None:
        """Send `event` to one client only (a notice; order with broadcasts is loose).

        A full queue evicts the client, whatever filled it: its own refusals too.
        """
        with self._lock:
            if not self._put(client, event) and self._clients.get(client.name) is client:
                self._evict_locked(client)

    def post(self, client: Client, text: str) -> bool:
        """Store an accepted message and send it to everyone, sender included.

        Returns False, storing nothing, if the sender is no longer online.
        """
        with self._lock:
            if self._clients.get(client.name) is not client:
                return False
            self._stop_typing_locked(client)
            # In memory: this message. With Redis: usually none, the stream
            # delivers it in order; during an outage, what the store holds.
            for message in self.store.append(client.name, text, now_s()):
                self._broadcast_locked(message_event(message))
        return True

    def deliver(self, messages: list[Message]) -> None:
        """Store thread: fan out messages that came back from the stream, in order."""
        with self._lock:
            for message in messages:
                self._broadcast_locked(message_event(message))

    # -- other servers' users (cluster.py; never called without Redis) ---------

    def remote_event(self, kind: str, name: str, typing=0) -> None:
        """Cluster thread: another server's user joined, left, or typed.

        Only changes are announced, so an event that arrives twice (or after
        a resync already told it) is shown once.
        """
        with self._lock:
            if name in self._clients:
                return  # about a name online here: ours is the one that counts
            if kind == "joined":
                self._remote_join_locked(name)
            elif kind == "left":
                self._remote_leave_locked(name)
            elif kind == "typing" and name in self._remote:
                self._remote_typing_locked(name, typing == pb.TYPING_START)

    def resync_remote(self, names: set[str]) -> None:
        """Cluster thread: after a gap in the events, `names` are the others' users.

        Announce who left and who joined meanwhile. Typing changes in the gap
        are unknown: every remote typer stops (a typer's client repeats START).
        """
        with self._lock:
            for name in [n for n, typing in self._remote.items() if typing]:
                self._remote_typing_locked(name, False)
            for name in sorted(self._remote.keys() - names):
                self._remote_leave_locked(name)
            for name in sorted(names - self._clients.keys() - self._remote.keys()):
                self._remote_join_locked(name)

    def kick(self, name: str, text: str) -> None:
        """Cluster thread: our `name` is held on another server; that one wins."""
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                return
            self._put(client, system_event(text))
            client.ending = KICKED
            self._remove_locked(client)
            self._remote_join_locked(name)  # the other one is online
        client.wake()

    def _remote_join_locked(self, name: str) -> None:
        if name not in self._remote:
            self._remote[name] = False
            self._broadcast_locked(user_event(pb.USER_JOINED, name))

    def _remote_leave_locked(self, name: str) -> None:
        if name in self._remote:
            self._remote_typing_locked(name, False)
            del self._remote[name]
            self._broadcast_locked(user_event(pb.USER_LEFT, name))

    def _remote_typing_locked(self, name: str, typing: bool) -> None:
        if self._remote[name] != typing:
            self._remote[name] = typing
            kind = pb.TYPING_START if typing else pb.TYPING_STOP
            self._broadcast_locked(typing_event(name, kind))

    # -- typing here ------------------------------------------------------------

    def typing(self, client: Client, kind) -> None:
        """Forward a change of typing state to everyone else; drop repeats.

        Changes past the client's typing bucket are dropped silently, the
        state left as the others last saw it (typing is ephemeral: a start
        that stays ends by the silence timer, or with the next message).
        """
        with self._lock:
            if client.name not in self._clients:
                return
            is_change = (kind == pb.TYPING_START) != (client.typing_timer is not None)
            if is_change and self._typing_changes.try_take(client.name):
                return
            if kind == pb.TYPING_START:
                was_typing = client.typing_timer is not None
                if was_typing:
                    client.typing_timer.cancel()  # still typing: restart the silence clock
                client.typing_timer = self._timers.schedule(
                    self._typing_silence_s, lambda: self._typing_timeout(client)
                )
                if not was_typing:
                    self._broadcast_locked(typing_event(client.name, pb.TYPING_START), client)
                    self.cluster.publish_typing(client.name, pb.TYPING_START)
            elif kind == pb.TYPING_STOP:
                self._stop_typing_locked(client)

    def _typing_timeout(self, client: Client) -> None:
        """Timer thread: the typer fell silent."""
        with self._lock:
            if client.name in self._clients:
                self._stop_typing_locked(client)

    def _stop_typing_locked(self, client: Client) -> None:
        if client.typing_timer is None:
            return
        client.typing_timer.cancel()
        client.typing_timer = None
        self._broadcast_locked(typing_event(client.name, pb.TYPING_STOP), client)
        self.cluster.publish_typing(client.name, pb.TYPING_STOP)

    # -- shutting down ------------------------------------------------------

    def shut_down(self, notice: pb.ServerEvent) -> None:
        """Send `notice` to everyone, then end every stream once it is drained.

        From now on joins are refused (ShuttingDown), so no stream that joins
        during the shutdown grace is left without the notice.
        """
        with self._lock:
            self._closing = True
            clients = list(self._clients.values())
            self._clients.clear()
            for client in clients:
                if not self._put(client, notice):
                    log.warning("%s missed the shutdown notice: queue full", client.name)
                client.ending = DRAIN
        for client in clients:
            client.wake()

    # -- fan-out --------------------------------------------------------------

    def _broadcast_locked(self, event: pb.ServerEvent, skip: Client | None = None) -> None:
        """Put one event object into every queue but `skip`'s; evict the full ones."""
        evicted = [c for c in self._clients.values() if c is not skip and not self._put(c, event)]
        for client in evicted:  # each removal broadcasts USER_LEFT, which may evict more
            if self._clients.get(client.name) is client:
                self._evict_locked(client)

    def _evict_locked(self, client: Client) -> None:
        log.warning("evicting %s: %d events behind", client.name, client.queue.qsize())
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
