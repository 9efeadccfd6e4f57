"""A chat client for tests: one Chat stream whose replies a thread collects.

`join(address, name)` opens a stream and waits until the server announced
the join; `Conn.next_event(kind, timeout, where)` waits for the next event
of a kind. Every stream has a deadline; every wait has a timeout.
"""

import queue
import threading
import time

import grpc

import chat_pb2 as pb
import chat_pb2_grpc

EVENT_TIMEOUT_S = 5.0  # how long a test waits for an event that should come
RPC_TIMEOUT_S = 30.0  # deadline on every stream a test opens


_END = object()


class Conn:
    """One Chat stream: `send` puts events on it; a thread collects replies."""

    def __init__(
        self, address: str, first: pb.ClientEvent | None, timeout=RPC_TIMEOUT_S, channel=None
    ):
        self.channel = channel or grpc.insecure_channel(address)  # or TLS, credentials
        self.stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self._outbox: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()  # ServerEvents, then the final RpcError/None
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        # Where `say` and `typing` speak unless told: the room the stream joined first.
        self.room = first.user_event.room if first is not None else ""
        if first is not None:
            self._outbox.put(first)
        self.call = self.stub.Chat(self._requests(), timeout=timeout)
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _requests(self):
        while True:
            event = self._outbox.get()
            if event is _END:
                return
            yield event

    def _receive(self):
        try:
            for event in self.call:
                self.events.put(event)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()

    def send(self, event: pb.ClientEvent) -> None:
        self._outbox.put(event)

    def say(self, text: str, **fields) -> None:
        """Say `text` (in `self.room` unless `room` or `to` is given)."""
        if "to" not in fields:
            fields.setdefault("room", self.room)
        self.send(pb.ClientEvent(chat_message=pb.ChatMessageEvent(message=text, **fields)))

    def typing(self, kind, room: str | None = None) -> None:
        room = self.room if room is None else room
        self.send(pb.ClientEvent(typing_event=pb.TypingEvent(type=kind, room=room)))

    def half_close(self) -> None:
        self._outbox.put(_END)

    def close(self) -> None:
        self.call.cancel()
        self._outbox.put(_END)
        self.channel.close()

    def next_event(self, kind: str | None = None, timeout=EVENT_TIMEOUT_S, where=None):
        """The next event of `kind` (skipping others) that satisfies `where`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(f"no {kind or 'event'} within {timeout} s") from None
            if kind is None or event.WhichOneof("event") == kind:
                if where is None or where(getattr(event, kind) if kind else event):
                    return event

    def messages(self, count: int, timeout=EVENT_TIMEOUT_S) -> list:
        return [self.next_event("chat_message", timeout).chat_message for _ in range(count)]

    def wait_end(self, timeout=EVENT_TIMEOUT_S) -> grpc.StatusCode:
        assert self.ended.wait(timeout), "stream did not end"
        return self.error.code() if self.error else grpc.StatusCode.OK

    def drain(self) -> list:
        """Everything received so far, without waiting."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out


def join_event(name: str, last_seen_id: str = "", room: str = "") -> pb.ClientEvent:
    return pb.ClientEvent(
        user_event=pb.UserEvent(
            type=pb.USER_JOINED, username=name, last_seen_id=last_seen_id, room=room
        )
    )


def join(address: str, name: str, last_seen_id: str = "", room: str = "") -> Conn:
    """Open a stream as `name` (in `room`) and wait until the server has announced the join."""
    conn = Conn(address, join_event(name, last_seen_id, room))
    conn.next_event("user_event", where=lambda e: e.username == name and e.type == pb.USER_JOINED)
    return conn


def enter_event(room: str, last_seen_id: str = "") -> pb.ClientEvent:
    """A joined client's request to join `room` too (after `last_seen_id`, if given)."""
    joined = pb.UserEvent(type=pb.USER_JOINED, room=room, last_seen_id=last_seen_id)
    return pb.ClientEvent(user_event=joined)


def part_event(room: str) -> pb.ClientEvent:
    """A joined client's request to leave `room` (its stream stays)."""
    return pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_LEFT, room=room))


def health(address: str) -> pb.HealthCheckResponse:
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        return stub.HealthCheck(pb.HealthCheckRequest(), timeout=EVENT_TIMEOUT_S)
