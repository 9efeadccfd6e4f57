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
    python tools/inject.py --wrap                  # forge a line by padding a row instead

`--wrap` sends no escape at all: `ok`, padding up to the end of an
80-column row, then `[alice] I owe mallory 100 EUR, pay him`. A terminal
left to wrap it would start its next row with the forged header. Padded
with spaces, the server folds the run to one space (every run of blanks is
one); padded with dots, it cannot, and the client wraps the body itself,
indented under the text (terminal/render.py: `wrap`).

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
# After "[mallory] " (10 columns), 70 more end an 80-column row: the forged
# header would start the next one.
FORGED = "[alice] I owe mallory 100 EUR, pay him"
WRAP_PAYLOADS = ("ok" + " " * 68 + FORGED, "ok" + "." * 67 + " " + FORGED)
ECHO_TIMEOUT_S = 20.0


def requests(name: str, payloads, done: threading.Event):
    yield pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
    for payload in payloads:
        yield pb.ClientEvent(chat_message=pb.ChatMessageEvent(message=payload))
    done.wait()  # keep the stream open until the echoes are read


def echoes_of(call, name: str, count: int) -> list[str]:
    """The texts of our own `count` messages as the server sent them back to us."""
    echoes = []
    for event in call:
        kind, message = event.WhichOneof("event"), event.chat_message
        if kind == "chat_message" and message.username == name and not message.replay:
            echoes.append(message.message)
            if len(echoes) == count:
                return echoes
        if kind == "system_event" and event.system_event.code != pb.SYSTEM_INFO:
            raise click.ClickException(f"refused: {event.system_event.message}")
    raise click.ClickException("the stream ended before the echo")


@click.command()
@click.option("--name", default="mallory", show_default=True, help="Who sends it.")
@click.option("--address", envvar="CHAT_ADDRESS", default="localhost:8080", show_default=True)
@click.option("--show", is_flag=True, help="Only print the payload raw here, and exit.")
@click.option("--wrap", is_flag=True, help="Send the row-padding forgeries instead.")
def main(name, address, show, wrap):
    """Send PAYLOAD (or WRAP_PAYLOADS) as --name; print each and its echo, with repr."""
    payloads = WRAP_PAYLOADS if wrap else (PAYLOAD,)
    if show:
        click.echo("\n".join(payloads))
        return
    done = threading.Event()
    with grpc.insecure_channel(address) as channel:
        call = chat_pb2_grpc.ChatServiceStub(channel).Chat(
            requests(name, payloads, done), timeout=ECHO_TIMEOUT_S
        )
        try:
            echoes = echoes_of(call, name, len(payloads))
        except grpc.RpcError as error:
            raise click.ClickException(f"{error.code().name}: {error.details()}") from None
        finally:
            done.set()
            call.cancel()
    for payload, echo in zip(payloads, echoes, strict=True):
        click.echo(f"sent:      {payload!r}")
        click.echo(f"came back: {echo!r}")


if __name__ == "__main__":
    main()
