"""Simulated users for the fault hunt: each joins, chats, types and leaves at random.

A `Bot` behaves as the real client does, over the wire: it lives in the
lobby and one or two more rooms (`ROOMS`) at once, sends one line at a time
into one of them and keeps it until its echo arrives, sending it again
after a `NOT_SENT` or `RATE_LIMITED` notice or after its stream broke (then
on another live server, joining the lobby with its `last_seen_id` there,
then each other room with its own). Each attempt carries its
own text ("u1:7.2" is line 7, third try), so the checker can tell which
try was stored, and every try of a line the line's `key`, so a try whose
echo was lost (the bot drops its stream on purpose now and then) is never
taken twice: the server answers it with the first try's echo. A bot also
sends direct messages (kept until echoed, NOT_ONLINE ends them) and now
and then tries to join as another bot (an impostor, which must be
refused while that bot is online). A bot writes down everything it
receives; `hunt_check.py` judges it afterwards.

Threads: a bot's own thread decides and sends; each stream's receive thread
records what arrives (`_on_event`). `_lock` guards what both touch.
"""

import queue
import re
import threading
import time
import uuid

import grpc
from hunt_session import JOIN_WAIT_S, Attempt, Received, Session
from wire import join_event

import chat_pb2 as pb
import chat_pb2_grpc

JOIN_GIVE_UP_S = 45.0  # no join anywhere for this long: the bot reports it and stops
ANSWER_WAIT_S = 20.0  # a sent line is echoed or refused within this
LOSE_ECHO = 0.05  # a line whose stream the bot breaks right after sending it (a lost echo)
_ONLINE = re.compile(r"in #([a-z0-9_\-]+) \((\d+)\): (.*)")  # who is in a room, told at join
ROOMS = ("lobby", "r1", "r2")  # every bot is in the lobby and in one or both of the others
_RETRY = re.compile(r"retry in ([\d.]+) s")


