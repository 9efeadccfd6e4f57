"""The ChatService servicer: one client's stream, from join to leave.

server.py builds the gRPC server around this servicer (and explains the
threads a stream uses); hub.py holds what all streams share. Here is the
life of one `Chat` call:

1. take a client slot (`--max-clients`), else RESOURCE_EXHAUSTED at once;
2. read the first event: it must be a valid USER_JOINED, else
   INVALID_ARGUMENT; a name other than the signed-in one (auth.py) is
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
import perhost
from auth import Anyone
from events import message_event, system_event
from hub import Hub, NameTaken, ShuttingDown
from member import Client
from ratelimit import Buckets
from reader import Reader, round_up
from sanitize import NAME_RULE, is_valid_name
from store import id_key

log = logging.getLogger("session")

JOIN_TIMEOUT_S = 10.0  # a stream that has not joined by then is cancelled


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
    max_streams_per_address: int = perhost.MAX_STREAMS_PER_ADDRESS  # open Chats, joined or not
    typing_silence_s: float = hubs.TYPING_SILENCE_S
    join_timeout_s: float = JOIN_TIMEOUT_S
    queue_max_events: int = member.QUEUE_MAX_EVENTS  # a client this far behind is evicted
    evict_grace_s: float = hubs.EVICT_GRACE_S  # then cut off if its stream stays stuck


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Implements `Chat` and `HealthCheck` of chat.proto."""

    def __init__(self, hub: Hub, timers, settings: Settings, auth=None):
        self.hub = hub
        self._auth = auth or Anyone()  # who may join as whom (auth.py)
        self._timers = timers
        self._settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_clients)  # one per open Chat
        self._started = time.monotonic()
        # Buckets outlive streams: reconnecting refills nothing (None: no limit).
        message_buckets = self._join_buckets = None
        if settings.rate is not None:
            message_buckets = Buckets(settings.rate, settings.burst)  # by name
            self._join_buckets = Buckets(settings.join_rate, settings.join_burst)  # by address
        self._reader = Reader(hub, settings.max_message_chars, message_buckets)

    def HealthCheck(self, request, context):
        return pb.HealthCheckResponse(
            status="SERVING",
            active_clients=self.hub.count(),
            uptime_seconds=int(time.monotonic() - self._started),
        )

    def Chat(self, request_iterator, context):
        if not self._slots.acquire(blocking=False):
            log.warning("refused a stream: server full (%d)", self._settings.max_clients)
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
        self.hub.store.close()

    # -- the steps of a session ---------------------------------------------

    def _session(self, request_iterator, context):
        joined = self._read_join(request_iterator, context)
        if joined is None:
            return  # the call was cancelled before a join
        self._limit_joins(context)
        client = Client(
            joined.username, cancel=context.cancel, queue_max=self._settings.queue_max_events
        )
        claim = self._join(client, context)
        context.add_callback(lambda: self.hub.leave(client, member.GONE))
        try:
            replayed_up_to = yield from self._replay(client, joined.last_seen_id)
            threading.Thread(
                target=self._reader.run,
                args=(client, request_iterator),
                name=f"reader-{client.name}",
            ).start()
            yield from self._drain(client, context, replayed_up_to)
        finally:
            self.hub.leave(client, member.GONE)  # a no-op if the reader or hub got there first
            self.hub.cluster.release(client.name, claim)
            log.info("%s left (%s)", client.name, client.ending)

    def _join(self, client: Client, context) -> str:
        """Step 3a: claim the name (on every server), register, say who is online."""
        claim = self.hub.cluster.claim(client.name)
        try:
            if claim is None:
                raise NameTaken(client.name)
            self.hub.join(client)
        except (NameTaken, ShuttingDown) as refusal:
            if claim is not None:
                self.hub.cluster.release(client.name, claim)
            if isinstance(refusal, ShuttingDown):
                log.info("refused %s: shutting down", client.name)
                context.abort(grpc.StatusCode.UNAVAILABLE, "server shutting down")
            log.info("refused %s: name already online", client.name)
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{client.name} is already online")
        online = self.hub.online_names()
        self.hub.tell(client, system_event(f"online ({len(online)}): {', '.join(online)}"))
        log.info("%s joined (%d online here)", client.name, self.hub.count())
        return claim

    def _read_join(self, request_iterator, context) -> pb.UserEvent | None:
        """Step 2: the first event, checked. Aborts the call if it is wrong."""
        timeout = self._timers.schedule(self._settings.join_timeout_s, context.cancel)
        try:
            first = next(request_iterator, None)
        except grpc.RpcError:
            return None  # cancelled: by the client, or by the join timeout
        finally:
            timeout.cancel()
        if first is None or first.WhichOneof("event") != "user_event":
            self._refuse(context, "the first event must be a UserEvent USER_JOINED")
        joined = first.user_event
        if joined.type != pb.USER_JOINED:
            self._refuse(context, "the first event must be a UserEvent USER_JOINED")
        if not is_valid_name(joined.username):
            self._refuse(context, f"invalid username: use {NAME_RULE}")
        if not self._auth.may_join(context, joined.username):
            log.info("refused a stream: joining as another name than the signed-in one")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "you may only join as your own name")
        return joined

    @staticmethod
    def _refuse(context, details: str):
        log.info("refused a stream: %s", details)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)

    def _limit_joins(self, context) -> None:
        """Step 2b: an address that joins too often waits (reconnect loops, floods)."""
        address = context.peer().rpartition(":")[0]  # "ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1"
        buckets = self._join_buckets
        wait_s = buckets.try_take(address) if buckets is not None else 0.0
        if wait_s:
            log.info("refused a stream from %s: joining too often", address)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"joining too often from your address: retry in {round_up(wait_s):.1f} s",
            )

    def _replay(self, client: Client, last_seen_id: str):
        """Step 3b: yield history, a page at a time; return the last id sent.

        What the joiner missed (after `last_seen_id`), or the last N. Only
        one page is held at a time, and none once it has been sent.
        """
        try:
            pages = self.hub.store.history(self._settings.history, last_seen_id or None)
        except ValueError:
            self.hub.tell(client, system_event("unknown last_seen_id", pb.INVALID_EVENT))
            pages = self.hub.store.history(self._settings.history)
        last_id = None
        for page in pages:
            for message in page:
                yield message_event(message, replay=True)
            last_id = page[-1].id if page else last_id
        return last_id

    def _drain(self, client: Client, context, replayed_up_to: str | None):
        """Step 5: yield the client's queue until it ends.

        Messages already replayed from history may also be in the queue
        (they were posted between the join and the history read): skip
        those, once, by id.
        """
        skip_up_to = id_key(replayed_up_to) if replayed_up_to else None
        while True:
            event = client.queue.get()
            if client.ending == member.EVICTED:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow: fell too far behind")
            if client.ending == member.KICKED:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{client.name} is online elsewhere")
            if client.ending == member.GONE:
                return
            if event is not member.WAKE:
                if skip_up_to is not None and event.WhichOneof("event") == "chat_message":
                    if id_key(event.chat_message.id) <= skip_up_to:
                        continue
                    skip_up_to = None  # live from here on
                yield event
            if client.ending is not None and client.queue.empty():
                return  # DRAIN: everything queued was delivered
