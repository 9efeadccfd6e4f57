"""A cap on the long-lived calls that are not chats: reflection and health watches.

Every call on the synchronous server holds a pool thread for as long as it
is open (see server.py). A chat stream takes one of `--max-clients` slots
(session.py); the pool has a few threads more, so that `HealthCheck` and a
new chat's refusal always find one. But gRPC's stock services have
streaming calls too: a reflection client (grpcurl, an IDE) keeps
`ServerReflectionInfo` open while it browses, and a load balancer may keep
`Health/Watch` open for good. Left alone, a handful of idle ones would take
every spare thread, and `HealthCheck` and new chats would fail with
"Concurrent RPC limit exceeded".

`LongCallLimit` is a server interceptor: it counts those calls and refuses
one past LONG_CALLS_MAX with RESOURCE_EXHAUSTED, before its handler runs.
"""

import threading

import grpc

LONG_CALLS_MAX = 8  # open reflection/watch streams at once; the pool keeps more than this spare

# Streaming methods of the stock services: open as long as their client likes.
LONG_METHODS = frozenset(
    {
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Watch",
    }
)


class LongCallLimit(grpc.ServerInterceptor):
    """Refuse a long-lived non-chat call when LONG_CALLS_MAX are already open."""

    def __init__(self, limit: int = LONG_CALLS_MAX):
        self._slots = threading.BoundedSemaphore(limit)  # one per open long call

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in LONG_METHODS:
            return handler
        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._limited(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.unary_stream_rpc_method_handler(
            self._limited(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

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
