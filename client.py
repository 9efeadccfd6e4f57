"""The chat client: `python client.py --name alice`, one user's session.

This file is the session: joining, rejoining after a drop (on another
server if there are several, in every room we were in), what each event
means to us, and the command line. terminal/rooms.py keeps our rooms: which
we are in, the current one, and the last id seen in each. terminal/link.py is one Chat call and its
receive thread; terminal/commands.py runs what the user types; terminal/lines.py keeps what
the user said until the server confirms it; terminal/render.py is how events look;
terminal/roster.py who is in our room; terminal/prompt.py (terminal) and terminal/piped.py (piped
input) read lines.

    main thread:    input --> Commands.enter --> Lines --> send thread --> Link.outbox --> server
    receive thread: server --> Chat._on_event --> Renderer.show --> terminal
                                             \\--> Lines.confirm / Lines.refused, Roster.see
                    at the end: Link.error, Link.ended, Lines.down, Chat.on_down()

The receive thread only drains and reports; the main thread decides what an
ending means (leave, report an error, or reconnect). NOTE: the threads
share only thread-safe things: `Lines` (its own lock), the queue
`Link.outbox`, the Events `Link.answered` and `Link.ended` (`Link.error` and
`Link.shutting_down` are written before `ended` is set), the Renderer, whose
lock serialises output, the Roster and `Chat.rooms` (each its own lock);
only the main thread replaces `Chat.link`.

Reconnect: a call that drops, or whose server says it is shutting down
(SHUTTING_DOWN: a restart, a rolling deploy), is reopened with backoff, on
the next address given, saying where it tries and why the last try failed,
joining the current room with the id of the last message shown there, then
each other room we were in with its own last id (lines queued before the
ones still pending), so the server sends exactly what was missed in each;
ids already shown are skipped, so nothing appears twice. Ids are compared
within a room only: each room has its own order (and, with Redis, its own
history).
"""

import os
import re
import sys
import time
from pathlib import Path

# Before grpc loads, or its core logs every failed TLS handshake (a client
# that disagrees about TLS, a port scanner) at INFO; GRPC_VERBOSITY=INFO shows them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click
import grpc

import chat_pb2 as pb
from sanitize import LOBBY, NAME_RULE, ROOM_RULE, clean_text, is_valid_name, room_name
from terminal.dial import Dialer, Servers, basic, bearer
from terminal.lines import DEFAULT_MAX_MESSAGE_CHARS, Lines, echo_key, join_line, room_key
from terminal.link import (
    END,
    ChatError,
    Link,
    Unreachable,
    code_of,
    describe,
    dropped,
    join_refused,
    split_addresses,
)
from terminal.piped import run_pipe
from terminal.prompt import Prompt
from terminal.render import Renderer, ask_name, use_colour
from terminal.rooms import RoomState
from terminal.roster import Roster

DEFAULT_ADDRESS = "localhost:8080"
CONNECT_TIMEOUT_S = 3.0  # no connection by then: "cannot reach" (or the next address)
JOIN_TIMEOUT_S = 5.0  # connected, but the server has not confirmed our join
CLOSE_TIMEOUT_S = 1.0  # on leaving, wait this long for the server to end the call
# On leaving (/quit, Ctrl-D, end of piped input), lines not yet confirmed are
# waited for until none has been confirmed for this long: lines paced by the
# rate limit go one a second or so. A rejoin meanwhile does not restart the
# clock (a server that only answers NOT_SENT would keep us forever).
LEAVE_QUIET_S = 10.0
LEAVE_LOOK_S = 0.25  # meanwhile, look this often whether the call dropped
LEAVE_SAY_S = 1.0  # say that we wait only once it has lasted this long
# The server's notice that a join or a leave had nothing to do: it confirms that line.
NOTHING_TO_DO = re.compile(r"(already|not) in #([a-z0-9_\-]+)")


