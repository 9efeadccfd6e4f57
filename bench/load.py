"""The clients of the benchmark: many chat clients in a few processes, and what they saw.

A `LoadGenerator` runs worker processes, each an asyncio loop holding a
share of the chat clients on grpc.aio, spread over a few channels (one TCP
connection each), and obeying commands sent down a pipe: connect, join,
load, leave, quit. A joined client reads its stream for as long as it
is joined; the senders among the clients write chat messages on a fixed
schedule. This is a tool, not part of the lesson: it uses asyncio and
several processes so that it is not the bottleneck of the measurement.

The server overwrites a message's timestamp and assigns its id, so the text
carries what a receiver needs to measure it:

    <phase tag> <sender> <seq> <scheduled send time, monotonic ns> <padding>

Latency is taken from the *scheduled* send time, not from when the write
happened, so a server that makes senders wait is charged for it. Linux's
monotonic clock is shared by every process on the machine.
"""

import asyncio
import math
import multiprocessing
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

import grpc
import psutil

import chat_pb2 as pb
import chat_pb2_grpc
from bench.report import latency_bucket, merge_reports

CLIENTS_PER_CHANNEL = 32  # streams multiplexed on one channel (one TCP connection)
JOIN_TIMEOUT_S = 60.0  # a client not joined by then counts as refused ("TIMEOUT")
DRAIN_POLL_S = 0.05  # how often a worker checks whether every delivery has arrived
# A private subchannel pool gives every channel its own TCP connection.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Client:
    index: int  # 0..N-1 across all workers
    name: str
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


class Worker:
    """One process's clients; each method is a command from the parent."""

    def __init__(self, progress):
        self.progress = progress  # shared [sent, delivered] for the parent's display
        self.channels: list = []
        self.clients: list[Client] = []
        self.phase: Phase | None = None

    async def connect(self, target: str, names: dict[int, str]) -> int:
        """Open channels; `target` may list several servers ("a,b,c"): clients alternate."""
        targets = target.split(",")
        count = max(len(targets), math.ceil(len(names) / CLIENTS_PER_CHANNEL))
        self.channels = [
            grpc.aio.insecure_channel(targets[k % len(targets)], CHANNEL_OPTIONS)
            for k in range(count)
        ]
        await asyncio.gather(*(channel.channel_ready() for channel in self.channels))
        stubs = [chat_pb2_grpc.ChatServiceStub(channel) for channel in self.channels]
        self.clients = [
            Client(i, name, stubs[k % count]) for k, (i, name) in enumerate(names.items())
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
        """Joined = the client saw its own USER_JOINED. Returns that time or a status name."""
        client.call = client.stub.Chat()
        join = pb.UserEvent(type=pb.USER_JOINED, username=client.name)
        try:
            async with asyncio.timeout(JOIN_TIMEOUT_S):
                await client.call.write(pb.ClientEvent(user_event=join))
                while True:
                    event = await client.call.read()
                    if event is grpc.aio.EOF:
                        return "EOF"
                    user = event.user_event
                    if user.type == pb.USER_JOINED and user.username == client.name:
                        break
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

    async def load(self, tag, senders, total_senders, rate, duration_s, start_ns, drain_s, chars):
        """Senders write `rate` messages/s for `duration_s`; wait for every delivery."""
        count = round(rate * duration_s)
        self.phase = phase = Phase(tag, expected=count * total_senders * len(self.clients))
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
        tag, worst_lag_ns = self.phase.tag, 0
        for seq in range(count):
            due_ns = first_ns + seq * interval_ns
            wait_ns = due_ns - time.monotonic_ns()
            if wait_ns > 0:
                await asyncio.sleep(wait_ns / 1e9)
            worst_lag_ns = max(worst_lag_ns, -wait_ns)
            text = f"{tag} {sender} {seq} {due_ns} "
            event = pb.ChatMessageEvent(message=text.ljust(chars, "x"))
            try:
                await client.call.write(pb.ClientEvent(chat_message=event))
            except (grpc.RpcError, asyncio.InvalidStateError):
                return seq, worst_lag_ns  # the stream ended under us: counted as loss
            self.progress[0] += 1
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


class LoadGenerator:
    """The parent's handle on the worker processes; every call waits for all of them."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")  # no grpc state crosses a fork
        self.progress = [context.Array("q", 2, lock=False) for _ in range(workers)]
        pipes = [context.Pipe() for _ in range(workers)]
        self.conns = [parent for parent, _ in pipes]
        self.processes = [
            context.Process(target=_worker_main, args=(child, progress), daemon=True)
            for (_, child), progress in zip(pipes, self.progress, strict=True)
        ]
        for process in self.processes:
            process.start()
        self.psutil = [psutil.Process(process.pid) for process in self.processes]
        self.clients = 0

    def _each(self, command: str, kwargs_list: list[dict]) -> list:
        for conn, kwargs in zip(self.conns, kwargs_list, strict=True):
            conn.send((command, kwargs))
        results = []
        for conn in self.conns:
            status, result = conn.recv()
            if status == "error":
                raise RuntimeError(f"load worker failed:\n{result}")
            results.append(result)
        return results

    def connect(self, target: str, clients: int, prefix: str) -> int:
        """Open the channels for `clients` clients named prefix0, prefix1, ..."""
        self.clients = clients
        workers = len(self.conns)
        shares = [{} for _ in range(workers)]  # contiguous blocks, so senders spread evenly
        for i in range(clients):
            shares[i * workers // clients][i] = f"{prefix}{i}"
        return sum(self._each("connect", [{"target": target, "names": s} for s in shares]))

    def join(self, go_in_s: float = 0.3) -> dict:
        """Every client joins at the same moment; seconds until the last one is in."""
        go_at_ns = time.monotonic_ns() + int(go_in_s * 1e9)
        reports = self._each("join", [{"go_at_ns": go_at_ns}] * len(self.conns))
        refused = Counter()
        for report in reports:
            refused.update(report["refused"])
        return {
            "join_s": (max(r["done_ns"] for r in reports) - go_at_ns) / 1e9,
            "joined": sum(r["joined"] for r in reports),
            "refused": sum(refused.values()),
            "refused_codes": dict(refused),
        }

    def load(self, tag, senders, rate, duration_s, drain_s, chars, start_in_s=0.3) -> dict:
        """Run one load phase; merge what every worker measured."""
        roles = {index * self.clients // senders: index for index in range(senders)}
        start_ns = time.monotonic_ns() + int(start_in_s * 1e9)
        kwargs = dict(tag=tag, senders=roles, total_senders=senders, rate=rate, chars=chars,
                      duration_s=duration_s, start_ns=start_ns, drain_s=drain_s)  # fmt: skip
        merged = merge_reports(self._each("load", [kwargs] * len(self.conns)), self.clients)
        merged["active_s"] = max(duration_s, (merged.pop("last_ns") - start_ns) / 1e9)
        return merged

    def leave(self) -> None:
        self._each("leave", [{}] * len(self.conns))

    def totals(self) -> tuple[int, int]:
        """(messages sent, deliveries received) so far in this phase, for a progress line."""
        return sum(p[0] for p in self.progress), sum(p[1] for p in self.progress)

    def cpu_s(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.psutil)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("quit", {}))
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
