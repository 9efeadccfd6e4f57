"""A cap on open chat streams per client address, so one host cannot take every slot.

`--max-clients` bounds the chat streams of the whole server (session.py).
Without a cap per address, one host could open that many streams, join
with none of them, and lock everyone else out until each one's join
timeout; and open them again. `StreamsPerAddress` is a server interceptor
(the same shape as longcalls.py): it counts the open `Chat` streams of
each client address, joined or not, and refuses one past
`--max-streams-per-address` with RESOURCE_EXHAUSTED before its handler
runs. Other addresses are not affected. A stream that never joins still
ends at the join timeout, and frees its slot then.

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


def peer_address(context) -> str:
    """The caller's address without its port: "ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1"."""
    return context.peer().rpartition(":")[0]


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
        return grpc.stream_stream_rpc_method_handler(
            self._capped(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

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