class Chat:
    """One user's session across calls: the current Link, what was shown, reconnects."""

    def __init__(
        self, addresses, name, renderer, max_chars=DEFAULT_MAX_MESSAGE_CHARS, dial=None,
        rooms=(LOBBY,),
    ):  # fmt: skip
        self.name, self.renderer = name, renderer
        self.dial = dial or Dialer()  # address -> channel: TLS and credentials (terminal/dial.py)
        self.max_chars = max_chars
        self.on_down = lambda: None  # called on the receive thread when a call ends
        self.rooms = RoomState(rooms)  # joined rooms, the current one, last id seen in each
        self.roster = Roster(name, self.rooms.current)  # who else is in it, for Tab
        self.link: Link | None = None
        self.lines = Lines(self._lost, self._leave)
        # which server we use, and the next; where we try and why a try failed, told
        self.servers = Servers(addresses, self.dial, renderer.notice)

    def start(self) -> None:
        """Join the first server that lets us in (dial.Servers); else raise ChatError."""
        self.servers.first(self.connect)

    def connect(self, address: str) -> None:
        """Open a call and join; raise ChatError if the server cannot be reached or says no."""
        channel = self.dial(address)
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            channel.close()
            raise Unreachable(self.dial.unreachable(address)) from None
        rooms = self.rooms
        rooms.new_call()
        joined = rooms.joined()
        first = rooms.current or (joined[0] if joined else LOBBY)  # a stream starts in one
        link = Link(channel, self.name, first, rooms.last_seen(first), self._on_event, self._on_end)
        if not link.answered.wait(JOIN_TIMEOUT_S):
            reason = f"the server did not answer within {JOIN_TIMEOUT_S:.0f} s"  # before cancel
            link.close()
            raise ChatError(f"cannot join: {reason}", True)
        if link.ended.is_set():
            link.close()
            raise join_refused(link.error)
        self.link = link
        others = [r for r in joined if r != first]
        self.lines.up(link, [join_line(r, f"/join #{r}", rooms.last_seen(r)) for r in others])

    @property
    def room(self) -> str:
        """The current room: where what we type goes ("" when we are in none)."""
        return self.rooms.current

    def typing(self, started: bool) -> None:
        """Tell the current room we type (or stopped), once the server has us in it."""
        room = self.rooms.current
        if room and self.rooms.confirmed(room):
            self.link.typing(pb.TYPING_START if started else pb.TYPING_STOP, room)

    def recover(self) -> bool:
        """After a DOWN: reconnect if the call dropped (True), else False if it is fine.

        Raises ChatError when the chat is over: the server refused us, or no
        server could be reached again within dial.RECONNECT_GIVE_UP_S. A
        server shutting down is not the end: another (or the same one,
        restarted) takes us.
        """
        link = self.link
        if not link.ended.is_set():
            return False  # a DOWN from an earlier call, already dealt with
        link.close()
        why = describe(link.error)
        if link.shutting_down:
            why = "the server is shutting down"
        elif link.left_because:
            why = link.left_because  # we ended it: it stopped answering
        elif code_of(link.error) == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self.lines.drop_oversized()  # our own line was too big: not a reason to stop
        elif not dropped(link.error):
            raise ChatError(f"connection lost: {why}")
        self.renderer.clear_typing()
        self.servers.again(self.connect, why)
        return True

    def flush(self) -> None:
        """Before leaving: wait for the lines not yet confirmed, saying so.

        Rejoins if the call drops meanwhile; stops once every line is
        confirmed or refused, or none was for LEAVE_QUIET_S. Raises ChatError
        as `recover` does.
        """
        if self.lines.wait_settled(LEAVE_SAY_S) or not (left := self.lines.count()):
            return  # the usual case: the last echoes were on their way
        some = f"{left} line{'s' if left > 1 else ''} not yet confirmed"
        self.renderer.notice(f"waiting for {some} (up to {LEAVE_QUIET_S:.0f} s without progress)")
        quiet_until = time.monotonic() + LEAVE_QUIET_S
        while left and time.monotonic() < quiet_until:
            if self.link.ended.is_set():
                self.recover()
            elif self.lines.wait_fewer(left, LEAVE_LOOK_S):
                quiet_until = time.monotonic() + LEAVE_QUIET_S  # one went: wait on
            left = self.lines.count()

    def close(self) -> int:
        """Leave: send nothing more, half-close (the server delivers what is queued
        and ends with OK), then name each line that did not go. Returns their number."""
        self.lines.close()
        if self.link is not None:
            self.link.outbox.put(END)
            self.link.ended.wait(CLOSE_TIMEOUT_S)
            self.link.close()
            self.link.thread.join(CLOSE_TIMEOUT_S)
        left = self.lines.left()
        for label, maybe in left:
            fate = "sent, not confirmed (it may still arrive)" if maybe else "not sent"
            self.renderer.refuse(f"{fate}: {clean_text(label)}")
        return len(left)

    # -- on the receive thread ------------------------------------------------

    def _on_event(self, link: Link, event: pb.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "chat_message":
            message = event.chat_message
            if not self._is_new(message):
                return  # shown before the reconnect
            if message.username == self.name:
                self.lines.confirm(echo_key(message), message.key)  # replayed ones count too
        elif kind == "user_event":
            user = event.user_event
            if user.username == self.name and user.type in (pb.USER_JOINED, pb.USER_LEFT):
                self._confirmed(user.type, user.room or LOBBY)
        elif kind == "system_event":
            code = event.system_event.code
            if code == pb.SHUTTING_DOWN:  # the call ends once drained; then we move
                link.shutting_down = True
                self.lines.down(link)  # nothing more on it: what it takes now may be lost
            elif code in (pb.RATE_LIMITED, pb.INVALID_EVENT, pb.NOT_SENT, pb.NOT_ONLINE):
                dropped = self.lines.refused(code, event.system_event.message)
                if dropped is not None and dropped.event.user_event.type == pb.USER_JOINED:
                    self._not_joined(dropped.event.user_event.room)
            elif code == pb.SYSTEM_INFO and (
                nothing := NOTHING_TO_DO.fullmatch(event.system_event.message)
            ):
                kind = pb.USER_JOINED if nothing[1] == "already" else pb.USER_LEFT
                self.lines.confirm(room_key(kind, nothing[2]))
        self.roster.see(event)
        self.renderer.show(event)

    def _confirmed(self, kind, room: str) -> None:
        """The server says we joined or left `room`."""
        self.rooms.entered(room, kind == pb.USER_JOINED)
        current = self.rooms.current
        if room == current or kind == pb.USER_LEFT:  # the room on screen is the current one
            self.renderer.enter_room(current)
        self.lines.confirm(room_key(kind, room))

    def _not_joined(self, room: str) -> None:
        """Our join of `room` was refused for good (too many rooms): it is not ours after all."""
        self.rooms.part(room)  # the current room again is the one before it
        self.renderer.enter_room(self.rooms.current)

    def _is_new(self, message: pb.ChatMessageEvent) -> bool:
        """False for an id at or before the last one shown in its room; else remember it."""
        return self.rooms.is_new(message.room or LOBBY, message.id)

    def _lost(self, notice: str) -> None:
        """On the send thread: a line was dropped (too big for the server)."""
        self.renderer.problem(notice)

    def _leave(self, link: Link, why: str) -> None:
        """On the send thread: `link` stopped answering (Lines): end it, and rejoin."""
        link.abandon(why)

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
@click.option(
    "--room", "rooms", envvar="CHAT_ROOM", show_envvar=True, multiple=True,
    default=(LOBBY,), show_default=True,
    help="A room to start in (#rust or rust); repeat it for several, the first is current.",
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
def main(name, address, rooms, timestamps, max_message_chars, tls, ca_cert, token, password):
    """Chat with everyone on a grpc-chat server.

    On a terminal, type and press Enter; /help lists commands. With input
    piped in, each line is sent, and the program exits once the last one
    has come back: 0 if every line went, 1 if any was refused for good.
    NO_COLOR switches colours off.
    """
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    chat = None
    try:
        addresses = split_addresses(address)
        if name is None and interactive:
            name = ask_name()
        if name is None:
            raise ChatError("no name: use --name or set CHAT_NAME")
        if not is_valid_name(name):
            raise ChatError(f"invalid name {name!r}: use {NAME_RULE}")
        for room in rooms:
            if room_name(room) is None:
                raise ChatError(f"invalid room {room!r}: use {ROOM_RULE}")
        colour = use_colour(sys.stdout)
        renderer = Renderer(name, colour, timestamps, show_typing=interactive, bell=interactive)
        if token and password:
            raise ChatError("use --token or --password, not both")
        authorization = bearer(token) if token else basic(name, password) if password else ""
        dial = Dialer(tls, ca_cert, authorization)
        start_rooms = [room_name(room) for room in rooms]
        chat = Chat(addresses, name, renderer, max_message_chars, dial, start_rooms)
        try:
            Prompt(chat).run() if interactive else run_pipe(chat)
        finally:
            chat.close()  # names each line that did not go
    except (KeyboardInterrupt, EOFError, click.Abort):
        pass  # Ctrl-C, Ctrl-D: leave quietly
    if chat is not None and (chat.lines.failed() or chat.lines.count()):
        sys.exit(1)  # a line was refused for good, or did not go: each was named


if __name__ == "__main__":
    main()
