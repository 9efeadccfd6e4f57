"""What the user said that the server has not confirmed yet: kept, paced and resent.

No line is lost (README, "Using the client"): each line the user pressed
Enter on stays in `Lines` until its echo, our own message coming back from
the server, arrives. A line is a message to a room (it names its
room), a `/me` action or a `/msg` to one user (its echo carries `to`), or
a join or a leave of a room (`/join`, `/part`: confirmed by our own
USER_JOINED or USER_LEFT with that room, or by the server's notice that
nothing had to change). They queue with the messages, so `/join #ops`
then `deployed` joins #ops before the line said there is sent.
terminal/commands.py adds lines (`add`); client.py says when a call is joined or
has ended (`up`, `down`); the receive thread reports the server's answers
(`confirm`, `refused`); the send thread, started here, puts the oldest line
on the current call when it may go, and leaves a call that stopped
answering (`on_stuck`: client.py ends it and rejoins, the next address
first).

Every message line carries a `key` (random, made once), sent again with it
on every resend: a server that already took the line (its echo was lost)
answers with the echo of the first copy instead of delivering it twice.

One line is in flight at a time, joins and leaves included. The server
answers each event of a stream in order, with its echo or a refusal (a join
can be rate limited too), so with one in flight a refusal is always about
that line.
What each answer does to it:

    echo (or the same text replayed after a rejoin) --> done, the next goes
    our USER_JOINED / USER_LEFT in the line's room  --> done, the next goes
    RATE_LIMITED  --> sent again after the wait the notice names
    NOT_SENT      --> sent again after NOT_SENT_RETRY_S (that server is cut off);
                      after NOT_SENT_LEAVE_S of them, the call is left
    INVALID_EVENT, NOT_ONLINE --> dropped; the notice says why (too long, away)
    the call ends --> sent again once the client has rejoined its rooms (the
                      joins of the rooms it was in go first: `up(link, first)`)
    no answer for ECHO_TIMEOUT_S --> the call is left, as if it had ended

A line is never given up while it may still be delivered: it stays until
its fate is known, and only on leaving (`close`) are the ones left named,
each as never sent, or as sent without an answer (it may still arrive).


NOTE: one lock, `_lock` (with its Condition `_changed`), guards every field
of `Lines`; nothing blocks while holding it (`Link.send` only puts on an
unbounded queue, and is called outside it anyway).
"""

import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

import chat_pb2 as pb
from sanitize import LOBBY, clean_text

MAX_WIRE_BYTES = 64 * 1024  # the server refuses bigger requests outright (server.py)
DEFAULT_MAX_MESSAGE_CHARS = 2000  # the server's default --max-message-chars
RATE_RETRY_S = 0.5  # resend a rate-limited line after this when the notice names no wait
NOT_SENT_RETRY_S = 1.0  # resend after NOT_SENT: the server is reconnecting to the others
# A server that has answered nothing but NOT_SENT for this long is left for the
# next address, as a dead one is: it is cut off, and another may not be.
NOT_SENT_LEAVE_S = 10.0
# A line with no answer for this long: the call is left and the line sent
# again on the next one (with its key, so never delivered twice). Longer than
# keepalive needs to find a dead connection (~20 s), so a dead call ends first.
ECHO_TIMEOUT_S = 30.0
SILENT = f"no answer for {ECHO_TIMEOUT_S:.0f} s"  # why such a call is left
# Each message line carries a key of this many random bytes (hex on the
# wire), the same on every resend, so a server that took it once (its echo
# was lost) does not deliver it again. 128 bits: two lines never share one.
KEY_BYTES = 16
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?) s")


def message_line(text: str, to: str = "", action: bool = False, room: str = "") -> "Line":
    """A line of text for `room`, or for `to` alone; `action` for /me."""
    message = pb.ChatMessageEvent(
        message=text, to=to, action=action, key=secrets.token_hex(KEY_BYTES),
        room="" if to else room,
    )  # fmt: skip
    return Line(pb.ClientEvent(chat_message=message), echo_key(message), text)


def join_line(room: str, label: str, last_seen_id: str = "") -> "Line":
    """A join of `room` (a valid room name), as the user typed it in `label`."""
    join = pb.UserEvent(type=pb.USER_JOINED, room=room, last_seen_id=last_seen_id)
    return Line(pb.ClientEvent(user_event=join), room_key(pb.USER_JOINED, room), label)