class Bot:
    """One simulated user; `run` is its thread."""

    def __init__(self, name: str, rng, addresses, clock, stop: threading.Event):
        self.name, self.rng, self.clock, self.stop = name, rng, clock, stop
        self._addresses = addresses  # () -> addresses of the servers up now
        self._lock = threading.Lock()  # guards everything the receive threads write
        self._changed = threading.Condition(self._lock)
        self.sessions: list[Session] = []
        self.received: list[Received] = []
        self.attempts: list[Attempt] = []
        self.first_join_t: float | None = None
        self.rooms = ["lobby", *sorted(rng.sample(ROOMS[1:], rng.randint(1, 2)))]  # for life
        self.view: dict[str, set[str]] = {}  # room -> who is in it, as this bot was told
        self.typing_view: dict[str, set[str]] = {}  # room -> who types there
        self.presence_log: list[tuple] = []  # (t, stream, type, name, room): 1 joined, 2 left
        self._typing_room = ""
        self.problems: list[str] = []  # wrong on the spot (an unknown code, a slow answer)
        self.error: BaseException | None = None
        self.directs_in: list[tuple] = []  # (sender, text, t, stream): direct messages received
        self.impostors: list[tuple] = []  # (t, name, address): our joins as another bot
        self._typing = False
        self._lines = 0

    # -- state, read by the checker once the bot has stopped ---------------------

    @property
    def session(self) -> Session | None:
        live = self.sessions[-1] if self.sessions else None
        return live if live is not None and not live.ended.is_set() else None

    @property
    def online(self) -> bool:
        return self.session is not None and self.session.joined.is_set()

    def last_seen(self) -> dict[str, str]:
        """Room -> the id of the last message received there."""
        with self._lock:
            return {r.room: r.id for r in self.received}

    # -- what arrives (receive threads) -------------------------------------------

    def _on_event(self, session: Session, event: pb.ServerEvent) -> None:
        kind = event.WhichOneof("event")
        with self._lock:
            if session is self.sessions[-1]:
                getattr(self, f"_got_{kind}")(session, getattr(event, kind))
            self._changed.notify_all()

    def _on_end(self) -> None:
        with self._lock:
            self._changed.notify_all()

    def _got_chat_message(self, session: Session, m) -> None:
        if m.to:
            self._got_direct(session, m)
            return
        self.received.append(
            Received(m.id, m.username, m.message, m.replay, self.clock(), session.index, m.room)
        )
        if m.username != self.name:
            return
        for attempt in self.attempts:
            if attempt.text == m.message:
                if attempt.outcome == "not sent":
                    self.problems.append(f"{m.message!r} came back (id {m.id}) after NOT_SENT")
                attempt.outcome, attempt.id = "echo", m.id
            elif m.key and attempt.key == m.key and attempt.outcome in ("", "lost"):
                attempt.outcome, attempt.id = "duplicate", m.id  # answered with the first

    def _got_direct(self, session: Session, m) -> None:
        if m.to == self.name and m.username != self.name:
            self.directs_in.append((m.username, m.message, self.clock(), session.index))
        if m.username != self.name:
            return
        for attempt in self.attempts:
            if attempt.to and m.key and attempt.key == m.key and attempt.outcome in ("", "lost"):
                attempt.outcome, attempt.answered_t = "echo", self.clock()

    def _got_system_event(self, session: Session, e) -> None:
        pending = [a for a in self.attempts if a.outcome == ""]
        if e.code in (pb.NOT_SENT, pb.RATE_LIMITED) and pending:
            pending[-1].outcome = "not sent" if e.code == pb.NOT_SENT else "rate limited"
            retry = _RETRY.search(e.message)
            pending[-1].retry_s = float(retry[1]) if retry else 0.5
        elif e.code == pb.NOT_ONLINE and pending and pending[-1].to:
            pending[-1].outcome = "not online"
        elif e.code == pb.SYSTEM_INFO and (online := _ONLINE.fullmatch(e.message)):
            self.view[online[1]] = set(online[3].split(", ")) if int(online[2]) else set()
        elif e.code not in (pb.SYSTEM_INFO, pb.SHUTTING_DOWN):
            self.problems.append(f"{self.clock():.1f} s: unexpected notice {e.code} {e.message!r}")

    def _got_user_event(self, session: Session, e) -> None:
        self.presence_log.append((self.clock(), session.index, e.type, e.username, e.room))
        view = self.view.get(e.room)
        if e.username == self.name and e.type == pb.USER_JOINED and not session.joined.is_set():
            session.entered.add(e.room)
            if session.entered >= set(self.rooms):
                session.joined_t = self.clock()
                session.joined.set()
                self.first_join_t = self.first_join_t or self.clock()
        elif view is not None and e.type == pb.USER_JOINED:
            view.add(e.username)
        elif view is not None and e.type == pb.USER_LEFT:
            view.discard(e.username)
            self.typing_view.get(e.room, set()).discard(e.username)

    def _got_typing_event(self, session: Session, e) -> None:
        kind = f"typing {e.type}"
        self.presence_log.append((self.clock(), session.index, kind, e.username, e.room))
        if e.type == pb.TYPING_START:
            self.typing_view.setdefault(e.room, set()).add(e.username)
        else:
            self.typing_view.get(e.room, set()).discard(e.username)

    # -- what the bot does (its own thread) -----------------------------------------

    def run(self, final_online: bool) -> None:
        """Act at random until `stop`; then finish the line under way and settle."""
        try:
            while not self.stop.is_set():
                if not self.online:
                    self._join()
                else:
                    self._act(self.rng.random())
                self.stop.wait(self.rng.uniform(0.05, 0.4))
            if self._typing:
                self._type(pb.TYPING_STOP)
            if final_online and not self.online:
                self._join()
            elif not final_online and self.online:
                self._leave()
        except BaseException as error:  # noqa: BLE001 - the checker reports it
            self.error = error

    def _act(self, dice: float) -> None:
        if dice < 0.45:
            self._say()
        elif dice < 0.53:
            self._direct()
        elif dice < 0.55:
            self._impostor()
        elif dice < 0.75:
            self._type(pb.TYPING_STOP if self._typing else pb.TYPING_START)
        elif dice < 0.8:
            self._leave()
            self.stop.wait(self.rng.uniform(0.2, 2.0))

    def _type(self, kind) -> None:
        self._typing = kind == pb.TYPING_START
        if self._typing:
            self._typing_room = self.rng.choice(self.rooms)
        if self.session is not None:
            typing = pb.TypingEvent(type=kind, room=self._typing_room)
            self.session.send(pb.ClientEvent(typing_event=typing))

    def _leave(self) -> None:
        self._typing = False
        if self.session is not None:
            self.session.close(half_close=self.rng.random() < 0.5)

    def _join(self) -> None:
        """Join a live server (resuming after our last id); retry until it works."""
        given_up, refusal = time.monotonic() + JOIN_GIVE_UP_S, "no server up"
        while time.monotonic() < given_up:
            addresses = self._addresses()
            if addresses:
                address, last_seen = self.rng.choice(addresses), self.last_seen()
                with self._lock:  # its events are ours from the first one
                    self.view, self.typing_view = {}, {}
                    session = Session(self, address, len(self.sessions), last_seen)
                    self.sessions.append(session)
                if self._wait(lambda s=session: s.joined.is_set() or s.ended.is_set(), JOIN_WAIT_S):
                    if session.joined.is_set():
                        return
                    refusal = session.error.details() if session.error else "ended"
                else:
                    refusal = f"no join within {JOIN_WAIT_S} s"
                    if address in self._addresses():  # not frozen since we picked it
                        self.problems.append(f"{self.clock():.1f} s: {refusal}")
                    session.close(half_close=False)
            time.sleep(self.rng.uniform(0.2, 1.0))
        raise AssertionError(f"{self.name} could not join for {JOIN_GIVE_UP_S} s: {refusal}")

    def _say(self, to: str = "") -> None:
        """Send one line (to a room, or to one user) and keep it until its echo, as the
        real client does: every try with the line's key."""
        self._lines += 1
        room = "" if to else self.rng.choice(self.rooms)  # every try goes to the same room
        key = uuid.uuid4().hex
        for attempt_no in range(1000):
            if not self.online:
                self._join()
            session = self.session
            text = f"{self.name}:{'dm' if to else ''}{self._lines}.{attempt_no}"
            attempt = Attempt(text, self.clock(), session.index, room, key=key, to=to)
            with self._lock:
                self.attempts.append(attempt)
            message = pb.ChatMessageEvent(message=attempt.text, room=room, key=key, to=to)
            session.send(pb.ClientEvent(chat_message=message))
            if self.rng.random() < LOSE_ECHO:  # the echo is lost: the stream breaks now
                session.close(half_close=False)
            self._wait(lambda a=attempt, s=session: a.outcome or s.ended.is_set(), ANSWER_WAIT_S)
            with self._lock:
                if not attempt.outcome and not session.ended.is_set():
                    self.problems.append(
                        f"{attempt.text!r}: no echo nor refusal in {ANSWER_WAIT_S} s"
                    )
                if not attempt.outcome:
                    attempt.outcome = "lost"  # an echo in the next join's replay still counts
            if attempt.outcome == "not online":
                return  # a direct message to someone gone: given up, as the client does
            if attempt.outcome in ("not sent", "rate limited"):
                time.sleep(min(attempt.retry_s, 2.0))
            elif attempt.outcome == "lost":
                session.close(half_close=False)
                self._join()
            if self._echoed(key):
                return
        raise AssertionError(f"{self.name}: line {self._lines} never got through")

    def _echoed(self, key: str) -> bool:
        with self._lock:
            return any(a.key == key and a.outcome in ("echo", "duplicate") for a in self.attempts)

    def _other_bots(self) -> list[str]:
        """Other bots this one sees online (in the lobby, where every bot is)."""
        with self._lock:
            seen = set(self.view.get("lobby", ())) - {self.name}
        return sorted(name for name in seen if re.fullmatch(r"u\d+", name))  # not a burst

    def _direct(self) -> None:
        """A direct message to another bot this one sees online."""
        if others := self._other_bots():
            self._say(to=self.rng.choice(others))

    def _impostor(self) -> None:
        """Try to join as another bot: refused while it is online; if let in, noted, left."""
        others, addresses = self._other_bots(), self._addresses()
        if not others or not addresses:
            return
        name, address = self.rng.choice(others), self.rng.choice(addresses)
        with grpc.insecure_channel(address) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            outbox: queue.Queue = queue.Queue()
            outbox.put(join_event(name))
            call = stub.Chat(iter(outbox.get, None), timeout=JOIN_WAIT_S)
            t = self.clock()
            try:
                for event in call:
                    user = event.user_event if event.WhichOneof("event") == "user_event" else None
                    if user is not None and user.username == name and user.type == pb.USER_JOINED:
                        with self._lock:
                            self.impostors.append((t, name, address))
                        break
            except grpc.RpcError:
                pass  # refused (ALREADY_EXISTS, UNAVAILABLE) or cut: as it should be
            finally:
                outbox.put(None)
                call.cancel()

    def record(self) -> dict:
        """Everything this bot saw and did, for a failure's record file."""
        with self._lock:
            return {
                "name": self.name,
                "first_join_t": self.first_join_t,
                "streams": [
                    (s.index, s.address, s.opened_t, s.ended_t, s.status(), s.joined_t)
                    for s in self.sessions
                ],
                "attempts": [vars(a) for a in self.attempts],
                "received": [vars(r) for r in self.received],
                "problems": self.problems,
                "presence": self.presence_log,
                "directs_in": self.directs_in,
                "impostors": self.impostors,
            }

    def _wait(self, predicate, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)
