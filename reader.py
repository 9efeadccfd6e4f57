"""The reader thread of one chat stream: what a joined client says, checked.

session.py starts one `Reader.run` thread per joined client. It consumes
the client's request stream and, for each event, cleans and checks it, asks
the rate limiter, and hands it to the hub (hub.py), which fans it out. It
never writes to the network itself: replies go through the hub into the
client's queue.

Bad input after the join never ends the call: the sender alone gets a
`SystemEvent` saying what was wrong, and nothing is stored or sent. The log
gets a line per refusal, up to a few a second per client, then one line
saying how many more there were.
"""

import logging
import math
import time

import grpc

import chat_pb2 as pb
import member
import metrics
from direct import NotOnline
from events import system_event
from member import Client
from ratelimit import Buckets
from sanitize import LOBBY, ROOM_RULE, clean_text, name_skeleton, room_name
from store import NotSent

log = logging.getLogger("session")

REFUSALS_LOGGED_PER_S = 3  # refusal lines per client per second; beyond, one summary
# Typing events a stream may hand to the hub per second; the rest are dropped by its
# reader at the cost of a clock read, before the hub's lock (which coalesces the few
# that pass to a couple of changes a second). A person types far fewer.
TYPING_EVENTS_PER_S = 10
# Rooms one client network may open (join while nobody is in them): a burst, then
# a few a minute, so one host cannot litter Redis with rooms (cluster/idle.py
# removes them only after --room-idle-days).
NEW_ROOMS_BURST = 10
NEW_ROOMS_PER_MINUTE = 2
KEY_MAX_CHARS = 64  # a line's key (a client sends 32 hex digits); longer ones are refused
MAX_ROOMS = 20  # rooms one stream may be in at once (--max-rooms), as on IRC servers


class Reader:
    """Reads one client's events at a time; shared by all streams, holds no per-client state."""

    def __init__(
        self, hub, max_chars: int, buckets=None, new_rooms=None, max_rooms: int = MAX_ROOMS
    ):
        self.hub = hub
        self._max_chars = max_chars  # longest message, after cleaning
        self._buckets = buckets  # ratelimit.Buckets by user name; None: no limit
        self._new_rooms = new_rooms or NewRooms(hub, None)  # rooms opened, by network
        self._max_rooms = max_rooms  # rooms one stream may be in at once

    def run(self, client: Client, request_iterator) -> None:
        """The reader thread's body: owns `request_iterator` and `refusals`."""
        refusals = RefusalLog(client.name)
        typing = TypingWindow()
        ending = member.DRAIN  # the client half-closed: deliver what is queued
        try:
            for event in request_iterator:
                kind = event.WhichOneof("event")
                if kind == "typing_event" and typing.flooding():
                    continue  # dropped, before any lock
                handler = getattr(self, f"_on_{kind}", self._on_None)
                refusal = handler(client, event)
                if refusal is not None:
                    refusals.note(refusal)
        except grpc.RpcError:
            ending = member.GONE  # cancelled or connection lost
        except Exception:  # a bug must not leave the client registered
            log.exception("reader for %s failed", client.name)
            ending = member.GONE
        finally:
            refusals.flush()
            typing.flush()
            self.hub.leave(client, ending)

    # Each handler returns None, or the reason it refused the event.

    def _on_chat_message(self, client: Client, event) -> str | None:
        """A message to one of the client's rooms, or to one user (`to`); `action` for /me."""
        message = event.chat_message
        room = None if message.to else room_name(message.room)
        if not message.to and (refusal := self._check_in(client, room)) is not None:
            return refusal
        text = clean_text(message.message)
        if not text:
            return self._reject(client, pb.INVALID_EVENT, "empty message: nothing was sent")
        if len(text) > self._max_chars:
            limit = self._max_chars
            return self._reject(
                client, pb.INVALID_EVENT, f"message too long: {len(text)} characters, max {limit}"
            )
        if len(message.key) > KEY_MAX_CHARS:
            return self._reject(client, pb.INVALID_EVENT, f"key too long: max {KEY_MAX_CHARS}")
        if (refusal := self._take_token(client)) is not None:
            return refusal
        try:
            if message.to:
                self.hub.direct(client, message.to, text, message.action, message.key)
            else:
                self.hub.post(client, text, room, message.action, message.key)
        except NotSent:  # cut off from the other servers: no id would hold
            if self._buckets is not None:
                self._buckets.give_back(name_skeleton(client.name))  # free to send again
            retry = "not sent: the chat is reconnecting, send it again"
            return self._reject(client, pb.NOT_SENT, retry)
        except NotOnline:
            return self._reject(client, pb.NOT_ONLINE, f"{message.to} is not online")
        return None

    def _on_typing_event(self, client: Client, event) -> str | None:
        typing = event.typing_event
        if typing.type not in (pb.TYPING_START, pb.TYPING_STOP):
            return self._reject(client, pb.INVALID_EVENT, "typing event without a type")
        room = room_name(typing.room)
        if (refusal := self._check_in(client, room)) is not None:
            return refusal
        self.hub.typing(client, typing.type, room)
        return None

    def _on_user_event(self, client: Client, event) -> str | None:
        """After the join, a USER_JOINED adds a room, a USER_LEFT leaves one.

        `client.rooms` is read without the lock: only this thread changes it
        (and the hub, when the client is removed, after which nothing counts).
        """
        user = event.user_event
        kinds, names = (pb.USER_JOINED, pb.USER_LEFT), ("", client.name)
        if user.type not in kinds or user.username not in names:
            return self._reject(client, pb.INVALID_EVENT, "user events join or leave a room")
        room = room_name(user.room)
        if room is None:
            return self._reject(client, pb.INVALID_EVENT, f"invalid room: use {ROOM_RULE}")
        joining = user.type == pb.USER_JOINED
        if joining == (room in client.rooms):  # nothing would change
            notice = f"already in #{room}" if joining else f"not in #{room}"
            self.hub.tell(client, system_event(notice))
            return None
        if joining and len(client.rooms) >= self._max_rooms:
            limit = self._max_rooms
            return self._reject(client, pb.INVALID_EVENT, f"too many rooms: at most {limit}")
        if (refusal := self._take_token(client)) is not None:
            return refusal
        if joining and (wait_s := self._new_rooms.wait_s(room, client.network)):
            retry = f"too many new rooms from your network: retry in {round_up(wait_s):.1f} s"
            return self._reject(client, pb.RATE_LIMITED, retry)
        if joining:
            self.hub.enter(client, room, user.last_seen_id)
        else:
            self.hub.part(client, room)
        return None

    def _check_in(self, client: Client, room: str | None) -> str | None:
        """Is `room` (a cleaned name, None if invalid) one of the client's? The refusal if not."""
        if room is None:
            return self._reject(client, pb.INVALID_EVENT, f"invalid room: use {ROOM_RULE}")
        if room not in client.rooms:
            return self._reject(client, pb.INVALID_EVENT, f"not in #{room}: join it first")
        return None

    def _on_None(self, client: Client, event) -> str | None:  # the oneof was empty
        return self._reject(client, pb.INVALID_EVENT, "empty event")

    def _take_token(self, client: Client) -> str | None:
        """Take a token from the user's bucket; the refusal if there was none."""
        buckets = self._buckets
        wait_s = buckets.try_take(name_skeleton(client.name)) if buckets is not None else 0.0
        if wait_s:
            return self._reject(
                client, pb.RATE_LIMITED, f"rate limited: retry in {round_up(wait_s):.1f} s"
            )
        return None

    def _reject(self, client: Client, code, reason: str) -> str:
        metrics.refused(metrics.REASON_OF_CODE.get(code, "invalid"))
        self.hub.tell(client, system_event(reason, code))
        return reason


