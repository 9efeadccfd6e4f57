"""The chat client: `python client.py --name alice`, one user's session.

This file is the session: joining, rejoining after a drop (on another
server if there are several), what each event means to us, and the
command line. link.py is one Chat call and its receive thread; lines.py
keeps what the user said until the server confirms it; render.py is how
events look; prompt.py (terminal) and piped.py (piped input) read lines.

    main thread:    input --> Chat.enter --> Lines --> send thread --> Link.outbox --> server
    receive thread: server --> Chat._on_event --> Renderer.show --> terminal
                                             \\--> Lines.echo / Lines.refused
                    at the end: Link.error, Link.ended, Lines.down, Chat.on_down()

The receive thread only drains and reports; the main thread decides what an
ending means (leave, report an error, or reconnect). NOTE: the threads
share only thread-safe things: `Lines` (its own lock), the queue
`Link.outbox`, the Events `Link.answered` and `Link.ended` (`Link.error` is
written before `ended` is set), and the Renderer, whose lock serialises
output. The receive thread also writes `Chat.last_seen_id` and
`Chat.shutting_down`; the main thread reads them only after `Link.ended`
is set, and only the main thread replaces `Chat.link`.

Reconnect: a call that drops without a SHUTTING_DOWN notice is reopened
with backoff, on the next address given, joining with `last_seen_id` so
the server sends exactly what was missed; ids already shown are skipped,
so nothing appears twice and the ids shown only increase.
"""

import os
import sys
import time
from pathlib import Path

# Before grpc loads, or its core logs every failed TLS handshake (a client
# that disagrees about TLS, a port scanner) at INFO; GRPC_VERBOSITY=INFO shows them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click
import grpc

import chat_pb2 as pb
from dial import Dialer, basic, bearer
from lines import DEFAULT_MAX_MESSAGE_CHARS, Lines, refusal
from link import (
    END,
    STAY_CODES,
    ChatError,
    Link,
    Unreachable,
    code_of,
    describe,
    dropped,
    split_addresses,
)
from piped import run_pipe
from prompt import Prompt
from render import OutputClosed, Renderer, ask_name, parse, use_colour
from sanitize import NAME_RULE, clean_text, is_valid_name
from store import id_key

DEFAULT_ADDRESS = "localhost:8080"
CONNECT_TIMEOUT_S = 3.0  # no connection by then: "cannot reach" (or the next address)
JOIN_TIMEOUT_S = 5.0  # connected, but the server has not confirmed our join
CLOSE_TIMEOUT_S = 1.0  # on leaving, wait this long for the server to end the call
RECONNECT_FIRST_WAIT_S = 0.25  # backoff before the first attempt, doubling each time
RECONNECT_MAX_WAIT_S = 5.0  # ... up to this
RECONNECT_GIVE_UP_S = 60.0  # then give up, one error line, exit 1


