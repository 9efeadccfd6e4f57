"""Caps on calls, checked by server interceptors before any handler runs.

Every call on the synchronous server holds a pool thread while it is open
(see server.py), so two kinds of call must not pile up:

- **Chat streams from one network.** `--max-clients` bounds the chat
  streams of the whole server (session.py). Without a cap per client, one
  host could open that many streams, join with none of them, and lock
  everyone else out until each one's join timeout; and open them again.
  `StreamsPerAddress` counts the open `Chat` streams of each client
  *network* (an IPv4 /24, an IPv6 /64: `network_of`), joined or not, and
  refuses one past `--max-streams-per-address` with RESOURCE_EXHAUSTED.
  Other networks are not affected. A stream that never joins still ends
  at the join timeout, and frees its slot then.
- **Streams that have not joined, from anywhere.** Many networks together
  could still fill `--max-clients` with streams that never join.
  `UnjoinedStreams` lets at most a quarter of `--max-clients` wait for
  their first event at once; past that, a new stream ends the one that has
  waited longest (a joining client sends its join at once), so idle streams
  never hold more than a quarter of the slots, nor keep a newcomer out.
- **Long-lived calls that are not chats.** gRPC's stock services have
  streaming calls too: a reflection client (grpcurl, an IDE) keeps
  `ServerReflectionInfo` open while it browses, a load balancer may keep
  `Health/Watch` open for good. The pool keeps a few threads beyond
  `--max-clients` so that `HealthCheck` and a new chat's refusal always find
  one; left alone, a handful of idle tool streams would take them all.
  `LongCallLimit` refuses one past LONG_CALLS_MAX.

NOTE: "address" is the peer's IP as this server sees it. Clients behind
one NAT or proxy share it, and so do neighbours on one /24: they share the cap.
"""

import ipaddress
import logging
import threading
from collections import Counter, OrderedDict
from urllib.parse import unquote

import grpc

import metrics

log = logging.getLogger("server")

MAX_STREAMS_PER_ADDRESS = 32  # open Chat streams from one client network, joined or not
NETWORK_PREFIX_V4 = 24  # an IPv4 client's network: its /24 ...
NETWORK_PREFIX_V6 = 64  # ... an IPv6 client's: its /64 (what one host is given)
IPV6_LOOPBACK = ipaddress.IPv6Address("::1")
UNJOINED_SHARE = 4  # streams not yet joined hold at most 1/4 of --max-clients, in all
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


def peer_network(context) -> str:
    """The caller's network, what caps and limits count by (see `network_of`)."""
    return network_of(peer_address(context))


def network_of(address: str) -> str:
    """ "ipv4:198.51.100.7" -> "198.51.100.0/24"; "ipv6:[2001:db8::1]" -> "2001:db8::/64".

    One host has one IPv4 address but a whole /64 of IPv6 ones, and a small
    provider hands a customer a /24 at most: counting by these networks, not
    by address, one host cannot take more by changing addresses. An
    IPv4-mapped IPv6 address counts as its IPv4 address, and ::1 as
    127.0.0.1 (both are this host). Anything else (a Unix socket) is its
    own key.
    """
    kind, _, host = address.partition(":")
    host = unquote(host).strip("[]")  # gRPC writes "ipv6:%5B::1%5D"
    try:
        ip = ipaddress.ip_address(host.split("%")[0])  # "fe80::1%eth0": a zone
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip == IPV6_LOOPBACK:  # this host, as 127.0.0.1 is: one network, not two
        ip = ipaddress.IPv4Address("127.0.0.1")
    prefix = NETWORK_PREFIX_V4 if ip.version == 4 else NETWORK_PREFIX_V6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


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
    """Refuse a Chat stream from a network that already has `limit` open."""

    def __init__(self, limit: int = MAX_STREAMS_PER_ADDRESS):
        self._limit = limit
        self._lock = threading.Lock()  # guards _open
        self._open: Counter[str] = Counter()  # network -> open Chat streams

    def open_streams(self, network: str) -> int:
        """How many Chat streams `network` ("127.0.0.0/24", `network_of`) has open now."""
        with self._lock:
            return self._open[network]

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method != CHAT_METHOD:
            return handler
        return rewrapped(handler, self._capped)

    def _capped(self, behaviour):
        """`behaviour` (the Chat response generator) holding its address's slot while it runs."""

        def run(request_iterator, context):
            network = peer_network(context)
            if not self._take(network):
                log.info("refused a stream from %s: %d already open from %s",
                         peer_address(context), self._limit, network)  # fmt: skip
                metrics.refused("per_address")
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many open chats from your network (at most {self._limit})",
                )
            try:
                yield from behaviour(request_iterator, context)
            finally:
                self._give_back(network)

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


class UnjoinedStreams(grpc.ServerInterceptor):
    """At most `limit` Chat streams waiting for their first event; a new one ends the oldest.

    A client that joins sends its first event at once, so the streams that
    wait longest are the ones that never will: ending the oldest (CANCELLED)
    keeps room for newcomers, where refusing the newest would let idle
    streams lock every new client out.
    """

    def __init__(self, limit: int):
        self._limit = limit
        self._lock = threading.Lock()  # guards _waiting
        self._waiting: OrderedDict[object, object] = (
            OrderedDict()
        )  # ticket -> context, oldest first

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method != CHAT_METHOD:
            return handler
        return rewrapped(handler, self._limited)

    def _limited(self, behaviour):
        def run(request_iterator, context):
            ticket, oldest = object(), None
            with self._lock:
                if len(self._waiting) >= self._limit:
                    _, oldest = self._waiting.popitem(last=False)
                self._waiting[ticket] = context
            if oldest is not None:
                log.debug("ended a stream that never joined: %d waiting", self._limit)
                metrics.refused("unjoined")
                oldest.cancel()
            try:
                requests = _after_first(request_iterator, lambda: self._done(ticket))
                yield from behaviour(requests, context)
            finally:
                self._done(ticket)

        return run

    def _done(self, ticket: object) -> None:
        with self._lock:
            self._waiting.pop(ticket, None)


def _after_first(request_iterator, first_came):
    """`request_iterator`, calling `first_came()` once its first event came (or it ended)."""
    try:
        first = next(request_iterator, None)
    finally:
        first_came()
    if first is not None:  # None: the client half-closed without a word
        yield first
        yield from request_iterator


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
