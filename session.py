"""The ChatService servicer: one client's stream, from join to leave.

server.py builds the gRPC server around this servicer (and explains the
threads a stream uses); hub.py holds what all streams share. Here is the
life of one `Chat` call:

1. take a client slot (`--max-clients`), else RESOURCE_EXHAUSTED at once;
2. read the first event: it must be a valid USER_JOINED, else
   INVALID_ARGUMENT; a name other than the signed-in one (access/auth.py) is
   PERMISSION_DENIED; an address joining too often is RESOURCE_EXHAUSTED;
3. claim the name (ALREADY_EXISTS if it is online), register with the
   hub, then replay history page by page (the `replay` flag set);
4. start the reader thread (reader.py), which validates, rate-limits and
   forwards what the client says;
5. drain the client's queue into the response stream until the client ends.

"""

import logging
import threading
import time
from dataclasses import dataclass

import grpc

import chat_pb2 as pb
import chat_pb2_grpc
import hub as hubs
import member
import metrics
import reader as readers
from access import caps
from access.auth import Anyone
from access.undecodable import Summarised
from cluster.remote import ClaimUnconfirmed
from events import message_event, system_event
from hub import Hub, NameTaken, ShuttingDown
from member import Client, Echo, Replay
from ratelimit import Buckets
from reader import NewRooms, Reader, round_up
from sanitize import NAME_RULE, ROOM_RULE, is_valid_name, room_name
from store import HistoryUnavailable, id_key

log = logging.getLogger("session")

JOIN_TIMEOUT_S = 10.0  # a stream that has not joined by then is cancelled
RESUME_LATER = "cannot resume now: the chat is reconnecting"  # UNAVAILABLE: clients retry
JOIN_LATER = "cannot join now: the chat is reconnecting"  # UNAVAILABLE: clients retry


