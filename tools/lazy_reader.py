"""A client that joins and then never reads: watch the server cut it off.

What it shows: the server's defence against a slow consumer (README, "When
things break"). Every client has a bounded outgoing queue
(member.py: `QUEUE_MAX_EVENTS`, 1024 events). The hub puts each event into
every queue without waiting (hub.py: `Hub._broadcast_locked`); when this
client's queue is full, the hub evicts it (`Hub._evict_locked`): the others
see it leave, and nobody waits for it. If its stream is still stuck
`EVICT_GRACE_S` later, the server cancels the call.

gRPC's flow control is what makes "not reading" reach the server: once our
receive window is full, the server's sends stop, and its generator stops
taking events from the queue. The channel options below shrink that window
to 16 KiB (by default a client buffers megabytes first).

NOTE: a client learns how its call ended only by reading: gRPC hands over
the status after the messages before it. So this one cannot tell that it
was cut off until you press Enter and it reads what was left for it.

    python tools/lazy_reader.py --name lazy
"""

import sys
import threading
from pathlib import Path

import click
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # chat_pb2 lives at the top
import chat_pb2 as pb  # noqa: E402
import chat_pb2_grpc  # noqa: E402

STALLED_CHANNEL_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),  # no window growth: it would follow how fast we (never) read
    ("grpc.http2.lookahead_bytes", 16384),  # receive window: 16 KiB, then the server's sends stop
]


def requests(name: str, done: threading.Event):
    """The join, then silence: the stream stays open, we say nothing more."""
    yield pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
    done.wait()


def read_to_end(call) -> tuple[int, str]:
    """Read at last: how many events were waiting for us, and how the stream ended."""
    count = 0
    try:
        for _ in call:
            count += 1
    except grpc.RpcError as error:
        code, details = error.code().name, error.details()
        return count, code if details in ("", code) else f"{code} ({details})"
    return count, "OK"


@click.command()
@click.option("--name", default="lazy", show_default=True, help="Who never reads.")
@click.option("--address", envvar="CHAT_ADDRESS", default="localhost:8080", show_default=True)
def main(name, address):
    """Join as --name and read nothing until Enter is pressed (or stdin ends)."""
    done = threading.Event()
    with grpc.insecure_channel(address, options=STALLED_CHANNEL_OPTIONS) as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).Chat(requests(name, done))
        click.echo(f"joined as {name}; reading nothing until you press Enter")
        try:
            sys.stdin.readline()
            click.echo("reading now")
            count, ending = read_to_end(call)
        except KeyboardInterrupt:
            return
        finally:
            done.set()
            call.cancel()
    click.echo(f"read {count} events, then the stream ended: {ending}")


if __name__ == "__main__":
    main()
