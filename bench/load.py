"""The clients of the benchmark: many chat clients in one worker process, and what they saw.

The `LoadGenerator` (generator.py) runs worker processes, each an asyncio
loop holding a share of the chat clients on grpc.aio, spread over a few
channels (one TCP connection each), and obeying commands sent down a pipe:
connect, join, load, leave, quit. A joined client reads its stream for as
long as it is joined; the senders among the clients write chat messages on
a fixed schedule. With rooms, client i joins room `room_of(i, rooms)` (and,
with `each` above 1, the next each - 1 rooms too: `rooms_of`), and a
sender's messages, said in its first room, reach that room only. This is a tool, not part of the
lesson: it uses asyncio and several processes so that it is not the
bottleneck of the measurement.

The server overwrites a message's timestamp and assigns its id, so the text
carries what a receiver needs to measure it:

    <phase tag> <sender> <seq> <scheduled send time, monotonic ns> <padding>

Latency is taken from the *scheduled* send time, not from when the write
happened, so a server that makes senders wait is charged for it. Linux's
monotonic clock is shared by every process on the machine.
"""

import asyncio
import math
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import grpc

import chat_pb2 as pb
import chat_pb2_grpc
from bench.report import latency_bucket

JOIN_TIMEOUT_S = 60.0  # a client not joined by then counts as refused ("TIMEOUT")
DRAIN_POLL_S = 0.05  # how often a worker checks whether every delivery has arrived
# A private subchannel pool gives every channel its own TCP connection.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def room_of(index: int, rooms: int) -> str:
    """The room client `index` joins: r0..r{N-1} in turn; one room is the server's default."""
    return f"r{index % rooms}" if rooms > 1 else ""


def rooms_of(index: int, rooms: int, each: int = 1) -> list[str]:
    """The rooms client `index` is in: its own, then the next `each` - 1 in turn."""
    return [room_of(index + k, rooms) for k in range(each)]


@dataclass
class Client:
    index: int  # 0..N-1 across all workers
    name: str
    rooms: list[str]  # the first is joined with the stream, and is where it speaks
    stub: chat_pb2_grpc.ChatServiceStub
    call: grpc.aio.StreamStreamCall | None = None
    reader: asyncio.Task | None = None
    last_id: tuple = ()  # server id of the last bench message received, this phase
    ended: str | None = None  # status code name once the stream is over


@dataclass
class Phase:
    """What this worker's clients received of one load phase."""

    tag: str
    expected: int  # deliveries this worker waits for
    delivered: int = 0
    histogram: Counter = field(default_factory=Counter)
    max_ns: int = 0
    last_ns: int = 0  # when the last delivery arrived
    ids: dict = field(default_factory=dict)  # "sender seq" -> server id
    disordered: set = field(default_factory=set)  # clients whose order differs
    sent_by_room: Counter = field(default_factory=Counter)  # room -> messages this worker sent


