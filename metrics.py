"""Every Prometheus metric of the server, in one place, and the HTTP endpoint.

`python server.py --metrics-port 9100` serves them at http://host:9100/metrics
(prometheus_client, the standard library for it). The hub, the reader and the
sign-in gate count what happens as it happens (`ACCEPTED.inc()`); what is a
state rather than an event (who is online, queue depths, Redis) is read from
the running server by `watch()`.

With `--processes N`, one endpoint answers for all N: the library's
multiprocess mode. Each child keeps its values in memory-mapped files in one
directory (`share_between_processes`), and the parent serves the sum of
those files (`serve_shared`): counters and the histogram add up, gauges add
up over the live processes (or take their max or min, said per gauge). The
parent cleans the directory at start and drops a dead child's gauges
(`process_dead`); its counters stay counted.

Counting costs one lock per `inc()`. The hot path (a broadcast) counts once
per event, not once per recipient; the delivery-time histogram is the one
per-recipient cost (one `observe`, at the hand-off).
"""

import importlib
import os
import shutil
import sys
import tempfile
import threading
import time

import prometheus_client as prom
from prometheus_client import multiprocess, values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the library's own name for the directory
SAMPLE_EVERY_S = 1.0  # with --processes: how often each child writes its gauges

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
# From a message's acceptance (with Redis: its entry's time in the stream) to
# its hand-off to each receiver's gRPC stream; queueing behind a slow reader included.
DELIVERY_SECONDS = prom.Histogram(
    "chat_delivery_seconds",
    "Time from a message's acceptance to its hand-off to each receiver's stream.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# States: gauges. multiprocess_mode says how --processes combines them (live*: dead ones out).
ONLINE = prom.Gauge(
    "chat_clients_online", "Joined clients on this server.", multiprocess_mode="livesum"
)
QUEUED = prom.Gauge(
    "chat_queue_depth_events", "Events waiting in all outgoing queues.", multiprocess_mode="livesum"
)
QUEUE_MAX = prom.Gauge(
    "chat_queue_depth_max_events", "The longest outgoing queue, in events.",
    multiprocess_mode="livemax",
)  # fmt: skip
REDIS_UP = prom.Gauge(
    "chat_redis_up", "1 while Redis answers (always 1 without Redis).", multiprocess_mode="livemin"
)
PENDING = prom.Gauge(
    "chat_redis_pending_writes", "Accepted messages not yet written to Redis.",
    multiprocess_mode="livesum",
)  # fmt: skip
# The refusal reasons of SystemCodes (reader.py refuses with a code).
REASON_OF_CODE = {1: "rate_limit", 2: "invalid", 4: "not_online", 5: "not_sent"}


def refused(reason: str) -> None:
    REFUSALS.labels(reason).inc()


def watch(hub) -> None:
    """Read the states from `hub` (and its store): at each scrape, or each second if shared."""
    states = {
        ONLINE: hub.count,
        QUEUED: lambda: sum(hub.queue_depths()),
        QUEUE_MAX: lambda: max(hub.queue_depths(), default=0),
        REDIS_UP: lambda: 1 if hub.store.reachable() else 0,
        PENDING: hub.store.pending_writes,
    }
    if MULTIPROC_ENV not in os.environ:
        for gauge, read in states.items():
            gauge.set_function(read)
        return
    # NOTE: the parent serves, and it cannot call into a child: each child writes
    # its states to its files, and a scrape sees them at most SAMPLE_EVERY_S old.

    def sample() -> None:
        while True:
            for gauge, read in states.items():
                gauge.set(read())
            time.sleep(SAMPLE_EVERY_S)  # for the process's life: a daemon thread

    threading.Thread(target=sample, name="metrics-sampler", daemon=True).start()


def serve(port: int, host: str = "") -> None:
    """Serve /metrics on `port` from a daemon thread (the library's own HTTP server)."""
    prom.start_http_server(port, addr=host or "0.0.0.0")


# -- --processes: one endpoint for all ---------------------------------------------


def shared_directory() -> tuple[str, bool]:
    """The parent's: the directory the children share, emptied; (path, made here).

    PROMETHEUS_MULTIPROC_DIR if the operator set it (its old files removed:
    they are another run's), else a fresh temporary directory.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if not given:
        return tempfile.mkdtemp(prefix="chat-metrics-"), True
    os.makedirs(given, exist_ok=True)
    for name in os.listdir(given):
        if name.endswith(".db"):
            os.remove(os.path.join(given, name))
    return given, False


def serve_shared(port: int, host: str, directory: str) -> None:
    """The parent's: serve /metrics on `port`, the sum of every child's files."""
    registry = prom.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    prom.start_http_server(port, addr=host or "0.0.0.0", registry=registry)


def share_between_processes(directory: str) -> None:
    """A child's, right after the fork: keep every metric in files in `directory`.

    The library picks how values are kept when it is imported, from
    PROMETHEUS_MULTIPROC_DIR. This child inherited the library, and this
    module's metrics, from the parent, where the variable was not set. So:
    set it, let the library pick again, and define the metrics again (this
    module reloaded; every caller reads `metrics.X` when it counts).
    """
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.get_value_class()
    for metric in _ours():
        prom.REGISTRY.unregister(metric)
    importlib.reload(sys.modules[__name__])


def _ours() -> list:
    """Every metric this module defines (a new one needs no list kept by hand)."""
    return [v for v in globals().values() if isinstance(v, prom.metrics.MetricWrapperBase)]


def process_dead(pid: int, directory: str) -> None:
    """The parent's: a child died; its gauges no longer count (its counters do)."""
    multiprocess.mark_process_dead(pid, directory)


def remove_directory(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
