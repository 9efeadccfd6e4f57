"""Baseline: server.py's threaded design and nothing else, to measure server.py against.

`python -m bench` runs this as server "threaded", in the same run as
server.py, so that what the project's features cost shows as a ratio. It
keeps the design server.py teaches and drops every feature:

- grpc.server with a ThreadPoolExecutor: each open Chat stream holds one
  pool thread for its whole life (its response generator), so
  `--max-workers` bounds the number of clients;
- one reader thread per stream consumes the client's events;
- one queue.Queue per client, unbounded, drained by its generator;
- one registry of who is online, behind one lock.

No history, rate limit, rooms, validation (beyond a name that is not
empty and not taken), bounded queues or graceful shutdown. It speaks
chat.proto through the project's generated stubs. Run it from the
repository's top level:

    python -m bench.peers.threaded --port 50551
"""

import itertools
import queue
import threading
import time
from concurrent import futures

import click
import grpc

import chat_pb2 as pb
import chat_pb2_grpc

MAX_WORKERS = 1100  # pool threads: one per open stream, so this many clients (and spare)
END = object()  # put in a client's queue: its response generator returns


def now_s() -> int:
    return int(time.time())


class Registry:
    """Who is online, and the broadcast of every event to their queues.

    NOTE: `lock` guards `queues` and `ids`. An id is taken and the event put
    in every queue under it, so every client sees events in the same order;
    `put` on an unbounded queue never blocks, so the lock is never held long.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.queues: dict[str, queue.Queue] = {}
        self.ids = itertools.count(1)

    def join(self, name: str, outbox: queue.Queue) -> bool:
        """Register `name` and tell everyone, itself included; False if it is taken."""
        joined = pb.UserEvent(type=pb.USER_JOINED, username=name, timestamp=now_s())
        with self.lock:
            if name in self.queues:
                return False
            self.queues[name] = outbox
            self._broadcast_locked(pb.ServerEvent(user_event=joined))
        return True

    def leave(self, name: str) -> None:
        left = pb.UserEvent(type=pb.USER_LEFT, username=name, timestamp=now_s())
        with self.lock:
            del self.queues[name]
            self._broadcast_locked(pb.ServerEvent(user_event=left))

    def say(self, name: str, text: str) -> None:
        """A chat message from `name` to everyone, the sender too, with the next id."""
        with self.lock:
            message = pb.ChatMessageEvent(
                message=text, username=name, timestamp=now_s(), id=f"{next(self.ids)}-0"
            )
            self._broadcast_locked(pb.ServerEvent(chat_message=message))

    def typing(self, name: str, kind: int) -> None:
        """A typing change, to everyone but the typer."""
        event = pb.TypingEvent(username=name, timestamp=now_s(), type=kind)
        with self.lock:
            self._broadcast_locked(pb.ServerEvent(typing_event=event), skip=name)

    def count(self) -> int:
        with self.lock:
            return len(self.queues)

    def _broadcast_locked(self, event: pb.ServerEvent, skip: str = "") -> None:
        for name, outbox in self.queues.items():
            if name != skip:
                outbox.put(event)


def joining_name(first: pb.ClientEvent | None) -> str:
    """The name in a first event that is a USER_JOINED; empty if it is anything else."""
    if first is None or first.WhichOneof("event") != "user_event":
        return ""
    return first.user_event.username if first.user_event.type == pb.USER_JOINED else ""


class ChatService(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry
        self.started_s = time.monotonic()

    def Chat(self, requests, context):
        """The response generator: runs in a pool thread until the call ends."""
        try:
            name = joining_name(next(requests, None))
        except grpc.RpcError:
            return  # the client went away before it joined
        if not name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first event must be USER_JOINED")
        outbox = queue.Queue()
        if not self.registry.join(name, outbox):
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} is already online")
        context.add_callback(lambda: outbox.put(END))  # however the call ends
        reader = threading.Thread(target=self.read, args=(requests, name, outbox), daemon=True)
        reader.start()
        try:
            while (event := outbox.get()) is not END:
                yield event
        finally:
            self.registry.leave(name)

    def read(self, requests, name: str, outbox: queue.Queue) -> None:
        """The reader thread: the client's events, until it half-closes or the call ends."""
        try:
            for event in requests:
                if event.HasField("chat_message"):
                    self.registry.say(name, event.chat_message.message)
                elif event.HasField("typing_event"):
                    self.registry.typing(name, event.typing_event.type)
        except grpc.RpcError:
            pass  # cancelled or disconnected: the callback ends the generator too
        finally:
            outbox.put(END)

    def HealthCheck(self, request, context):
        return pb.HealthCheckResponse(
            status="SERVING",
            active_clients=self.registry.count(),
            uptime_seconds=int(time.monotonic() - self.started_s),
        )


def create_server(address: str, max_workers: int = MAX_WORKERS) -> grpc.Server:
    """An unstarted server on `address`."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatService(Registry()), server)
    server.add_insecure_port(address)
    return server


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=50551, show_default=True, help="Port to listen on.")
@click.option(
    "--max-workers",
    default=MAX_WORKERS,
    show_default=True,
    help="Pool threads: each open stream holds one, so this bounds the clients.",
)
def main(host: str, port: int, max_workers: int) -> None:
    """The threaded baseline chat server (join and broadcast only)."""
    server = create_server(f"{host}:{port}", max_workers)
    server.start()
    click.echo(f"threaded baseline on {host}:{port}, {max_workers} pool threads")
    server.wait_for_termination()


if __name__ == "__main__":
    main()
