"""The ChatService servicer: one client's stream, from join to leave.

server.py builds the gRPC server around this servicer (and explains the
threads a stream uses); hub.py holds what all streams share. Here is the
life of one `Chat` call:

1. take a client slot (`--max-clients`), else RESOURCE_EXHAUSTED at once;
2. read the first event: it must be a valid USER_JOINED, else
   INVALID_ARGUMENT (or ALREADY_EXISTS for a name online);
3. claim the name, register with the hub, then replay history (the
   `replay` flag set);
4. start the reader thread, which validates, rate-limits and forwards what
   the client says;
5. drain the client's queue into the response stream until the client ends.

Bad input after the join never ends the call: the sender alone gets a
`SystemEvent` saying what was wrong, and nothing is stored or sent.
"""

import logging
import math
import threading
import time
from dataclasses import dataclass

import grpc

import chat_pb2 as pb
import chat_pb2_grpc
import hub as hubs
from hub import Client, Hub, NameTaken, message_event, system_event
from ratelimit import TokenBucket
from sanitize import NAME_RULE, clean_text, is_valid_name
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
    max_clients: int = 512
    typing_silence_s: float = hubs.TYPING_SILENCE_S
    join_timeout_s: float = JOIN_TIMEOUT_S
    queue_max_events: int = hubs.QUEUE_MAX_EVENTS  # a client this far behind is evicted
    evict_grace_s: float = hubs.EVICT_GRACE_S  # then cut off if its stream stays stuck


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Implements `Chat` and `HealthCheck` of chat.proto."""

    def __init__(self, hub: Hub, timers, settings: Settings):
        self.hub = hub
        self._timers = timers
        self._settings = settings
        self._slots = threading.BoundedSemaphore(settings.max_clients)  # one per open Chat
        self._started = time.monotonic()

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
        client = Client(
            joined.username, cancel=context.cancel, queue_max=self._settings.queue_max_events
        )
        claim = self._join(client, context)
        context.add_callback(lambda: self.hub.leave(client, hubs.GONE))
        try:
            replayed = self._history(client, joined.last_seen_id)
            yield from (message_event(m, replay=True) for m in replayed)
            threading.Thread(
                target=self._read, args=(client, request_iterator), name=f"reader-{client.name}"
            ).start()
            yield from self._drain(client, context, replayed[-1].id if replayed else None)
        finally:
            self.hub.leave(client, hubs.GONE)  # a no-op if the reader or hub got there first
            self.hub.cluster.release(client.name, claim)
            log.info("%s left (%s)", client.name, client.ending)

    def _join(self, client: Client, context) -> str:
        """Step 3a: claim the name (on every server), register, say who is online."""
        claim = self.hub.cluster.claim(client.name)
        try:
            if claim is None:
                raise NameTaken(client.name)
            self.hub.join(client)
        except NameTaken:
            if claim is not None:
                self.hub.cluster.release(client.name, claim)
            log.info("refused %s: name already online", client.name)
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{client.name} is already online")
        online = self.hub.cluster.online(self.hub.names())
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
        return joined

    @staticmethod
    def _refuse(context, details: str):
        log.info("refused a stream: %s", details)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)

    def _history(self, client: Client, last_seen_id: str) -> list:
        """Step 3: what the joiner missed (after `last_seen_id`) or the last N."""
        try:
            return self.hub.store.history(self._settings.history, last_seen_id or None)
        except ValueError:
            self.hub.tell(client, system_event("unknown last_seen_id", pb.INVALID_EVENT))
            return self.hub.store.history(self._settings.history)

    def _drain(self, client: Client, context, replayed_up_to: str | None):
        """Step 5: yield the client's queue until it ends.

        Messages already replayed from history may also be in the queue
        (they were posted between the join and the history read): skip
        those, once, by id.
        """
        skip_up_to = id_key(replayed_up_to) if replayed_up_to else None
        while True:
            event = client.queue.get()
            if client.ending == hubs.EVICTED:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow: fell too far behind")
            if client.ending == hubs.GONE:
                return
            if event is not hubs.WAKE:
                if skip_up_to is not None and event.WhichOneof("event") == "chat_message":
                    if id_key(event.chat_message.id) <= skip_up_to:
                        continue
                    skip_up_to = None  # live from here on
                yield event
            if client.ending is not None and client.queue.empty():
                return  # DRAIN: everything queued was delivered

    # -- the reader thread --------------------------------------------------

    def _read(self, client: Client, request_iterator) -> None:
        """Step 4, on its own thread: owns `request_iterator` and the bucket."""
        bucket = None
        if self._settings.rate is not None:
            bucket = TokenBucket(self._settings.rate, self._settings.burst)
        ending = hubs.DRAIN  # the client half-closed: deliver what is queued
        try:
            for event in request_iterator:
                kind = event.WhichOneof("event")
                handler = getattr(self, f"_on_{kind}", self._on_None)
                handler(client, event, bucket)
        except grpc.RpcError:
            ending = hubs.GONE  # cancelled or connection lost
        except Exception:  # a bug must not leave the client registered
            log.exception("reader for %s failed", client.name)
            ending = hubs.GONE
        finally:
            self.hub.leave(client, ending)

    def _on_chat_message(self, client: Client, event, bucket) -> None:
        text = clean_text(event.chat_message.message)
        if not text:
            return self._reject(client, pb.INVALID_EVENT, "empty message: nothing was sent")
        if len(text) > self._settings.max_message_chars:
            limit = self._settings.max_message_chars
            return self._reject(
                client, pb.INVALID_EVENT, f"message too long: {len(text)} characters, max {limit}"
            )
        wait_s = bucket.try_take() if bucket else 0.0
        if wait_s:
            wait_s = math.ceil(wait_s * 10 - 1e-9) / 10  # round up: a retry then is not early
            return self._reject(client, pb.RATE_LIMITED, f"rate limited: retry in {wait_s:.1f} s")
        self.hub.post(client, text)

    def _on_typing_event(self, client: Client, event, bucket) -> None:
        kind = event.typing_event.type
        if kind not in (pb.TYPING_START, pb.TYPING_STOP):
            return self._reject(client, pb.INVALID_EVENT, "typing event without a type")
        self.hub.typing(client, kind)

    def _on_user_event(self, client: Client, event, bucket) -> None:
        self._reject(client, pb.INVALID_EVENT, "already joined: user events are for joining")

    def _on_None(self, client: Client, event, bucket) -> None:  # the oneof was empty
        self._reject(client, pb.INVALID_EVENT, "empty event")

    def _reject(self, client: Client, code, reason: str) -> None:
        log.info("refused an event from %s: %s", client.name, reason)
        self.hub.tell(client, system_event(reason, code))
