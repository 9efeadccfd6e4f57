"""One Chat call of the client: its requests queue and the receive thread that drains it.

client.py opens a `Link` for each attempt to join (the first one, and each
rejoin after a drop) and decides what its end means. A Link only carries
events: what to send goes into `outbox`, which gRPC's own request thread
drains; what comes back is handed, one event at a time, to `on_event` on the
receive thread, which only drains and reports. When the call ends, the
receive thread stores why in `error`, sets `ended`, and calls `on_end`.
The join names the room to start in (the first `--room`, or the current
room before a drop) and the last message seen there, so a rejoin resumes
it; client.py joins the other rooms right after, each with its own.

    main / send thread --> Link.outbox --> gRPC request thread --> server
    server --> receive thread (Link._receive) --> on_event --> renderer
"""

import queue
import threading

import click
import grpc

import chat_pb2 as pb
import chat_pb2_grpc
from sanitize import clean_text
from terminal.lines import retry_in

# Transport options, all in one place (the server's are in server.py).
# Keepalive finds a server that vanished without closing the connection (a
# cable pulled, a laptop lid shut): ping every KEEPALIVE_TIME_MS, and if no
# ack comes within KEEPALIVE_TIMEOUT_MS the call ends UNAVAILABLE and we
# reconnect, so a dead connection is noticed within ~20 s.
# NOTE: grpc core (1.5x+) waits for a keepalive ack for `ping_timeout_ms`,
# default one minute, not `keepalive_timeout_ms`: set both, or a dead
# connection goes unnoticed for 70 s. The server accepts pings every 5 s at
# most; pinging more often gets the connection closed with "too_many_pings".
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 10_000
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),  # ping even with no call open
    ("grpc.http2.max_pings_without_data", 0),  # 0 = no limit: a chat can be quiet for hours
]

# A join refused UNAVAILABLE comes from a server that is up but cannot take
# us now (cut off from the Redis it shares, shutting down): try again after
# this, the next address first.
LATER_S = 1.0

END = object()  # in Link.outbox: half-close the call
# A rejoin refused with these is tried again on the same server: it is up,
# and will let us in once it knows our old call is gone (ALREADY_EXISTS).
STAY_CODES = (grpc.StatusCode.ALREADY_EXISTS,)


class ChatError(click.ClickException):
    """The chat cannot go on; click prints "Error: <message>" and exits 1."""

    def __init__(
        self, message: str, retryable: bool = False, stay: bool = False, after_s: float = 0.0
    ):
        super().__init__(message)
        self.retryable = retryable  # worth another try while reconnecting
        self.stay = stay  # the server answered: try it again, not the next address
        self.after_s = after_s  # try again after this (the server named it, or is busy)


class Unreachable(ChatError):
    """No connection to the server at all (worth trying the next address)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


# The server refused us, not the connection: trying again would get the same answer.
REFUSALS = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


class Link:
    """One Chat call: requests from `outbox`, responses drained by the receive thread.

    NOTE: `error` and `shutting_down` are written by the receive thread
    before it sets `ended`, `left_because` by `abandon` before it ends the
    call; read them only once `ended` is set.
    """

    def __init__(self, channel, name: str, room: str, last_seen_id: str, on_event, on_end):
        self.channel = channel
        self.outbox: queue.Queue = queue.Queue()  # ClientEvents to send, then END
        self.answered = threading.Event()  # our own USER_JOINED came back, or the call ended
        self.ended = threading.Event()
        self.error: Exception | None = None  # why the call ended; None for status OK
        self.shutting_down = False  # the server said SHUTTING_DOWN (receive thread writes)
        self.left_because = ""  # why we ended the call ourselves (abandon)
        self._name, self._on_event, self._on_end = name, on_event, on_end
        join = pb.UserEvent(
            type=pb.USER_JOINED, username=name, room=room, last_seen_id=last_seen_id
        )
        self.outbox.put(pb.ClientEvent(user_event=join))
        self.call = chat_pb2_grpc.ChatServiceStub(channel).Chat(self._requests())
        self.thread = threading.Thread(target=self._receive, name="receive", daemon=True)
        self.thread.start()

    def send(self, event: pb.ClientEvent) -> None:
        self.outbox.put(event)

    def typing(self, kind, room: str) -> None:
        self.outbox.put(pb.ClientEvent(typing_event=pb.TypingEvent(type=kind, room=room)))

    def abandon(self, why: str) -> None:
        """End the call, as a drop (the server stopped answering): the user is told `why`."""
        self.left_because = why
        self.call.cancel()

    def close(self) -> None:
        self.outbox.put(END)  # frees gRPC's request thread if it waits on the queue
        self.call.cancel()
        self.channel.close()

    def _requests(self):
        """gRPC's own thread pulls what to send from here; END half-closes."""
        while (event := self.outbox.get()) is not END:
            yield event

    def _receive(self) -> None:
        """The receive thread: drain the stream, hand on each event, report the end."""
        try:
            for event in self.call:
                self._on_event(self, event)
                joined = event.user_event
                if joined.type == pb.USER_JOINED and joined.username == self._name:
                    self.answered.set()
        except Exception as error:  # an RpcError (anything else: a bug, reported the same)
            self.error = error
        finally:
            self.ended.set()
            self.answered.set()
            self._on_end(self)


def code_of(error) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.RpcError) else None


def dropped(error) -> bool:
    """Did the call end because the connection or server went away (worth a rejoin)?"""
    if error is None:
        return True  # status OK though we did not half-close, or no answer to the join
    return isinstance(error, grpc.RpcError) and error.code() not in REFUSALS


def join_refused(error) -> ChatError:
    """What a call that ended before our join was confirmed means for the next try."""
    why, code = f"cannot join: {describe(error)}", code_of(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and (after_s := retry_in(why)):
        return ChatError(why, True, True, after_s)  # joining too often: come back then
    if code == grpc.StatusCode.UNAVAILABLE:
        return ChatError(why, True, after_s=LATER_S)  # up, but not now
    return ChatError(why, dropped(error), code in STAY_CODES)


def describe(error) -> str:
    """Why a call ended, in a few words for the user."""
    if error is None:
        return "the server ended the call"
    if not isinstance(error, grpc.RpcError):
        return str(error)
    return clean_text(error.details() or "") or error.code().name.lower()


def split_addresses(value: str) -> list[str]:
    """ "host1:8081,host2:8082" -> each address, in order; at least one."""
    addresses = [part.strip() for part in value.split(",") if part.strip()]
    if not addresses:
        raise ChatError("no address: use --address host:port[,host:port...]")
    return addresses