def round_up(wait_s: float) -> float:
    """Round a wait up to 0.1 s, so a retry at the time we name is not early."""
    return math.ceil(wait_s * 10 - 1e-9) / 10


class RefusalLog:
    """Log lines for one client's refused events, a few per second at most.

    Owned by the client's reader thread (no lock). Past
    REFUSALS_LOGGED_PER_S in one second, refusals are counted, and the count
    is logged once, when the next second's first refusal comes or the
    stream ends.
    """

    def __init__(self, name: str, clock=time.monotonic):
        self._name = name
        self._clock = clock
        self._window_start = -1.0
        self._logged = 0  # lines logged in the current one-second window
        self._suppressed = 0  # refusals not logged in the current window

    def note(self, reason: str) -> None:
        now = self._clock()
        if now - self._window_start >= 1.0:
            self.flush()
            self._window_start, self._logged = now, 0
        if self._logged < REFUSALS_LOGGED_PER_S:
            self._logged += 1
            log.info("refused an event from %s: %s", self._name, reason)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        if self._suppressed:
            log.info("refused %d more events from %s", self._suppressed, self._name)
            self._suppressed = 0


class TypingWindow:
    """Typing events of one stream: TYPING_EVENTS_PER_S pass each second, the rest drop.

    Owned by the stream's reader thread (no lock). Drops are counted in the
    refusals metric once a window, not once each.
    """

    def __init__(self, per_s: int = TYPING_EVENTS_PER_S, clock=time.monotonic):
        self._per_s = per_s
        self._clock = clock
        self._window_start = -1.0
        self._passed = 0  # events passed in the current one-second window
        self._dropped = 0  # events dropped, not yet counted in the metric

    def flooding(self) -> bool:
        """True if this typing event is one too many for this second (drop it)."""
        now = self._clock()
        if now - self._window_start >= 1.0:
            self.flush()
            self._window_start, self._passed = now, 0
        if self._passed < self._per_s:
            self._passed += 1
            return False
        self._dropped += 1
        return True

    def flush(self) -> None:
        if self._dropped:
            metrics.REFUSALS.labels("typing").inc(self._dropped)
            self._dropped = 0


class NewRooms:
    """Rooms opened by each client network, limited by a bucket per network (None: no limit).

    A room is opened by joining it while nobody, here or elsewhere, is in
    it; the lobby always exists. Shared by every stream (the buckets lock).
    """

    def __init__(self, hub, buckets):
        self._hub = hub
        self._buckets = buckets  # ratelimit.Buckets by network, or None

    @classmethod
    def limited(cls, hub) -> "NewRooms":
        return cls(hub, Buckets(NEW_ROOMS_PER_MINUTE / 60, NEW_ROOMS_BURST))

    def wait_s(self, room: str, network: str) -> float:
        """0.0 if `network` may go to `room` now, else the seconds until it may open one."""
        if self._buckets is None or room == LOBBY or self._hub.rooms().get(room):
            return 0.0
        return self._buckets.try_take(network)
