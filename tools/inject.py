"""Send a chat message full of terminal escape sequences, and see what arrives.

What it shows: text cleaning (README, "A message's path"). The payload
below would clear the screen of everyone who prints it raw, and its
newline would forge a second line that looks like alice's. The server
cleans every message before storing and sending it (sanitize.py:
`clean_text`): control characters such as ESC are removed, line breaks
become spaces, invisible format characters go. The client cleans again
before printing, because it must not trust the server either.

    python tools/inject.py --name mallory          # send it; print what came back
    python tools/inject.py --show                  # print it raw here: see what it does

This tool prints what it sent and what came back with `repr`, so its own
output is safe; only `--show` prints the payload raw, on your terminal.
"""

import sys
import threading
from pathlib import Path

import click
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # chat_pb2 lives at the top
import chat_pb2 as pb  # noqa: E402
import chat_pb2_grpc  # noqa: E402

# Clear the screen (ESC [2J), cursor home (ESC [H), then a forged line of
# alice's on a line of its own, and a right-to-left override (U+202E).
PAYLOAD = "\x1b[2J\x1b[Hhello\r\n[alice] I owe mallory 100 EUR\u202e"
ECHO_TIMEOUT_S = 20.0


def requests(name: str, done: threading.Event):
    yield pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
    yield pb.ClientEvent(chat_message=pb.ChatMessageEvent(message=PAYLOAD))
    done.wait()  # keep the stream open until the echo is read


def echo_of(call, name: str) -> str:
    """The text of our own message as the server sent it back to us."""
    for event in call:
        kind, message = event.WhichOneof("event"), event.chat_message
        if kind == "chat_message" and message.username == name and not message.replay:
            return message.message
        if kind == "system_event" and event.system_event.code != pb.SYSTEM_INFO:
            raise click.ClickException(f"refused: {event.system_event.message}")
    raise click.ClickException("the stream ended before the echo")


@click.command()
@click.option("--name", default="mallory", show_default=True, help="Who sends it.")
@click.option("--address", envvar="CHAT_ADDRESS", default="localhost:8080", show_default=True)
@click.option("--show", is_flag=True, help="Only print the payload raw here, and exit.")
def main(name, address, show):
    """Send PAYLOAD as --name; print it and its echo, both with repr."""
    if show:
        click.echo(PAYLOAD)
        return
    done = threading.Event()
    with grpc.insecure_channel(address) as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).Chat(
            requests(name, done), timeout=ECHO_TIMEOUT_S
        )
        try:
            echo = echo_of(call, name)
        except grpc.RpcError as error:
            raise click.ClickException(f"{error.code().name}: {error.details()}") from None
        finally:
            done.set()
            call.cancel()
    click.echo(f"sent:      {PAYLOAD!r}")
    click.echo(f"came back: {echo!r}")


if __name__ == "__main__":
    main()