class Chat:
    """One user's session across calls: the current Link, what was shown, reconnects."""

    def __init__(self, addresses, name, renderer, max_chars=DEFAULT_MAX_MESSAGE_CHARS, dial=None):
        self.addresses, self.name, self.renderer = list(addresses), name, renderer
        self.dial = dial or Dialer()  # address -> channel: TLS and credentials (dial.py)
        self.max_chars = max_chars
        self.on_down = lambda: None  # called on the receive thread when a call ends
        self.on_settled = lambda: None  # called when every line is confirmed
        self.last_seen_id = ""  # the newest chat message shown
        self.shutting_down = False  # the server said SHUTTING_DOWN
        self.link: Link | None = None
        self.lines = Lines(self._lost, lambda: self.on_settled())
        self._at = 0  # index in `addresses` of the server we use

    def start(self) -> None:
        """Join the first server that lets us in, in the order given; else raise ChatError.

        A server that answers and refuses (name taken, say) decides: the
        servers share names. Only when none could be reached does the error
        name them all.
        """
        last = None
        for _ in self.addresses:
            try:
                return self.connect()
            except ChatError as error:
                if error.stay or not error.retryable or len(self.addresses) == 1:
                    raise
                if last is None or not isinstance(error, Unreachable):
                    last = error  # a more telling error than "cannot reach" wins
                self._at = (self._at + 1) % len(self.addresses)
        if isinstance(last, Unreachable):
            raise Unreachable(self.dial.unreachable(", ".join(self.addresses)))
        raise last

    def connect(self) -> None:
        """Open a call and join; raise ChatError if the server cannot be reached or says no."""
        address = self.addresses[self._at]
        channel = self.dial(address)
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            channel.close()
            raise Unreachable(self.dial.unreachable(address)) from None
        link = Link(channel, self.name, self.last_seen_id, self._on_event, self._on_end)
        if not link.answered.wait(JOIN_TIMEOUT_S):
            reason = f"the server did not answer within {JOIN_TIMEOUT_S:.0f} s"  # before cancel
            link.close()
            raise ChatError(f"cannot join: {reason}", True)
        if link.ended.is_set():
            link.close()
            if isinstance(link.error, OutputClosed):
                raise link.error
            stay = code_of(link.error) in STAY_CODES
            raise ChatError(f"cannot join: {describe(link.error)}", dropped(link.error), stay)
        self.link = link
        self.lines.up(link)

    def enter(self, line: str, interactive: bool) -> bool:
        """A line the user pressed Enter on: run it or send it. False for /quit."""
        kind, text = parse(line)
        if kind == "command":
            if text == "/quit":
                return False
            self.renderer.help()
        elif kind == "unknown" and interactive:
            self.renderer.problem(f"unknown command {text.strip()}: try /help")
        else:
            self.say(text)
        return True

    def say(self, text: str) -> None:
        """Send `text`, kept until it comes back; refuse it here if the server would."""
        if not clean_text(text):
            return  # nothing to send
        if reason := refusal(text, self.max_chars):
            return self.renderer.refuse(reason)
        self.lines.add(text)

    def typing(self, started: bool) -> None:
        self.link.typing(pb.TYPING_START if started else pb.TYPING_STOP)

    def recover(self) -> bool:
        """After a DOWN: reconnect if the call dropped (True), else False if it is fine.

        Raises ChatError when the chat is over: the server shut down, refused
        us, or could not be reached again within RECONNECT_GIVE_UP_S; and
        OutputClosed when stdout is gone.
        """
        link = self.link
        if not link.ended.is_set():
            return False  # a DOWN from an earlier call, already dealt with
        link.close()
        if isinstance(link.error, OutputClosed):
            raise link.error
        if self.shutting_down:
            raise ChatError("server shut down")
        if code_of(link.error) == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.lines.drop_oversized()  # our own line was too big: not a reason to stop
        elif not dropped(link.error):
            raise ChatError(f"connection lost: {describe(link.error)}")
        self._reconnect()
        return True

    def flush(self, timeout_s: float) -> None:
        """Before leaving: give lines not yet echoed a moment, while the call is up."""
        if self.link is not None and not self.link.ended.is_set():
            self.lines.wait_settled(timeout_s)

    def close(self) -> None:
        """Leave: half-close, so the server delivers what is queued and ends with OK."""
        self.lines.close()
        if self.link is None:
            return
        self.link.outbox.put(END)
        self.link.ended.wait(CLOSE_TIMEOUT_S)
        self.link.close()
        self.link.thread.join(CLOSE_TIMEOUT_S)

    def _reconnect(self) -> None:
        """Rejoin, on the next address first (this one just failed), with backoff."""
        self.renderer.notice("reconnecting...")
        self.renderer.clear_typing()
        give_up_at = time.monotonic() + RECONNECT_GIVE_UP_S
        wait_s = RECONNECT_FIRST_WAIT_S
        self._at = (self._at + 1) % len(self.addresses)
        while True:
            time.sleep(wait_s)  # backoff, so a restarting server is not hammered
            try:
                return self.connect()
            except ChatError as error:
                if not error.retryable or time.monotonic() + wait_s > give_up_at:
                    raise ChatError(f"gave up reconnecting: {error.message}") from None
                if not error.stay:
                    self._at = (self._at + 1) % len(self.addresses)
            wait_s = min(2 * wait_s, RECONNECT_MAX_WAIT_S)

    # -- on the receive thread ------------------------------------------------

    def _on_event(self, link: Link, event: pb.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "chat_message":
            message = event.chat_message
            if not self._is_new(message.id):
                return  # shown before the reconnect
            if message.username == self.name:
                self.lines.echo(clean_text(message.message))  # replayed ones count too
        elif kind == "system_event":
            code = event.system_event.code
            self.shutting_down |= code == pb.SHUTTING_DOWN
            if code in (pb.RATE_LIMITED, pb.INVALID_EVENT, pb.NOT_SENT, pb.NOT_ONLINE):
                self.lines.refused(code, event.system_event.message)
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

    def _lost(self, notice: str) -> None:
        """On the send thread: a line was given up. A closed stdout is the main thread's."""
        try:
            self.renderer.problem(notice)
        except OutputClosed:
            pass  # the receive thread meets it too, and ends the call

    def _on_end(self, link: Link) -> None:
        self.lines.down(link)
        self.on_down()


# -- the command line -------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--name", envvar="CHAT_NAME", show_envvar=True,
    help="Your name in the chat (asked for if left out).",
)  # fmt: skip
@click.option(
    "--address", envvar="CHAT_ADDRESS", show_envvar=True, default=DEFAULT_ADDRESS,
    show_default=True,
    help="host:port of the chat server; several, comma-separated, to fail over in turn.",
)  # fmt: skip
@click.option("--timestamps", is_flag=True, help="Start each line with the time, HH:MM.")
@click.option(
    "--max-message-chars", type=click.IntRange(min=1), default=DEFAULT_MAX_MESSAGE_CHARS,
    show_default=True, help="Refuse longer lines here (match the server's limit).",
)  # fmt: skip
@click.option("--tls", is_flag=True, help="Use TLS, trusting the system's certificate roots.")
@click.option(
    "--ca-cert", envvar="CHAT_CA_CERT", show_envvar=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Use TLS, trusting this CA or self-signed certificate (PEM; make cert).",
)  # fmt: skip
@click.option(
    "--token", envvar="CHAT_TOKEN", show_envvar=True,
    help="The server's shared token (server.py --token).",
)  # fmt: skip
@click.option(
    "--password", envvar="CHAT_PASSWORD", show_envvar=True, prompt=True,
    prompt_required=False, hide_input=True,
    help="Your account's password (server.py --users); --password alone asks for it.",
)  # fmt: skip
def main(name, address, timestamps, max_message_chars, tls, ca_cert, token, password):
    """Chat with everyone on a grpc-chat server.

    On a terminal, type and press Enter; /help lists commands. With input
    piped in, each line is sent, and the program exits once the last one
    has come back. NO_COLOR switches colours off.
    """
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    try:
        addresses = split_addresses(address)
        if name is None and interactive:
            name = ask_name()
        if name is None:
            raise ChatError("no name: use --name or set CHAT_NAME")
        if not is_valid_name(name):
            raise ChatError(f"invalid name {name!r}: use {NAME_RULE}")
        renderer = Renderer(name, use_colour(sys.stdout), timestamps, show_typing=interactive)
        if token and password:
            raise ChatError("use --token or --password, not both")
        authorization = bearer(token) if token else basic(name, password) if password else ""
        dial = Dialer(tls, ca_cert, authorization)
        chat = Chat(addresses, name, renderer, max_message_chars, dial)
        try:
            Prompt(chat).run() if interactive else run_pipe(chat)
        finally:
            chat.close()
    except (KeyboardInterrupt, EOFError, click.Abort, OutputClosed):
        pass  # Ctrl-C, Ctrl-D, stdout closed: leave quietly


if __name__ == "__main__":
    main()