class Worker:
    """One process's clients; each method is a command from the parent."""

    def __init__(self, progress):
        self.progress = progress  # shared [sent, delivered, events]: the parent's display
        self.channels: list = []
        self.clients: list[Client] = []
        self.phase: Phase | None = None

    async def connect(
        self, target: str, names: dict[int, str], rooms: int, per_channel: int, each: int = 1
    ):
        """Open channels, `per_channel` clients on each; `target` may list several servers
        ("a,b,c"): channels alternate. Returns how many channels."""
        targets = target.split(",")
        count = max(len(targets), math.ceil(len(names) / per_channel))
        self.channels = [
            grpc.aio.insecure_channel(targets[k % len(targets)], CHANNEL_OPTIONS)
            for k in range(count)
        ]
        await asyncio.gather(*(channel.channel_ready() for channel in self.channels))
        stubs = [chat_pb2_grpc.ChatServiceStub(channel) for channel in self.channels]
        self.clients = [
            Client(i, name, rooms_of(i, rooms, each), stubs[k % count])
            for k, (i, name) in enumerate(names.items())
        ]
        return count

    async def join(self, go_at_ns: int) -> dict:
        """At `go_at_ns`, every client joins at once; report when the last one was in."""
        await asyncio.sleep(max(0, go_at_ns - time.monotonic_ns()) / 1e9)
        results = await asyncio.gather(*(self._join(client) for client in self.clients))
        joined = [r for r in results if isinstance(r, int)]
        refused = Counter(r for r in results if isinstance(r, str))
        return {"joined": len(joined), "refused": dict(refused), "done_ns": max(joined, default=0)}

    async def _join(self, client: Client):
        """Joined = the client saw its own USER_JOINED in each of its rooms (the first with
        the stream, the others asked for after it). Returns that time or a status name."""
        client.call = client.stub.Chat()
        join = pb.UserEvent(type=pb.USER_JOINED, username=client.name, room=client.rooms[0])
        try:
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                await client.call.write(pb.ClientEvent(user_event=join))
                for room in client.rooms[1:]:
                    more = pb.UserEvent(type=pb.USER_JOINED, room=room)
                    await client.call.write(pb.ClientEvent(user_event=more))
                waiting = set(client.rooms)
                while waiting:
                    event = await client.call.read()
                    if event is grpc.aio.EOF:
                        return "EOF"
                    user = event.user_event
                    if user.type == pb.USER_JOINED and user.username == client.name:
                        waiting.discard(user.room if len(client.rooms) > 1 else client.rooms[0])
        except TimeoutError:
            client.call.cancel()
            return "TIMEOUT"
        except grpc.RpcError as error:
            return error.code().name
        client.reader = asyncio.create_task(self._receive(client))
        return time.monotonic_ns()

    async def _receive(self, client: Client) -> None:
        try:
            while (event := await client.call.read()) is not grpc.aio.EOF:
                self.progress[2] += 1  # any event: the parent waits for a join's to settle
                if self.phase and event.WhichOneof("event") == "chat_message":
                    self._on_message(client, event.chat_message, self.phase)
            client.ended = "OK"
        except grpc.RpcError as error:
            client.ended = error.code().name

    def _on_message(self, client: Client, message, phase: Phase) -> None:
        received_ns = time.monotonic_ns()
        fields = message.message.split(" ", 4)
        if message.replay or fields[0] != phase.tag:
            return  # history, or a straggler from an earlier phase
        latency_ns = received_ns - int(fields[3])
        phase.histogram[latency_bucket(latency_ns)] += 1
        phase.max_ns = max(phase.max_ns, latency_ns)
        phase.delivered += 1
        phase.last_ns = received_ns
        self.progress[1] += 1
        # Same order everywhere <=> ids increase on every client and each
        # message carries the same id to every client.
        id_key = tuple(int(part) for part in message.id.split("-"))
        first_id = phase.ids.setdefault(f"{fields[1]} {fields[2]}", message.id)
        if id_key <= client.last_id or first_id != message.id:
            phase.disordered.add(client.index)
        client.last_id = id_key

    async def load(
        self, tag, senders, total_senders, rate, duration_s, start_ns, drain_s, chars, rooms
    ):
        """Senders write `rate` messages/s for `duration_s`; wait for every delivery.

        `senders` maps a client index to its sender number; each sender's
        messages are expected by every client of its (first) room.
        """
        count = round(rate * duration_s)
        in_room = Counter(room_of(index, rooms) for index in senders)
        expected = count * sum(in_room[room] for client in self.clients for room in client.rooms)
        self.phase = phase = Phase(tag, expected=expected)
        for client in self.clients:
            client.last_id = ()
        self.progress[0] = self.progress[1] = 0
        interval_ns = int(1e9 / rate)
        sending = [
            self._send(client, senders[client.index], count, interval_ns,
                       start_ns + interval_ns * senders[client.index] // total_senders, chars)
            for client in self.clients if client.index in senders
        ]  # fmt: skip
        results = await asyncio.gather(*sending)
        deadline_ns = start_ns + int((duration_s + drain_s) * 1e9)  # a worker may send nothing
        while phase.delivered < phase.expected and time.monotonic_ns() < deadline_ns:
            await asyncio.sleep(DRAIN_POLL_S)
        self.phase = None
        return {
            "sent": sum(sent for sent, _ in results),
            "sent_by_room": dict(phase.sent_by_room),
            "lag_ns": max((lag for _, lag in results), default=0),
            "delivered": phase.delivered,
            "histogram": dict(phase.histogram),
            "max_ns": phase.max_ns,
            "last_ns": phase.last_ns,
            "ids": phase.ids,
            "disordered": len(phase.disordered),
            "clients": len(self.clients),
            "ended": dict(Counter(c.ended for c in self.clients if c.ended)),
        }

    async def _send(self, client, sender, count, interval_ns, first_ns, chars):
        """Write `count` messages, one every `interval_ns`; return (sent, worst lag ns)."""
        phase, worst_lag_ns = self.phase, 0
        for seq in range(count):
            due_ns = first_ns + seq * interval_ns
            wait_ns = due_ns - time.monotonic_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
            worst_lag_ns = max(worst_lag_ns, -wait_ns)
            text = f"{phase.tag} {sender} {seq} {due_ns} "
            event = pb.ChatMessageEvent(message=text.ljust(chars, "x"), room=client.rooms[0])
            try:
                await client.call.write(pb.ClientEvent(chat_message=event))
            except (grpc.RpcError, asyncio.InvalidStateError):
                return seq, worst_lag_ns  # the stream ended under us: counted as loss
            self.progress[0] += 1
            phase.sent_by_room[client.rooms[0]] += 1
        return count, worst_lag_ns

    async def leave(self) -> int:
        for client in self.clients:
            if client.call:
                client.call.cancel()
        await asyncio.gather(*(c.reader for c in self.clients if c.reader), return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in self.channels))
        left, self.clients, self.channels = len(self.clients), [], []
        return left


def _worker_main(conn, progress) -> None:
    asyncio.run(_serve(conn, progress))


async def _serve(conn, progress) -> None:
    """The worker's loop: run each command from the parent, send back its result."""
    loop = asyncio.get_running_loop()
    worker = Worker(progress)
    while True:
        command, kwargs = await loop.run_in_executor(None, conn.recv)
        if command == "quit":
            return
        try:
            conn.send(("ok", await getattr(worker, command)(**kwargs)))
        except Exception:
            conn.send(("error", traceback.format_exc()))
