"""The fault hunt's bots' streams and records: one Chat stream, and what a bot writes down.

hunt_bots.py's `Bot` opens a `Session` for each attempt to be online (a
join on one server, then its other rooms, each after its own last id) and
writes down each `Attempt` at sending a line and each message `Received`;
hunt_check.py judges those records afterwards. `burst` is the hunt's other
kind of user: many that arrive together and die together.
"""

import queue
import threading
import time
from dataclasses import dataclass

import grpc
from wire import enter_event, join_event

import chat_pb2 as pb
import chat_pb2_grpc

JOIN_WAIT_S = 10.0  # a join is confirmed (our own USER_JOINED) within this, or tried again
LEAVE_WAIT_S = 5.0  # a half-closed stream ends within this
STREAM_DEADLINE_S = 3600.0  # the deadline on every Chat stream: longer than any hunt


@dataclass
class Attempt:
    """One try at sending a line; `outcome` is "" until the server answers it."""

    text: str
    sent_t: float
    session: int
    room: str
    # "echo", "duplicate" (answered with an earlier try's echo), "not sent", "rate limited",
    # "not online" (a direct message), or "lost" (the stream broke)
    outcome: str = ""
    id: str = ""
    retry_s: float = 0.0
    key: str = ""
    to: str = ""  # a direct message's recipient
    answered_t: float = 0.0


@dataclass
class Received:
    id: str
    username: str
    text: str
    replay: bool
    t: float
    session: int
    room: str


class Session:
    """One Chat stream; its receive thread hands each event to the bot."""

    def __init__(self, bot, address: str, index: int, last_seen: dict[str, str]):
        self.address, self.index = address, index
        self.opened_t, self.ended_t, self.joined_t = bot.clock(), None, None
        self.joined, self.ended = threading.Event(), threading.Event()  # joined: every room
        self.entered: set[str] = set()  # rooms whose USER_JOINED of ours came (bot's lock)
        self.error: grpc.RpcError | None = None
        self.channel = grpc.insecure_channel(address)
        self._outbox: queue.Queue = queue.Queue()
        first, *others = bot.rooms
        self._outbox.put(join_event(bot.name, last_seen.get(first, ""), room=first))
        for room in others:  # each after its own last id: read after the first join's history
            self._outbox.put(enter_event(room, last_seen.get(room, "")))
        stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.call = stub.Chat(iter(self._outbox.get, None), timeout=STREAM_DEADLINE_S)
        threading.Thread(target=self._receive, args=(bot,), daemon=True).start()

    def _receive(self, bot) -> None:
        try:
            for event in self.call:
                bot._on_event(self, event)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended_t = bot.clock()
            self.ended.set()
            bot._on_end()

    def send(self, event: pb.ClientEvent) -> None:
        self._outbox.put(event)

    def close(self, half_close: bool) -> None:
        self._outbox.put(None)  # half-close: the server drains our queue, ends with OK
        if not half_close or not self.ended.wait(LEAVE_WAIT_S):
            self.call.cancel()
        self.channel.close()

    def status(self) -> str:
        if not self.ended.is_set():
            return "open"
        return self.error.code().name if self.error else "OK"


BURST_USERS = 40  # users of one burst: they arrive together and die together
_bursts = iter(range(1_000_000))  # a number per burst, for its users' names


def burst(address: str, hold_s: float) -> None:
    """`BURST_USERS` users join one server at once, stay `hold_s`, then all vanish at once."""
    number, channel = next(_bursts), grpc.insecure_channel(address)  # one connection for all
    stub, calls = chat_pb2_grpc.ChatServiceStub(channel), []
    try:
        for i in range(BURST_USERS):
            outbox: queue.Queue = queue.Queue()
            outbox.put(join_event(f"b{number}x{i}"))
            calls.append(stub.Chat(iter(outbox.get, None), timeout=JOIN_WAIT_S + hold_s + 5))
        time.sleep(min(hold_s, 3.0))  # nothing to wait for: they are there, or refused
    finally:
        for call in calls:
            call.cancel()  # all at once, as when their machine dies
        channel.close()