def part_line(room: str, label: str) -> "Line":
    """A leave of `room`, as the user typed it in `label`."""
    part = pb.UserEvent(type=pb.USER_LEFT, room=room)
    return Line(pb.ClientEvent(user_event=part), room_key(pb.USER_LEFT, room), label)


def echo_key(message: pb.ChatMessageEvent) -> tuple:
    """What identifies a message's echo: its recipient or room, whether an action, its text."""
    where = message.to or message.room or LOBBY
    return ("say", bool(message.to), where, message.action, clean_text(message.message))


def room_key(kind, room: str) -> tuple:
    """What confirms a join or a leave: our own USER_JOINED or USER_LEFT in `room`."""
    return ("room", kind, room)


def refusal(line: "Line", max_chars: int) -> str | None:
    """Why `line` cannot be sent (too long for the server), or None if it can."""
    chars = len(clean_text(line.event.chat_message.message))
    if chars > max_chars:
        return f"not sent: {chars} characters, max {max_chars}"
    if (size := line.event.ByteSize()) > MAX_WIRE_BYTES:
        return f"not sent: {size} bytes, max {MAX_WIRE_BYTES}"
    return None


def retry_in(notice: str) -> float | None:
    """The wait a refusal names ("rate limited: retry in 0.8 s"), or None if it names none."""
    match = _RETRY_IN.search(notice)
    return float(match[1]) if match else None


def retry_wait_s(notice: str) -> float:
    """The wait a RATE_LIMITED notice names, or RATE_RETRY_S."""
    wait_s = retry_in(notice)
    return RATE_RETRY_S if wait_s is None else wait_s


@dataclass
class Line:
    event: pb.ClientEvent  # what is sent
    want: tuple  # what confirms it: echo_key() of its echo, or room_key()
    label: str  # as the user typed it, for notices
    maybe: bool = False  # a copy went on a call that ended before answering it


