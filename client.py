"""The chat client: `python client.py --name alice`, one user's session.

This file is the protocol side: the Chat call and its receive thread,
rejoining after a drop, and the command line. render.py is the user's side:
how each event looks, and the input line on a terminal; piped.py sends
piped input, each line confirmed by its echo.

    main thread:    input (prompt or stdin) --> Link.outbox --> gRPC --> server
    receive thread: server --> Chat._on_event --> Renderer.show --> terminal
                    at the end: Link.error, Link.ended, Chat.on_down()

The receive thread only drains and reports; the main thread decides what an
ending means (leave, report an error, or reconnect). NOTE: the threads share
only thread-safe things: the queues `Link.outbox` (to gRPC's sending
thread) and `Chat.acks` (our echoes and refusals, piped input only); the
Events `Link.answered` and `Link.ended` (`Link.error` is written before
`ended` is set); the Renderer, whose lock serialises output. The receive
thread also writes `Chat.last_seen_id` and `Chat.shutting_down`; the main
thread reads them only after `Link.ended` is set.

Reconnect: a call that drops without a SHUTTING_DOWN notice is reopened with
backoff, joining with `last_seen_id` so the server sends exactly what was
missed; ids already shown are skipped, so nothing appears twice.
"""

import queue
import sys
import threading
import time

import click
import grpc

import chat_pb2 as pb
import chat_pb2_grpc
from piped import DOWN, run_pipe
from render import Prompt, Renderer, ask_name, use_colour
from sanitize import NAME_RULE, clean_text, is_valid_name
from store import id_key

DEFAULT_ADDRESS = "localhost:8080"
CONNECT_TIMEOUT_S = 3.0  # no connection by then: "cannot reach" (or the next retry)
JOIN_TIMEOUT_S = 5.0  # connected, but the server has not confirmed our join
CLOSE_TIMEOUT_S = 1.0  # on leaving, wait this long for the server to end the call
RECONNECT_FIRST_WAIT_S = 0.25  # backoff before the first attempt, doubling each time
RECONNECT_MAX_WAIT_S = 5.0  # ... up to this
RECONNECT_GIVE_UP_S = 60.0  # then give up, one error line, exit 1

# Transport options, all in one place (the server's are in server.py).
# Keepalive finds a server that vanished without closing the connection (a
# cable pulled, a laptop lid shut): ping when idle for KEEPALIVE_TIME_MS,
# and if no ack comes within KEEPALIVE_TIMEOUT_MS the call ends UNAVAILABLE
# and we reconnect. NOTE: the server accepts pings every 5 s at most; pinging
# more often gets the connection closed with "too_many_pings".
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 10_000
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),  # ping even with no call open
    ("grpc.http2.max_pings_without_data", 0),  # 0 = no limit: a chat can be quiet for hours
]

END = object()  # in Link.outbox: half-close the call


class ChatError(click.ClickException):
    """The chat cannot go on; click prints "Error: <message>" and exits 1."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable  # worth another try while reconnecting


class Link:
    """One Chat call: requests from `outbox`, responses drained by the receive thread."""

    def __init__(self, channel, name: str, last_seen_id: str, on_event, on_end):
        self.channel = channel
        self.outbox: queue.Queue = queue.Queue()  # ClientEvents to send, then END
        self.answered = threading.Event()  # our own USER_JOINED came back, or the call ended
        self.ended = threading.Event()
        self.error: Exception | None = None  # why the call ended; None for status OK
        self._name, self._on_event, self._on_end = name, on_event, on_end
        join = pb.UserEvent(type=pb.USER_JOINED, username=name, last_seen_id=last_seen_id)
        self.outbox.put(pb.ClientEvent(user_event=join))
        self.call = chat_pb2_grpc.ChatServiceStub(channel).Chat(self._requests())
        self.thread = threading.Thread(target=self._receive, name="receive", daemon=True)
        self.thread.start()

    def _requests(self):
        """gRPC's own thread pulls what to send from here; END half-closes."""
        while (event := self.outbox.get()) is not END:
            yield event

    def _receive(self) -> None:
        """The receive thread: drain the stream, hand on each event, report the end."""
        try:
            for event in self.call:
                self._on_event(event)
                joined = event.user_event
                if joined.type == pb.USER_JOINED and joined.username == self._name:
                    self.answered.set()
        except Exception as error:  # an RpcError, or output gone (a closed pipe)
            self.error = error
        finally:
            self.ended.set()
            self.answered.set()
            self._on_end()

    def close(self) -> None:
        self.outbox.put(END)  # frees gRPC's request thread if it waits on the queue
        self.call.cancel()
        self.channel.close()


