"""Baseline: the same bare chat on grpc.aio, to measure the threaded design against.

`python -m bench` runs this as server "aio", in the same run as server.py
and the threaded baseline (threaded.py beside this file): it answers "what
would a Python user get by picking asyncio instead?". It does what
threaded.py does, on one event loop instead of threads:

- each Chat stream is an async generator that drains its client's
  asyncio.Queue (unbounded);
- one reader task per stream consumes the client's events;
- everything runs on the loop's one thread, so the registry needs no lock:
  an id is taken and the event queued for everyone in one step, and every
  client sees events in the same order.

No history, rate limit, rooms, validation (beyond a name that is not empty
and not taken), bounded queues or graceful shutdown. It speaks chat.proto
through the project's generated stubs. Run it from the repository's top
level:

    python -m bench.peers.aio --port 50552
"""

import asyncio
import itertools
import time

import click
import grpc

import chat_pb2 as pb
import chat_pb2_grpc

END = object()  # put in a client's queue: its response generator returns


def now_s() -> int:
    return int(time.time())


def joining_name(first: pb.ClientEvent | None) -> str:
    """The name in a first event that is a USER_JOINED; empty if it is anything else."""
    if first is None or first.WhichOneof("event") != "user_event":
        return ""
    return first.user_event.username if first.user_event.type == pb.USER_JOINED else ""


class ChatService(chat_pb2_grpc.ChatServiceServicer):
    """The registry and the servicer in one: only the event loop's thread touches them."""

    def __init__(self):
        self.queues: dict[str, asyncio.Queue] = {}
        self.ids = itertools.count(1)
        self.started_s = time.monotonic()

    def broadcast(self, event: pb.ServerEvent, skip: str = "") -> None:
        for name, outbox in self.queues.items():
            if name != skip:
                outbox.put_nowait(event)

    async def Chat(self, requests, context):
        """The response generator: one coroutine per stream, until the call ends."""
        name = joining_name(await anext(requests, None))
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first event must be USER_JOINED")
        if name in self.queues:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, f"{name} is already online")
        outbox = self.queues[name] = asyncio.Queue()
        joined = pb.UserEvent(type=pb.USER_JOINED, username=name, timestamp=now_s())
        self.broadcast(pb.ServerEvent(user_event=joined))
        reader = asyncio.create_task(self.read(requests, name, outbox))
        try:
            while (event := await outbox.get()) is not END:
                yield event
        finally:  # also when the call is cancelled: the await above raises
            reader.cancel()
            del self.queues[name]
            left = pb.UserEvent(type=pb.USER_LEFT, username=name, timestamp=now_s())
            self.broadcast(pb.ServerEvent(user_event=left))

    async def read(self, requests, name: str, outbox: asyncio.Queue) -> None:
        """The reader task: the client's events, until it half-closes or the call ends."""
        try:
            async for event in requests:
                if event.HasField("chat_message"):
                    message = pb.ChatMessageEvent(
                        message=event.chat_message.message,
                        username=name,
                        timestamp=now_s(),
                        id=f"{next(self.ids)}-0",
                    )
                    self.broadcast(pb.ServerEvent(chat_message=message))
                elif event.HasField("typing_event"):
                    kind = event.typing_event.type
                    typing = pb.TypingEvent(username=name, timestamp=now_s(), type=kind)
                    self.broadcast(pb.ServerEvent(typing_event=typing), skip=name)
        except grpc.RpcError:
            pass  # cancelled or disconnected: the generator is cancelled too
        finally:
            outbox.put_nowait(END)

    async def HealthCheck(self, request, context):
        return pb.HealthCheckResponse(
            status="SERVING",
            active_clients=len(self.queues),
            uptime_seconds=int(time.monotonic() - self.started_s),
        )


def create_server(address: str) -> grpc.aio.Server:
    """An unstarted server on `address` (call it inside the event loop)."""
    server = grpc.aio.server()
    chat_pb2_grpc.add_ChatServiceServicer_to_server(ChatService(), server)
    server.add_insecure_port(address)
    return server


async def serve(address: str) -> None:
    server = create_server(address)
    await server.start()
    click.echo(f"aio baseline on {address}")
    await server.wait_for_termination()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=50552, show_default=True, help="Port to listen on.")
def main(host: str, port: int) -> None:
    """The grpc.aio baseline chat server (join and broadcast only)."""
    asyncio.run(serve(f"{host}:{port}"))


if __name__ == "__main__":
    main()
