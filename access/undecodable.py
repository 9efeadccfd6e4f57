"""Requests that cannot be decoded (invalid UTF-8 in a string field, bad bytes).

gRPC decodes each request with the handler's `request_deserializer` before
any of our code sees it. When that raises, grpcio logs the exception with
its traceback (logger `grpc._common`, "Exception deserializing message!")
and ends the call with INTERNAL: every such request would put a traceback
in the log, and a client sending them in a loop would flood it.

`UndecodableRequests` is a server interceptor that wraps every handler's
deserializer: a request that fails to decode is answered the same way
(gRPC ends the call with INTERNAL, "Exception deserializing request!", when
the deserializer gives back None), but grpcio has nothing to log, and we
log it ourselves like every other refusal: a few lines a second, then one
line saying how many more there were (`Summarised`, which session.py also
uses for the streams it refuses before their join: a bad first event in a
loop cannot flood the log either).
"""

import logging
import threading
import time

import grpc

import metrics
from access.caps import rewrapped

log = logging.getLogger("server")

LINES_PER_S = 3  # lines a second of one kind of refusal; beyond, one summary


class Summarised:
    """Log lines of one kind, LINES_PER_S a second at most; past that, one line says how
    many more there were, when the second ends (a timer), so a flood leaves a few lines."""

    def __init__(self, timers, more: str, clock=time.monotonic):
        self._timers = timers  # flushes a window's summary when it ends
        self._more = more  # the summary, with %d for the count: "refused %d more ..."
        self._clock = clock
        self._lock = threading.Lock()  # guards the three fields below (any pool thread)
        self._window_start = -1.0
        self._logged = 0  # lines logged in the current one-second window
        self._suppressed = 0  # lines not logged in the current window

    def info(self, message: str, *args) -> None:
        with self._lock:
            now = self._clock()
            if now - self._window_start >= 1.0:
                self._flush_locked()
                self._window_start, self._logged = now, 0
            if self._logged >= LINES_PER_S:
                if not self._suppressed:  # the first one past the limit: summary at window end
                    self._timers.schedule(self._window_start + 1.0 - now, self.flush)
                self._suppressed += 1
                return
            self._logged += 1
        log.info(message, *args)

    def flush(self) -> None:
        """Timer thread: log how many lines this window did not."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._suppressed:
            log.info(self._more, self._suppressed)
            self._suppressed = 0


class UndecodableRequests(grpc.ServerInterceptor):
    """Decode failures refused quietly (no traceback), logged a few a second at most."""

    def __init__(self, timers, clock=time.monotonic):
        self._lines = Summarised(timers, "refused %d more requests that cannot be decoded", clock)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        decode = self._guarded(handler.request_deserializer, method)
        return rewrapped(handler, lambda behaviour: behaviour, request_deserializer=decode)

    def _guarded(self, decode, method: str):
        def guarded(data: bytes):
            try:
                return decode(data)
            except Exception as error:  # DecodeError, UnicodeDecodeError: whatever it is
                metrics.refused("undecodable")
                self._lines.info("refused a request to %s: it cannot be decoded (%s)", method,
                                 type(error).__name__)  # fmt: skip
                return None  # gRPC ends the call with INTERNAL, logging nothing

        return guarded