class Lines:
    """The lines not yet confirmed, oldest first, and the send thread that paces them."""

    def __init__(self, on_lost, on_stuck=lambda link, why: None):
        self._on_lost = on_lost  # called with a notice when a line is dropped as too big
        self._on_stuck = on_stuck  # called with (call, why) to leave a call that stopped
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: deque[Line] = deque()  # [0] is the one sent, or next to go
        self._link = None  # the joined call lines go on; None while there is none
        self._in_flight = False  # _pending[0] was sent on _link; no answer yet
        self._sent_at = 0.0  # monotonic, when _pending[0] was last sent
        self._not_before = 0.0  # monotonic: _pending[0] waits until then (rate limit)
        self._not_sent_since: float | None = None  # monotonic: the first of a run of NOT_SENT
        self._leave: str | None = None  # why to leave _link (the send thread does it)
        self._closed = False
        self._failed = 0  # lines refused for good, here or by the server
        self._thread = threading.Thread(target=self._send_loop, name="send", daemon=True)
        self._thread.start()

    # -- from the main thread ------------------------------------------------

    def add(self, line: Line) -> None:
        with self._lock:
            self._pending.append(line)
            self._changed.notify()

    def up(self, link, first=()) -> None:
        """A call is joined: `first` (rejoins) then the pending lines go on it, in order.

        A pending line that `first` repeats (the join of a room, from an earlier
        rejoin or typed by the user) is dropped: `first` joins that room now.
        """
        with self._lock:
            again = {line.want for line in first}
            kept = [line for line in self._pending if line.want not in again]
            self._pending = deque([*first, *kept])
            self._link, self._in_flight = link, False
            self._not_sent_since = self._leave = None
            self._changed.notify()

    def wait_settled(self, timeout_s: float) -> bool:
        """Wait until every line is confirmed (or refused); False on timeout."""
        return self.wait_fewer(1, timeout_s)

    def wait_fewer(self, than: int, timeout_s: float) -> bool:
        """Wait until fewer than `than` lines are pending; False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: len(self._pending) < than, timeout_s)

    def fail(self) -> None:
        """A line was refused for good before it got here (too long, bad arguments)."""
        with self._lock:
            self._failed += 1

    def failed(self) -> int:
        """How many lines were refused for good: the exit status is 1 if any."""
        with self._lock:
            return self._failed

    def count(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        """Send nothing more (answers still count)."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=1.0)

    def left(self) -> list[tuple[str, bool]]:
        """The lines not confirmed: (as typed, whether it may still be delivered)."""
        with self._lock:
            in_flight = self._in_flight
            return [(line.label, line.maybe or (in_flight and n == 0))
                    for n, line in enumerate(self._pending)]  # fmt: skip

    # -- from the receive thread -----------------------------------------------

    def down(self, link) -> None:
        """`link` ended: nothing goes out until the next `up`."""
        with self._lock:
            if self._link is link:
                self._unlink()

    def confirm(self, want: tuple, key: str = "") -> None:
        """Our own message came back (live, or replayed after a rejoin), or a join or leave.

        `key` is the echo's own key, if the server sent it back: it must be
        the line's too (the same text typed twice is two lines).
        """
        with self._lock:
            if not self._pending:
                return
            head = self._pending[0]
            if head.want != want or (key and key != head.event.chat_message.key):
                return  # an older line, shown before
            self._pending.popleft()
            self._in_flight, self._not_before, self._not_sent_since = False, 0.0, None
            self._changed.notify_all()

    def refused(self, code, notice: str) -> "Line | None":
        """The server refused what is in flight: wait and resend it, or drop it (returned)."""
        with self._lock:
            if not self._in_flight:
                return None  # not about a line (a refusal of the join, say)
            self._in_flight = False
            if code == pb.RATE_LIMITED:
                self._not_before = time.monotonic() + retry_wait_s(notice)
            elif code == pb.NOT_SENT:
                now = time.monotonic()
                self._not_before = now + NOT_SENT_RETRY_S
                if self._not_sent_since is None:
                    self._not_sent_since = now
                elif now - self._not_sent_since >= NOT_SENT_LEAVE_S:
                    self._leave = f"the server could not send for {NOT_SENT_LEAVE_S:.0f} s"
            else:  # refused for good; the notice, already shown, says why
                self._failed += 1
                self._changed.notify_all()
                return self._pending.popleft()
            self._changed.notify_all()
        return None

    def drop_oversized(self) -> bool:
        """The call ended with RESOURCE_EXHAUSTED: drop the line in flight if it was too big."""
        with self._lock:
            head = self._pending[0] if self._pending else None
            if head is None or head.event.ByteSize() <= MAX_WIRE_BYTES:
                return False
            self._pending.popleft()
            self._in_flight = False
            self._failed += 1
        self._on_lost(f"not sent, too big for the server: {clean_text(head.label)[:40]}...")
        return True

    # -- the send thread -------------------------------------------------------

    def _send_loop(self) -> None:
        """Put the oldest line on the call when nothing is in flight and it may go."""
        while (step := self._next()) is not None:
            link, line, why = step
            if line is not None:
                link.send(line.event)
            else:
                self._on_stuck(link, why)

    def _next(self):
        """Wait for the next thing to do: (call, line, None) to send, (call, None, why) to leave."""
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                silent = self._in_flight and now - self._sent_at >= ECHO_TIMEOUT_S
                if self._link is not None and (self._leave or silent):
                    leaving, why = self._link, self._leave or SILENT
                    self._unlink()
                    return leaving, None, why
                if self._link is not None and self._pending and not self._in_flight:
                    if now >= self._not_before:
                        self._in_flight, self._sent_at = True, now
                        return self._link, self._pending[0], None
                self._changed.wait(self._wait_s(now))
        return None

    def _unlink(self) -> None:
        """Under the lock: no call to send on; a line in flight may have been taken."""
        if self._in_flight:
            self._pending[0].maybe = True
        self._link, self._in_flight, self._leave = None, False, None

    def _wait_s(self, now: float) -> float:
        """Under the lock: how long nothing can change but the clock."""
        if self._in_flight:
            return self._sent_at + ECHO_TIMEOUT_S - now
        if self._link is not None and self._pending:
            return self._not_before - now
        return ECHO_TIMEOUT_S  # idle; add(), up(), refused() and close() wake us
