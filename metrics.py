"""Every Prometheus metric of the server, in one place, and the HTTP endpoint.

`python server.py --metrics-port 9100` serves them at http://host:9100/metrics
(prometheus_client, the standard library for it). The hub, the reader and the
sign-in gate count what happens as it happens (`ACCEPTED.inc()`); what is a
state rather than an event (who is online, queue depths, Redis) is read from
the running server when Prometheus scrapes, by `watch()`.

With `--processes N`, process i (0-based) serves its own metrics on port
P + i: each process is its own scrape target, with nothing shared between
them (see the README's "Operating it").

Counting costs one lock per `inc()`. The hot path (a broadcast) counts once
per event, not once per recipient.
"""

import prometheus_client as prom

# Events: counters, only ever going up.
ACCEPTED = prom.Counter("chat_messages_accepted_total", "Chat messages accepted and stored.")
DIRECT = prom.Counter("chat_direct_messages_total", "Direct messages sent (never stored).")
DELIVERIES = prom.Counter(
    "chat_deliveries_total", "Events put into clients' outgoing queues (one per recipient)."
)
REFUSALS = prom.Counter(
    "chat_refusals_total",
    "Events or calls refused, by reason.",
    ["reason"],  # rate_limit, invalid, not_sent, not_online, auth, full, joins
)
EVICTIONS = prom.Counter("chat_evictions_total", "Clients cut off for falling behind.")
JOINS = prom.Counter("chat_joins_total", "Streams that joined.")

# States: gauges, read at scrape time from the running server.
ONLINE = prom.Gauge("chat_clients_online", "Joined clients on this process.")
QUEUED = prom.Gauge("chat_queue_depth_events", "Events waiting in all outgoing queues.")
QUEUE_MAX = prom.Gauge("chat_queue_depth_max_events", "The longest outgoing queue, in events.")
REDIS_UP = prom.Gauge("chat_redis_up", "1 while Redis answers (always 1 without Redis).")
PENDING = prom.Gauge("chat_redis_pending_writes", "Accepted messages not yet written to Redis.")

# The refusal reasons of SystemCodes (reader.py refuses with a code).
REASON_OF_CODE = {1: "rate_limit", 2: "invalid", 4: "not_online", 5: "not_sent"}


def refused(reason: str) -> None:
    REFUSALS.labels(reason).inc()


def watch(hub) -> None:
    """Read the states from `hub` (and its store) whenever Prometheus scrapes."""
    ONLINE.set_function(hub.count)
    QUEUED.set_function(lambda: sum(hub.queue_depths()))
    QUEUE_MAX.set_function(lambda: max(hub.queue_depths(), default=0))
    REDIS_UP.set_function(lambda: 1 if hub.store.reachable() else 0)
    PENDING.set_function(hub.store.pending_writes)


def serve(port: int, host: str = "") -> None:
    """Serve /metrics on `port` from a daemon thread (the library's own HTTP server)."""
    prom.start_http_server(port, addr=host or "0.0.0.0")
