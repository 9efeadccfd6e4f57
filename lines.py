"""What the user said that the server has not confirmed yet: kept, paced and resent.

No line is lost (README, "Using the client"): each line the user pressed
Enter on stays in `Lines` until its echo, our own message coming back from
the server, arrives. client.py adds lines (`add`) and says when a call is
joined or has ended (`up`, `down`); the receive thread reports the server's
answers (`echo`, `refused`); the send thread, started here, puts the oldest
line on the current call when it may go.

One line is in flight at a time. The server answers each message of a
stream in order, with its echo or a refusal, so with one in flight a
refusal is always about that line. What each answer does to it:

    echo (or the same text replayed after a rejoin) --> done, the next goes
    RATE_LIMITED  --> sent again after the wait the notice names
    NOT_SENT      --> sent again after NOT_SENT_RETRY_S (that server is cut off)
    INVALID_EVENT, NOT_ONLINE --> dropped; the notice says why (too long, away)
    the call ends --> sent again once the client has rejoined

NOTE: one lock, `_lock` (with its Condition `_changed`), guards every field
of `Lines`; nothing blocks while holding it (`Link.say` only puts on an
unbounded queue, and is called outside it anyway).
"""

import re
import threading
import time
from collections import deque
from dataclasses import dataclass

import chat_pb2 as pb
from sanitize import clean_text

MAX_WIRE_BYTES = 64 * 1024  # the server refuses bigger requests outright (server.py)
DEFAULT_MAX_MESSAGE_CHARS = 2000  # the server's default --max-message-chars
RATE_RETRY_S = 0.5  # resend a rate-limited line after this when the notice names no wait
NOT_SENT_RETRY_S = 1.0  # resend after NOT_SENT: the server is reconnecting to the others
# A line with no answer for this long is given up, with a notice. Longer than
# keepalive needs to find a dead connection (~20 s): a dead call ends first,
# and the line is sent again after the rejoin.
ECHO_TIMEOUT_S = 30.0
_RETRY_IN = re.compile(r"retry in (\d+(?:\.\d+)?) s")


def wire_bytes(text: str) -> int:
    """The size of `text` sent as one ClientEvent, as the server's limit counts it."""
    return pb.ClientEvent(chat_message=pb.ChatMessageEvent(message=text)).ByteSize()


def refusal(text: str, max_chars: int) -> str | None:
    """Why `text` cannot be sent (too long for the server), or None if it can."""
    chars = len(clean_text(text))
    if chars > max_chars:
        return f"not sent: {chars} characters, max {max_chars}"
    if (size := wire_bytes(text)) > MAX_WIRE_BYTES:
        return f"not sent: {size} bytes, max {MAX_WIRE_BYTES}"
    return None


def retry_wait_s(notice: str) -> float:
    """The wait a RATE_LIMITED notice names ("rate limited: retry in 0.8 s")."""
    match = _RETRY_IN.search(notice)
    return float(match[1]) if match else RATE_RETRY_S


@dataclass
class Line:
    text: str  # as typed, what is sent
    want: str  # clean_text(text): what its echo carries


class Lines:
    """The lines not yet confirmed, oldest first, and the send thread that paces them."""

    def __init__(self, on_lost, on_settled=lambda: None):
        self._on_lost = on_lost  # called with a notice when a line is given up
        self._on_settled = on_settled  # called when the last pending line is confirmed
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: deque[Line] = deque()  # [0] is the one sent, or next to go
        self._link = None  # the joined call lines go on; None while there is none
        self._in_flight = False  # _pending[0] was sent on _link; no answer yet
        self._sent_at = 0.0  # monotonic, when _pending[0] was last sent
        self._not_before = 0.0  # monotonic: _pending[0] waits until then (rate limit)
        self._closed = False
        self._thread = threading.Thread(target=self._send_loop, name="send", daemon=True)
        self._thread.start()

    # -- from the main thread ------------------------------------------------

    def add(self, text: str) -> None:
        with self._lock:
            self._pending.append(Line(text, clean_text(text)))
            self._changed.notify()

    def up(self, link) -> None:
        """A call is joined: pending lines go on it, the one in flight again."""
        with self._lock:
            self._link, self._in_flight = link, False
            self._changed.notify()

    def wait_settled(self, timeout_s: float) -> bool:
        """Wait until every line is confirmed (or given up); False on timeout."""
        with self._lock:
            return self._changed.wait_for(lambda: not self._pending, timeout_s)

    def count(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=1.0)

    # -- from the receive thread -----------------------------------------------

    def down(self, link) -> None:
        """`link` ended: nothing goes out until the next `up`."""
        with self._lock:
            if self._link is link:
                self._link, self._in_flight = None, False

    def echo(self, text: str) -> None:
        """Our own message came back (live, or replayed after a rejoin)."""
        with self._lock:
            if not self._pending or self._pending[0].want != text:
                return  # an older line, shown before
            self._pending.popleft()
            self._in_flight, self._not_before = False, 0.0
            settled = not self._pending
            self._changed.notify_all()
        if settled:
            self._on_settled()

    def refused(self, code, notice: str) -> None:
        """The server refused what is in flight: wait and resend it, or drop it."""
        with self._lock:
            if not self._in_flight:
                return  # not about a line (a refusal of the join, say)
            self._in_flight = False
            if code == pb.RATE_LIMITED:
                self._not_before = time.monotonic() + retry_wait_s(notice)
            elif code == pb.NOT_SENT:
                self._not_before = time.monotonic() + NOT_SENT_RETRY_S
            else:  # refused for good; the notice, already shown, says why
                self._pending.popleft()
            settled = not self._pending
            self._changed.notify_all()
        if settled:
            self._on_settled()

    def drop_oversized(self) -> bool:
        """The call ended with RESOURCE_EXHAUSTED: drop the line in flight if it was too big."""
        with self._lock:
            head = self._pending[0] if self._pending else None
            if head is None or wire_bytes(head.text) <= MAX_WIRE_BYTES:
                return False
            self._pending.popleft()
            self._in_flight = False
        self._on_lost(f"not sent, too big for the server: {head.want[:40]}...")
        return True

    # -- the send thread -------------------------------------------------------

    def _send_loop(self) -> None:
        """Put the oldest line on the call when nothing is in flight and it may go."""
        while (sending := self._next()) is not None:
            link, text = sending
            if link is not None:
                link.say(text)
                continue
            self._on_lost(f"no answer within {ECHO_TIMEOUT_S:.0f} s, given up: {text}")
            if self.count() == 0:
                self._on_settled()

    def _next(self):
        """Wait for the next thing to do: (link, text) to send, (None, text) given up."""
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                if self._in_flight and now - self._sent_at >= ECHO_TIMEOUT_S:
                    self._in_flight = False
                    return None, self._pending.popleft().want
                if self._link is not None and self._pending and not self._in_flight:
                    if now >= self._not_before:
                        self._in_flight, self._sent_at = True, now
                        return self._link, self._pending[0].text
                self._changed.wait(self._wait_s(now))
        return None

    def _wait_s(self, now: float) -> float:
        """Under the lock: how long nothing can change but the clock."""
        if self._in_flight:
            return self._sent_at + ECHO_TIMEOUT_S - now
        if self._link is not None and self._pending:
            return self._not_before - now
        return ECHO_TIMEOUT_S  # idle; add(), up() and close() wake us