@dataclass(frozen=True)
class Settings:
    """What the flags of server.py decide, with their defaults."""

    history: int = 50  # messages replayed on join
    max_message_chars: int = 2000
    rate: float | None = 1.0  # tokens per second; None switches rate limiting off
    burst: int = 5
    join_rate: float = 2.0  # joins per second per client address (off with `rate` None)
    join_burst: int = 20
    max_clients: int = 512
    max_streams_per_address: int = caps.MAX_STREAMS_PER_ADDRESS  # open Chats, joined or not
    typing_silence_s: float = hubs.TYPING_SILENCE_S
    join_timeout_s: float = JOIN_TIMEOUT_S
    queue_max_events: int = member.QUEUE_MAX_EVENTS  # a client this far behind is evicted
    evict_grace_s: float = hubs.EVICT_GRACE_S  # then cut off if its stream stays stuck
    max_rooms: int = readers.MAX_ROOMS  # rooms one stream may be in at once


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Implements the rpcs of chat.proto: `Chat`, and the unary queries."""

    def __init__(self, hub: Hub, timers, settings: Settings, auth=None):
        self.hub = hub
        self._auth = auth or Anyone()  # who may join as whom (access/auth.py)
        self._timers = timers
        self._settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_clients)  # one per open Chat
        self._started = time.monotonic()
        # Streams refused before their join: a few lines a second, then a count.
        self._refusals = Summarised(timers, "refused %d more streams before their join")
        # Buckets outlive streams: reconnecting refills nothing (None: no limit).
        message_buckets = self._join_buckets = None
        self._new_rooms = NewRooms(hub, None)
        if settings.rate is not None:
            message_buckets = Buckets(settings.rate, settings.burst)  # by name
            self._join_buckets = Buckets(settings.join_rate, settings.join_burst)  # by network
            self._new_rooms = NewRooms.limited(hub)  # rooms opened, by network
        self._reader = Reader(
            hub, settings.max_message_chars, message_buckets, self._new_rooms, settings.max_rooms
        )

    def HealthCheck(self, request, context):
        return pb.HealthCheckResponse(
            status="SERVING" if self.hub.store.accepting() else "NOT_SERVING",
            active_clients=self.hub.count(),
            uptime_seconds=int(time.monotonic() - self._started),
        )

    def ListRooms(self, request, context):
        rooms = self.hub.rooms()
        return pb.ListRoomsResponse(
            rooms=[pb.Room(name=name, members=rooms[name]) for name in sorted(rooms)]
        )

    def ListUsers(self, request, context):
        room = room_name(request.room) if request.room else None
        if request.room and room is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid room: use {ROOM_RULE}")
        users = self.hub.users(room)
        return pb.ListUsersResponse(
            users=[pb.User(username=n, room=r[0] if r else "", rooms=r) for n, r in users]
        )

    def Chat(self, request_iterator, context):
        if not self._slots.acquire(blocking=False):
            log.warning("refused a stream: server full (%d)", self._settings.max_clients)
            metrics.refused("full")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server full, try again later")
        try:
            yield from self._session(request_iterator, context)
        finally:
            self._slots.release()

    def shut_down(self) -> None:
        notice = system_event("server shutting down", pb.SHUTTING_DOWN)
        self.hub.shut_down(notice)

    def close(self) -> None:
        self._timers.close()
        self._refusals.flush()  # its summary's timer may not have run
        self.hub.store.close()

    # -- the steps of a session ---------------------------------------------

    def _session(self, request_iterator, context):
        joined = self._read_join(request_iterator, context)
        if joined is None:
            return  # the call was cancelled before a join
        self._limit_joins(context)
        client = Client(
            joined.username,
            room_name(joined.room),
            cancel=context.cancel,
            queue_max=self._settings.queue_max_events,
        )
        client.network = caps.peer_network(context)
        if wait_s := self._new_rooms.wait_s(next(iter(client.rooms)), client.network):
            log.info("refused a stream from %s: too many new rooms", caps.peer_address(context))
            metrics.refused("rooms")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many new rooms from your network: retry in {round_up(wait_s):.1f} s",
            )
        self._join(client, context, joined.last_seen_id)
        context.add_callback(lambda: self.hub.leave(client, member.GONE))
        reader = threading.Thread(
            target=self._reader.run, args=(client, request_iterator), name=f"reader-{client.name}"
        )
        try:
            yield from self._drain(client, context, start_reader=reader.start)
        finally:
            self.hub.leave(client, member.GONE)  # a no-op if the reader or hub got there first
            self.hub.cluster.release(client.name, client.claim)
            log.info("%s left (%s)", client.name, client.ending)

    def _join(self, client: Client, context, last_seen_id: str) -> None:
        """Step 3a: claim the name (on every server), register in the room."""
        if last_seen_id and not self.hub.store.can_resume(last_seen_id):
            log.info("refused %s: cannot resume while Redis is away", client.name)
            context.abort(grpc.StatusCode.UNAVAILABLE, RESUME_LATER)  # the client retries
        try:
            claim = self.hub.cluster.claim(client.name, next(iter(client.rooms)))
        except ClaimUnconfirmed:
            log.info("refused %s: the name cannot be confirmed in Redis now", client.name)
            context.abort(grpc.StatusCode.UNAVAILABLE, JOIN_LATER)
        try:
            if claim is None:
                raise NameTaken(client.name)
            client.claim = claim
            self.hub.join(client, last_seen_id)  # queues: history, USER_JOINED, who is there
        except (NameTaken, ShuttingDown) as refusal:
            if claim is not None:
                self.hub.cluster.release(client.name, claim)
            if isinstance(refusal, ShuttingDown):
                log.info("refused %s: shutting down", client.name)
                context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")
            log.info("refused %s: name already online", client.name)
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{client.name} is already online")
        metrics.JOINS.inc()
        room = next(iter(client.rooms))
        log.info("%s joined #%s (%d online here)", client.name, room, self.hub.count())

    def _read_join(self, request_iterator, context) -> pb.UserEvent | None:
        """Step 2: the first event, checked. Aborts the call if it is wrong."""
        timeout = self._timers.schedule(self._settings.join_timeout_s, context.cancel)
        try:
            first = next(request_iterator, None)
        except grpc.RpcError:
            return None  # cancelled: by the client, or by the join timeout
        finally:
            timeout.cancel()
        if first is None and not context.is_active():
            return None  # ended by gRPC: a request it could not decode (access/undecodable.py)
        if first is None or first.WhichOneof("event") != "user_event":
            self._refuse(context, "the first event must be a UserEvent USER_JOINED")
        joined = first.user_event
        if joined.type != pb.USER_JOINED:
            self._refuse(context, "the first event must be a UserEvent USER_JOINED")
        if not is_valid_name(joined.username):
            self._refuse(context, f"invalid username: use {NAME_RULE}")
        if room_name(joined.room) is None:
            self._refuse(context, f"invalid room: use {ROOM_RULE}")
        if not self._auth.may_join(context, joined.username):
            self._refusals.info("refused a stream: joining as another name than the signed-in one")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "you may only join as your own name")
        return joined

    def _refuse(self, context, details: str):
        self._refusals.info("refused a stream: %s", details)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)

    def _limit_joins(self, context) -> None:
        """Step 2b: a network that joins too often waits (reconnect loops, floods)."""
        buckets = self._join_buckets
        wait_s = buckets.try_take(caps.peer_network(context)) if buckets is not None else 0.0
        if wait_s:
            log.info("refused a stream from %s: joining too often", caps.peer_address(context))
            metrics.refused("joins")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"joining too often from your network: retry in {round_up(wait_s):.1f} s",
            )

    def _replay(self, client: Client, context, mark: Replay):
        """Step 3b: yield a room's history, a page at a time; return the last id the client has.

        What the joiner missed (after `mark.after_id`), or the last N, up to
        `mark.upto`: what came later is in the queue, after the mark. Only
        one page is held at a time, and none once it has been sent.
        """
        limit, room = self._settings.history, mark.room
        upto = id_key(mark.upto) if mark.upto else None
        try:
            pages = self.hub.store.history(limit, mark.after_id or None, room)
            last_id = mark.after_id or None  # seen before: a lagging follower's copy is not new
        except ValueError:
            self.hub.tell(client, system_event("unknown last_seen_id", pb.INVALID_EVENT))
            pages, last_id = self.hub.store.history(limit, None, room), None
        except HistoryUnavailable:  # Redis is away and this server cannot fill the gap
            context.abort(grpc.StatusCode.UNAVAILABLE, RESUME_LATER)
        try:
            for page in pages:
                for message in page:
                    if upto is not None and id_key(message.id) > upto:
                        return last_id  # live, from the queue
                    yield message_event(message, replay=True)
                    last_id = message.id
        except HistoryUnavailable:  # Redis went away mid-resume: a gap would be a loss
            context.abort(grpc.StatusCode.UNAVAILABLE, RESUME_LATER)
        return last_id

    def _drain(self, client: Client, context, start_reader):
        """Steps 4 and 5: yield the client's queue until it ends.

        The join's history comes first, and only then does `start_reader()`
        start step 4: what the joiner says is an answer to what it has seen,
        never a message of its own that it would first meet as history.

        A `Replay` mark in the queue (a join of a room) is replaced by that
        room's history, read up to the room's last message delivered before
        the mark: later ones come live, so a message said into the room
        during the read reaches its sender as its echo. A message of the room
        queued and also in the history (ids of a stream that went back, a
        resume past what this server has delivered) is skipped, once, by id;
        the first newer message of that room ends the skipping for it, so
        the rest of the stream pays one dict lookup per message while any
        room is skipping, and nothing once none is.
        """
        skipping: dict[str, tuple[int, int]] = {}  # room -> id key: queued up to it were sent
        while True:
            event = client.queue.get()
            if client.ending == member.EVICTED:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow: fell too far behind")
            if client.ending == member.KICKED:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{client.name} is online elsewhere")
            if client.ending == member.GONE:
                return
            if isinstance(event, Replay):
                last_id = yield from self._replay(client, context, event)
                skipping.pop(event.room, None)
                if last_id:
                    skipping[event.room] = id_key(last_id)
                if start_reader is not None:  # the join's replay is over
                    start_reader()
                    start_reader = None
            elif isinstance(event, Echo):
                yield event.event  # an answer to a line sent again: never skipped
            elif event is not member.WAKE:
                accepted = None
                if isinstance(event, member.Timed):
                    event, accepted = event.event, event.accepted
                if skipping and already_sent(event, skipping):
                    continue
                if accepted is not None:
                    metrics.DELIVERY_SECONDS.observe(max(0.0, time.time() - accepted))
                yield event
            if client.ending is not None and client.queue.empty():
                return  # DRAIN: everything queued was delivered


def already_sent(event, skipping: dict[str, tuple[int, int]]) -> bool:
    """Was this queued event in a replay? A newer message ends its room's skipping."""
    message = event.chat_message if event.WhichOneof("event") == "chat_message" else None
    if message is None or not message.id or message.room not in skipping:
        return False
    if id_key(message.id) <= skipping[message.room]:
        return True
    del skipping[message.room]  # live from here on
    return False
