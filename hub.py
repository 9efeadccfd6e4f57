"""The hub: who is online, and fan-out of every event to their queues.

Each joined user is a `Client` holding a bounded `queue.Queue` of outgoing
`ServerEvent`s. The Chat handler in server.py drains that queue (it is the
user's response stream); the hub only ever *puts* into it. The hub is called
from many threads at once: every client's reader thread (messages, typing),
the pool threads (join, leave), the timer thread (typing timeouts) and, with
Redis, the store's follower and the cluster's listener (events from the
stream and from other servers: `deliver`, `remote_event`).

    reader thread --post()--> [hub lock: id, store, put into every queue]
                                 |          |          |
                              queue A    queue B    queue C  <- one per client
                                 |          |          |
                           generator A  generator B  generator C  (pool threads)

NOTE: one lock, `_lock`, guards the registry *and* the order of broadcasts.
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
import time

import chat_pb2 as pb
from store import Message
from timers import Timers

log = logging.getLogger(__name__)

QUEUE_MAX_EVENTS = 1024  # outgoing backlog per client before it is evicted (SPEC §3.6)
TYPING_SILENCE_S = 5.0  # a typer silent this long gets a TYPING_STOP on their behalf
EVICT_GRACE_S = 5.0  # an evicted client's call is cancelled if its stream is still stuck
WAKE = object()  # sentinel put into a queue to wake its generator when the client ends

# Why a client's stream ends (`Client.ending`).
DRAIN = "drain"  # deliver what is queued, then end with OK (half-close, shutdown)
EVICTED = "evicted"  # fell QUEUE_MAX_EVENTS behind: end now, RESOURCE_EXHAUSTED
GONE = "gone"  # the call is already over (cancelled, network lost)


class NameTaken(Exception):
    """The username is already online."""


class Client:
    """One joined user. The hub's lock guards `typing_timer` and `ending`.

    The generator reads `ending` without the lock: it is set once, from None
    to its final value, and a plain attribute read is atomic.
    """

    def __init__(self, name: str, cancel=lambda: None, queue_max: int = QUEUE_MAX_EVENTS):
        self.name = name
        self.cancel = cancel  # ends the gRPC call; used if an evicted client will not read
        self.queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self.typing_timer = None  # a Timer while this user is typing, else None
        self.ending = None  # None while online, else DRAIN, EVICTED or GONE

    def wake(self) -> None:
        """Wake the generator if it is blocked on an empty queue.

        If the queue is full the put fails, but then the generator is not
        blocked: it will see `ending` after its next event.
        """
        try:
            self.queue.put_nowait(WAKE)
        except queue.Full:
            pass


def now_s() -> int:
    return int(time.time())


def user_event(kind, name: str) -> pb.ServerEvent:
    return pb.ServerEvent(user_event=pb.UserEvent(type=kind, username=name, timestamp=now_s()))


def system_event(text: str, code=pb.SYSTEM_INFO) -> pb.ServerEvent:
    return pb.ServerEvent(system_event=pb.SystemEvent(message=text, timestamp=now_s(), code=code))


def typing_event(name: str, kind) -> pb.ServerEvent:
    return pb.ServerEvent(typing_event=pb.TypingEvent(username=name, timestamp=now_s(), type=kind))


def message_event(m: Message, replay: bool = False) -> pb.ServerEvent:
    return pb.ServerEvent(
        chat_message=pb.ChatMessageEvent(
            message=m.text, username=m.username, timestamp=m.timestamp, id=m.id, replay=replay
        )
    )


class Alone:
    """The single-server case: no one to share with, nothing to do."""

    def claim(self, name: str) -> str | None:
        return ""  # always granted; the hub checks names online here

    def release(self, name: str, claim: str) -> None:
        pass

    def online(self, local_names: list[str]) -> list[str]:
        return local_names

    def publish(self, kind: str, name: str, typing: int = 0) -> None:
        pass

    def start(self, hub) -> None:
        pass

    def close(self, local_names: list[str]) -> None:
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
        self._lock = threading.Lock()  # guards _clients and the order of every broadcast
        self._clients: dict[str, Client] = {}

    def count(self) -> int:
        with self._lock:
            return len(self._clients)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._clients)

    # -- joining and leaving ----------------------------------------------

    def join(self, client: Client) -> None:
        """Register `client` and announce it to all, here and on other servers."""
        with self._lock:
            if client.name in self._clients:
                raise NameTaken(client.name)
            self._clients[client.name] = client
            self._broadcast_locked(user_event(pb.USER_JOINED, client.name))
            self.cluster.publish("joined", client.name)

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
        self.cluster.publish("left", client.name)

    # -- what clients say ---------------------------------------------------

    def tell(self, client: Client, event: pb.ServerEvent) -> None:
        """Send `event` to one client only (a notice; order with broadcasts is loose)."""
        self._put_locked(client, event)  # Queue is thread-safe; no hub state is read

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

    def remote_event(self, kind: str, name: str, typing=0) -> None:
        """Cluster thread: another server's user joined, left, or typed."""
        if kind == "typing":
            event = typing_event(name, typing)
        else:
            event = user_event(pb.USER_JOINED if kind == "joined" else pb.USER_LEFT, name)
        with self._lock:
            if name not in self._clients:  # never about one of ours
                self._broadcast_locked(event)

    def typing(self, client: Client, kind) -> None:
        """Forward a change of typing state to everyone else; drop repeats."""
        with self._lock:
            if client.name not in self._clients:
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
                    self.cluster.publish("typing", client.name, pb.TYPING_START)
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
        self.cluster.publish("typing", client.name, pb.TYPING_STOP)

    # -- shutting down ------------------------------------------------------

    def shut_down(self, notice: pb.ServerEvent) -> None:
        """Send `notice` to everyone, then end every stream once it is drained."""
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
            for client in clients:
                self._put_locked(client, notice)
                client.ending = DRAIN
        for client in clients:
            client.wake()

    # -- fan-out --------------------------------------------------------------

    def _broadcast_locked(self, event: pb.ServerEvent, skip: Client | None = None) -> None:
        """Put one event object into every queue but `skip`'s; evict the full ones."""
        evicted = [c for c in self._clients.values() if c is not skip and not self._put(c, event)]
        for client in evicted:  # each removal broadcasts USER_LEFT, which may evict more
            if self._clients.get(client.name) is client:
                log.warning("evicting %s: %d events behind", client.name, client.queue.qsize())
                client.ending = EVICTED
                self._remove_locked(client)
                self._timers.schedule(self._evict_grace_s, client.cancel)

    def _put_locked(self, client: Client, event: pb.ServerEvent) -> None:
        if not self._put(client, event):
            log.warning("dropped an event for %s: queue full", client.name)

    @staticmethod
    def _put(client: Client, event: pb.ServerEvent) -> bool:
        try:
            client.queue.put_nowait(event)
            return True
        except queue.Full:
            return False