class Chat:
    """One user's session across calls: the current Link, what was shown, reconnects."""

    def __init__(self, address: str, name: str, renderer: Renderer, acks=None):
        self.address, self.name, self.renderer = address, name, renderer
        self.acks: queue.Queue | None = acks  # our echoes, refusals, DOWN; None: not kept
        self.on_down = lambda: None  # called on the receive thread when a call ends
        self.last_seen_id = ""  # the newest chat message shown
        self.shutting_down = False  # the server said SHUTTING_DOWN
        self.link: Link | None = None

    def connect(self) -> None:
        """Open a call and join; raise ChatError if the server cannot be reached or says no."""
        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            channel.close()
            raise ChatError(f"cannot reach the chat server at {self.address}", True) from None
        link = Link(channel, self.name, self.last_seen_id, self._on_event, self._on_end)
        if not link.answered.wait(JOIN_TIMEOUT_S) or link.ended.is_set():
            link.close()
            raise ChatError(f"cannot join: {describe(link.error)}", dropped(link.error))
        self.link = link

    def say(self, text: str) -> None:
        self.link.outbox.put(pb.ClientEvent(chat_message=pb.ChatMessageEvent(message=text)))

    def typing(self, started: bool) -> None:
        kind = pb.TYPING_START if started else pb.TYPING_STOP
        self.link.outbox.put(pb.ClientEvent(typing_event=pb.TypingEvent(type=kind)))

    def recover(self) -> bool:
        """After a DOWN: reconnect if the call dropped (True), else False if it is fine.

        Raises ChatError when the chat is over: the server shut down, refused
        us, or could not be reached again within RECONNECT_GIVE_UP_S.
        """
        link = self.link
        if not link.ended.is_set():
            return False  # a DOWN from an earlier call, already dealt with
        link.close()
        if self.shutting_down:
            raise ChatError("server shut down")
        if not dropped(link.error):
            raise ChatError(f"connection lost: {describe(link.error)}")
        self._reconnect()
        return True

    def close(self) -> None:
        """Leave: half-close, so the server delivers what is queued and ends with OK."""
        if self.link is None:
            return
        self.link.outbox.put(END)
        self.link.ended.wait(CLOSE_TIMEOUT_S)
        self.link.close()
        self.link.thread.join(CLOSE_TIMEOUT_S)

    def _reconnect(self) -> None:
        self.renderer.notice("reconnecting...")
        self.renderer.clear_typing()
        give_up_at = time.monotonic() + RECONNECT_GIVE_UP_S
        wait_s = RECONNECT_FIRST_WAIT_S
        while True:
            time.sleep(wait_s)  # backoff, so a restarting server is not hammered
            try:
                return self.connect()
            except ChatError as error:
                if not error.retryable or time.monotonic() + wait_s > give_up_at:
                    raise ChatError(f"gave up reconnecting: {error.message}") from None
            wait_s = min(2 * wait_s, RECONNECT_MAX_WAIT_S)

    # -- on the receive thread ------------------------------------------------

    def _on_event(self, event: pb.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "chat_message":
            message = event.chat_message
            if not self._is_new(message.id):
                return  # shown before the reconnect
            if message.username == self.name:
                self._ack(clean_text(message.message))  # as deliver() compares it
        elif kind == "system_event":
            code = event.system_event.code
            self.shutting_down |= code == pb.SHUTTING_DOWN
            if code in (pb.RATE_LIMITED, pb.INVALID_EVENT):
                self._ack(event.system_event)
        self.renderer.show(event)

    def _is_new(self, message_id: str) -> bool:
        """False for an id at or before the last one shown; else remember it."""
        try:
            if self.last_seen_id and id_key(message_id) <= id_key(self.last_seen_id):
                return False
        except ValueError:
            return True  # no usable id (an older server): show it, cannot dedupe
        self.last_seen_id = message_id
        return True

    def _ack(self, answer) -> None:
        if self.acks is not None:
            self.acks.put(answer)

    def _on_end(self) -> None:
        self._ack(DOWN)
        self.on_down()


def dropped(error) -> bool:
    """Did the call end because the connection or server went away (worth a rejoin)?"""
    if error is None:
        return True  # status OK though we did not half-close, or no answer to the join
    return isinstance(error, grpc.RpcError) and error.code() != grpc.StatusCode.INVALID_ARGUMENT


def describe(error) -> str:
    """Why a call ended, in a few words for the user."""
    if error is None:
        return "the server did not confirm the join"
    if not isinstance(error, grpc.RpcError):
        return str(error)
    return clean_text(error.details() or "") or error.code().name.lower()


# -- the command line -------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--name", envvar="CHAT_NAME", show_envvar=True,
    help="Your name in the chat (asked for if left out).",
)  # fmt: skip
@click.option(
    "--address", envvar="CHAT_ADDRESS", show_envvar=True, default=DEFAULT_ADDRESS,
    show_default=True, help="host:port of the chat server.",
)  # fmt: skip
@click.option("--timestamps", is_flag=True, help="Start each line with the time, HH:MM.")
def main(name, address, timestamps):
    """Chat with everyone on a grpc-chat server.

    On a terminal, type and press Enter; /help lists commands. With input
    piped in, each line is sent, and the program exits once the last one
    has come back. NO_COLOR switches colours off.
    """
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    try:
        if name is None and interactive:
            name = ask_name()
        if name is None:
            raise ChatError("no name: use --name or set CHAT_NAME")
        if not is_valid_name(name):
            raise ChatError(f"invalid name {name!r}: use {NAME_RULE}")
        renderer = Renderer(name, use_colour(sys.stdout), timestamps, show_typing=interactive)
        chat = Chat(address, name, renderer, acks=None if interactive else queue.Queue())
        try:
            Prompt(chat).run() if interactive else run_pipe(chat)
        finally:
            chat.close()
    except (KeyboardInterrupt, EOFError, click.Abort):
        pass  # Ctrl-C, Ctrl-D: leave quietly


if __name__ == "__main__":
    main()
