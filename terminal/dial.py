"""How the client reaches the server: which one, and a channel with TLS and credentials.

client.py calls a `Dialer` for every attempt to join (the first and each
rejoin), and terminal/link.py opens its Chat call on the channel it returns.
`Servers` picks the address: with several (`--address a,b`), the first
that lets us in, and after a drop the next one first, with backoff.
The Dialer is the client's half of access/auth.py:

- TLS (`--tls`, or `--ca-cert PATH`, which implies it): the channel checks
  the server's certificate against the system's roots, or against the
  one CA (or self-signed certificate, `make cert`) given. Without either,
  the channel is plaintext, as the server is by default.
- Credentials (`--token`, or `--password` for the accounts of `--users`):
  an `authorization` header on every call, added by a client interceptor,
  so the calls themselves (terminal/link.py) know nothing of it.

NOTE: a token or password sent without TLS crosses the network in clear.
"""

import base64
import random
import time
from pathlib import Path

import grpc

from terminal.link import CHANNEL_OPTIONS, ChatError, Unreachable

RECONNECT_FIRST_WAIT_S = 0.25  # backoff before the first attempt, doubling each time
RECONNECT_MAX_WAIT_S = 5.0  # ... up to this
RECONNECT_GIVE_UP_S = 60.0  # then give up, one error line, exit 1
# A join refused with a time to come back waits that long, plus up to this
# fraction more, at random.
JITTER = 0.5


def bearer(token: str) -> str:
    return f"Bearer {token}"


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


class Authorization(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: <value>` to the metadata of every call on a channel."""

    def __init__(self, value: str):
        self._header = ("authorization", value)

    def _with_header(self, continuation, details, request):
        metadata = [*(details.metadata or ()), self._header]
        return continuation(details._replace(metadata=metadata), request)

    intercept_unary_unary = intercept_unary_stream = _with_header
    intercept_stream_unary = intercept_stream_stream = _with_header


class Dialer:
    """`dial(address)` -> a channel, secure or not, carrying our credentials if any."""

    def __init__(self, tls: bool = False, ca_cert: Path | None = None, authorization: str = ""):
        self.tls = tls or ca_cert is not None
        self._roots = ca_cert.read_bytes() if ca_cert else None  # None: the system's roots
        self._authorization = authorization

    def __call__(self, address: str) -> grpc.Channel:
        if self.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._roots)
            channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        if self._authorization:
            channel = grpc.intercept_channel(channel, Authorization(self._authorization))
        return channel

    def unreachable(self, address: str) -> str:
        """What to say when `address` does not answer: TLS on one side only looks the same."""
        if self.tls:
            return (
                f"cannot reach the chat server at {address} over TLS"
                " (is it up, serving TLS with a certificate --ca-cert or the system trusts?)"
            )
        return f"cannot reach the chat server at {address} (serving TLS? add --ca-cert or --tls)"


def spread(wait_s: float) -> float:
    """A wait a server asked for, plus up to JITTER more: clients refused together
    (a burst of joins) come back spread out, not all at once again."""
    return wait_s * (1 + random.random() * JITTER)


class Servers:
    """The addresses given, in order, and the one in use (main thread only).

    `join(address)` is client.Chat.connect: it joins, or raises ChatError.
    `say(text)` tells the user, in a notice line, where we try and why a try failed.
    """

    def __init__(self, addresses: list[str], dial: Dialer, say=lambda text: None):
        self.addresses, self._dial, self._say = list(addresses), dial, say
        self._at = 0  # index in `addresses` of the server we use

    def first(self, join) -> None:
        """Join the first server that lets us in, in the order given; else raise ChatError.

        A server that answers and refuses (name taken, say) decides: the
        servers share names. A server that says when to come back (joining
        too often) is tried again then; one that is up but cannot take us
        now (UNAVAILABLE) a moment later, after the next; for at most
        RECONNECT_GIVE_UP_S. Only when none could be reached does the error
        name them all.
        """
        give_up_at = time.monotonic() + RECONNECT_GIVE_UP_S
        last, untried = None, len(self.addresses)
        while True:
            try:
                return join(self.addresses[self._at])
            except ChatError as error:
                if error.after_s and time.monotonic() + error.after_s < give_up_at:
                    # A server answered "later": the same one when it said (joining
                    # too often), or the next first (up, but cannot take us now).
                    if not error.stay:
                        self._next()
                    untried = len(self.addresses)  # every address gets its turn again
                    wait_s = spread(error.after_s)
                    self._say(f"{error.message}; trying again in {wait_s:.1f} s")
                    time.sleep(wait_s)
                    continue
                if error.stay or not error.retryable or len(self.addresses) == 1:
                    raise
                if last is None or not isinstance(error, Unreachable):
                    last = error  # a more telling error than "cannot reach" wins
                untried -= 1
                if not untried:
                    break
                self._next()
        if isinstance(last, Unreachable):
            raise Unreachable(self._dial.unreachable(", ".join(self.addresses)))
        raise last

    def again(self, join, why: str) -> None:
        """Rejoin after the call ended (`why`), on the next address first, with backoff."""
        give_up_at = time.monotonic() + RECONNECT_GIVE_UP_S
        wait_s = RECONNECT_FIRST_WAIT_S
        self._next()
        self._say(f"reconnecting... ({why})")
        while True:
            time.sleep(wait_s)  # backoff, so a restarting server is not hammered
            address = self.addresses[self._at]
            self._say(f"trying {address}")
            try:
                return join(address)
            except ChatError as error:
                wait_s = spread(error.after_s) or min(2 * wait_s, RECONNECT_MAX_WAIT_S)
                if not error.retryable or time.monotonic() + wait_s > give_up_at:
                    raise ChatError(f"gave up reconnecting: {error.message}") from None
                if not error.stay:
                    self._next()
                why = f"cannot reach {address}" if isinstance(error, Unreachable) else error.message
                self._say(f"{why}; next try in {wait_s:.1f} s")

    def _next(self) -> None:
        self._at = (self._at + 1) % len(self.addresses)
