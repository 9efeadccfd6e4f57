"""How the client reaches the server: a channel, with TLS and credentials when asked.

client.py calls a `Dialer` for every attempt to join (the first and each
rejoin), and link.py opens its Chat call on the channel it returns. This
is the client's half of auth.py:

- TLS (`--tls`, or `--ca-cert PATH`, which implies it): the channel checks
  the server's certificate against the system's roots, or against the
  one CA (or self-signed certificate, `make cert`) given. Without either,
  the channel is plaintext, as the server is by default.
- Credentials (`--token`, or `--password` for the accounts of `--users`):
  an `authorization` header on every call, added by a client interceptor,
  so the calls themselves (link.py) know nothing of it.

NOTE: a token or password sent without TLS crosses the network in clear.
"""

import base64
from pathlib import Path

import grpc

from link import CHANNEL_OPTIONS


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
