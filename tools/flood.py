"""Flood the chat: put --count messages on one stream at once, and count the answers.

What it shows: the server's rate limit (README, "When things break"). A
token bucket per user lets `--burst` messages through at once, then
`--rate` a second; every message over that is neither stored nor sent,
and the sender alone gets a `SystemEvent{RATE_LIMITED}` saying when to
retry (reader.py: `Reader._on_chat_message`, ratelimit.py: `TokenBucket`).

client.py never floods: it sends one line, waits for its echo, and sends a
refused line again later. This tool speaks the wire directly: it joins,
sends every message without waiting, then reads until each one has been
answered, by its echo (accepted) or by a refusal, and prints the tally.
Others joining and leaving meanwhile are printed as client.py prints them.

    python tools/flood.py --name mallory --count 20
    python tools/flood.py --name loud --count 1500 --size 1000 --batch 100

With `--batch N` it sends N at a time and waits for their answers before
the next N: its own echoes then never pile up on the server (whose queue
per client holds 1024 events), while a client that never reads still
gets all of them.
"""

import sys
import threading
from collections import Counter
from pathlib import Path

import click
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # chat_pb2 lives at the top
import chat_pb2 as pb  # noqa: E402
import chat_pb2_grpc  # noqa: E402

DEADLINE_S = 60.0  # the whole flood, answers included; then the call is cancelled


def requests(name: str, count: int, size: int, batch: int, answers):
    """The request stream: the join, the messages (`batch` at a time), then silence."""
    yield pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
    for i in range(1, count + 1):
        if batch and i > 1 and (i - 1) % batch == 0 and not answers.reach(i - 1):
            return  # no answers for DEADLINE_S: give up
        text = f"flood {i} ".ljust(size, ".")
        yield pb.ClientEvent(chat_message=pb.ChatMessageEvent(message=text))
    answers.reach(count + 1)  # returning would half-close the stream: the server would end it


class Answers:
    """How many messages were answered: the reading thread sets it, the sender waits."""

    def __init__(self):
        self._count = 0
        self._changed = threading.Condition()  # guards _count

    def set(self, count: int) -> None:
        with self._changed:
            self._count = count
            self._changed.notify_all()

    def reach(self, count: int) -> bool:
        """Wait until `count` are answered, or the call is over (`set` to a huge number)."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count >= count, DEADLINE_S)


def tally(call, name: str, count: int, answers: Answers) -> tuple[int, Counter, str]:
    """Read until `count` answers: (accepted, refusals by code, the first refusal's text)."""
    accepted, refused, first = 0, Counter(), ""
    for event in call:
        kind = event.WhichOneof("event")
        if kind == "chat_message" and event.chat_message.username == name:
            accepted += not event.chat_message.replay  # history is not an answer
        elif kind == "system_event" and event.system_event.code != pb.SYSTEM_INFO:
            refused[pb.SystemCode.Name(event.system_event.code)] += 1
            first = first or event.system_event.message
        elif kind == "user_event" and event.user_event.username != name:
            verb = "joined" if event.user_event.type == pb.USER_JOINED else "left"
            click.echo(f"* {event.user_event.username} {verb} the chat")
        answers.set(accepted + refused.total())
        if accepted + refused.total() == count:
            break
    return accepted, refused, first


@click.command()
@click.option("--name", default="mallory", show_default=True, help="Who floods.")
@click.option("--address", envvar="CHAT_ADDRESS", default="localhost:8080", show_default=True)
@click.option("--count", default=20, show_default=True, help="Messages to send at once.")
@click.option("--size", default=0, show_default=True, help="Pad each message to this length.")
@click.option("--batch", default=0, show_default=True, help="Wait for answers every N (0: never).")
def main(name, address, count, size, batch):
    """Send --count messages at once on one stream; print how many got through."""
    answers = Answers()
    with grpc.insecure_channel(address) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        call = stub.Chat(requests(name, count, size, batch, answers), timeout=DEADLINE_S)
        try:
            click.echo(f"sent {count} messages without waiting")
            accepted, refused, first = tally(call, name, count, answers)
        except grpc.RpcError as error:
            raise click.ClickException(f"{error.code().name}: {error.details()}") from None
        finally:
            answers.set(count + 1)  # the sender stops waiting
            call.cancel()
    codes = f" ({', '.join(refused)})" if refused else ""
    click.echo(f"accepted {accepted}, refused {refused.total()}{codes}")
    if first:
        click.echo(f"first refusal: {first}")


if __name__ == "__main__":
    main()
