"""Caps on calls, checked by server interceptors before any handler runs.

Every call on the synchronous server holds a pool thread while it is open
(see server.py), so two kinds of call must not pile up:

- **Chat streams from one address.** `--max-clients` bounds the chat
  streams of the whole server (session.py). Without a cap per address, one
  host could open that many streams, join with none of them, and lock
  everyone else out until each one's join timeout; and open them again.
  `StreamsPerAddress` counts the open `Chat` streams of each client address,
  joined or not, and refuses one past `--max-streams-per-address` with
  RESOURCE_EXHAUSTED. Other addresses are not affected. A stream that never
  joins still ends at the join timeout, and frees its slot then.
- **Long-lived calls that are not chats.** gRPC's stock services have
  streaming calls too: a reflection client (grpcurl, an IDE) keeps
  `ServerReflectionInfo` open while it browses, a load balancer may keep
  `Health/Watch` open for good. The pool keeps a few threads beyond
  `--max-clients` so that `HealthCheck` and a new chat's refusal always find
  one; left alone, a handful of idle tool streams would take them all.
  `LongCallLimit` refuses one past LONG_CALLS_MAX.

NOTE: "address" is the peer's IP as this server sees it. Clients behind
one NAT or proxy share it, and so share the cap.
"""

import logging
import threading
from collections import Counter

import grpc

import metrics

log = logging.getLogger("server")

MAX_STREAMS_PER_ADDRESS = 32  # open Chat streams from one client address, joined or not
CHAT_METHOD = "/chat.ChatService/Chat"
LONG_CALLS_MAX = 8  # open reflection/watch streams at once; the pool keeps more than this spare

# Streaming methods of the stock services: open as long as their client likes.
LONG_METHODS = frozenset(
    {
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Watch",
    }
)


def peer_address(context) -> str:
    """The caller's address without its port: "ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1"."""
    return context.peer().rpartition(":")[0]


def rewrapped(handler, wrap, request_deserializer=None):
    """The same handler, its behaviour (whichever of the four kinds) passed through `wrap`.

    `request_deserializer`, if given, replaces the handler's.
    """
    shapes = ("unary", "stream")
    kind = f"{shapes[handler.request_streaming]}_{shapes[handler.response_streaming]}"
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        wrap(getattr(handler, kind)),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class StreamsPerAddress(grpc.ServerInterceptor):
    """Refuse a Chat stream from an address that already has `limit` open."""

    def __init__(self, limit: int = MAX_STREAMS_PER_ADDRESS):
        self._limit = limit
        self._lock = threading.Lock()  # guards _open
        self._open: Counter[str] = Counter()  # address -> open Chat streams

    def open_streams(self, address: str) -> int:
        """How many Chat streams `address` ("ipv4:127.0.0.1") has open now."""
        with self._lock:
            return self._open[address]

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method != CHAT_METHOD:
            return handler
        return rewrapped(handler, self._capped)

    def _capped(self, behaviour):
        """`behaviour` (the Chat response generator) holding its address's slot while it runs."""

        def run(request_iterator, context):
            address = peer_address(context)
            if not self._take(address):
                log.info("refused a stream from %s: %d already open", address, self._limit)
                metrics.refused("per_address")
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many open chats from your address (at most {self._limit})",
                )
            try:
                yield from behaviour(request_iterator, context)
            finally:
                self._give_back(address)

        return run

    def _take(self, address: str) -> bool:
        with self._lock:
            if self._open[address] >= self._limit:
                return False
            self._open[address] += 1
            return True

    def _give_back(self, address: str) -> None:
        with self._lock:
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]  # memory stays bounded by the addresses connected now


class LongCallLimit(grpc.ServerInterceptor):
    """Refuse a long-lived non-chat call when LONG_CALLS_MAX are already open."""

    def __init__(self, limit: int = LONG_CALLS_MAX):
        self._slots = threading.BoundedSemaphore(limit)  # one per open long call

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in LONG_METHODS:
            return handler
        return rewrapped(handler, self._limited)

    def _limited(self, behaviour):
        """`behaviour` (a response generator) holding a slot while it runs."""

        def run(request, context):
            if not self._slots.acquire(blocking=False):
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "too many open streams of this kind"
                )
            try:
                yield from behaviour(request, context)
            finally:
                self._slots.release()

        return run
