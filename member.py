"""One joined user as the hub sees it: a bounded queue, and why its stream ends.

The hub (hub.py) puts events into `Client.queue` from any thread; the
user's Chat handler (session.py) is the only one that takes them out and
yields them to the network. `Client.ending` tells the handler how to end.
"""

import queue

QUEUE_MAX_EVENTS = 1024  # outgoing backlog per client before it is evicted
WAKE = object()  # sentinel put into a queue to wake its generator when the client ends

# Why a client's stream ends (`Client.ending`).
DRAIN = "drain"  # deliver what is queued, then end with OK (half-close, shutdown)
EVICTED = "evicted"  # fell QUEUE_MAX_EVENTS behind: end now, RESOURCE_EXHAUSTED
KICKED = "kicked"  # the name is held on another server (after a partition): ALREADY_EXISTS
GONE = "gone"  # the call is already over (cancelled, network lost)


class Replay:
    """A mark in a client's queue: "send the history of `room` here".

    The hub puts it in when a user joins a room (the first or another),
    before announcing them in the room; the Chat handler reads the history
    when it meets the mark, so the user sees the room's past, then its
    present, in that order. `upto` is the id of the room's last message the
    hub had delivered when it put the mark in (or, if none yet, the store's
    `followed_from`): every later one is queued after the mark, live, so the
    history read stops there (None: unbounded).
    """

    __slots__ = ("room", "after_id", "upto")

    def __init__(self, room: str, after_id: str = "", upto: str | None = None):
        self.room = room
        self.after_id = after_id  # "": the last N messages
        self.upto = upto


class Echo:
    """A line sent again, answered to its sender alone with what it first became.

    Its id may be one the sender has seen as history already: the Chat
    handler sends it whatever the replay skipped (it is an answer, not news).
    """

    __slots__ = ("event",)

    def __init__(self, event):
        self.event = event  # a ServerEvent: the chat message, with its first id


class Timed:
    """A chat message in a queue, with when it was accepted (`time.time()`).

    The hub puts one into every receiving queue; the Chat handler takes the
    event out and counts how long it took to reach this stream (metrics.py's
    delivery-time histogram) as it hands it over.
    """

    __slots__ = ("event", "accepted")

    def __init__(self, event, accepted: float):
        self.event = event
        self.accepted = accepted


class Client:
    """One joined user. The hub's lock guards `rooms`, the typing fields and `ending`.

    The generator reads `ending` without the lock: it is set once, from None
    to its final value, and a plain attribute read is atomic.
    """

    def __init__(
        self, name: str, room: str = "lobby", cancel=lambda: None, queue_max=QUEUE_MAX_EVENTS
    ):
        self.name = name
        self.rooms: set[str] = {room}  # every room this user is in (the hub's lock guards it)
        self.claim = ""  # the token of this user's name claim (cluster/presence.py), set at join
        self.network = ""  # the client's network (access/caps.py), for limits by network
        self.cancel = cancel  # ends the gRPC call; used if an evicted client will not read
        self.queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self.typing_timer = None  # a Timer while this user is typing, else None
        self.typing_told_at = 0.0  # monotonic time other servers were last told of the typing
        self.typing_room = ""  # the room they are typing in while typing_timer is set
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
