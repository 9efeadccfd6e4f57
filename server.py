"""The chat server: the gRPC servicer, its factory, and `python server.py`.

How a synchronous grpcio server runs a bidirectional stream, which is what
this file relies on:

1. `grpc.server(ThreadPoolExecutor(n))` runs every call on a pool thread.
   A streaming call keeps its thread for as long as the stream is open, so
   the pool size bounds how many chat clients can be connected at once.
   NOTE: that is why `--max-clients` sizes the pool, and why we refuse the
   client past it ourselves instead of letting it wait for a free thread.
2. For `Chat`, the handler is a generator. What it yields *is* the response
   stream: each yielded `ServerEvent` is sent to the client before the
   generator is resumed. Returning ends the call with status OK;
   `context.abort(code, details)` ends it with an error status.
3. The request stream is an iterator, `request_iterator`. Reading it blocks
   until the client sends something. The pool thread is busy yielding, so
   each stream gets a second, plain thread, the *reader*, that consumes the
   iterator and hands each event to the hub. The iterator ends when the
   client half-closes, and raises once the call is cancelled.
4. The two threads of one stream meet only in the client's `queue.Queue`:
   the hub puts events in (from any thread), the generator takes them out.
5. However a call ends (client hangs up, network gone, server stops), gRPC
   runs the callbacks registered with `context.add_callback`. Ours removes
   the client from the hub and wakes its generator with a sentinel, so no
   thread or queue outlives its client, and nothing polls.
6. The hub's registry is shared by every stream's threads, hence its lock
   (see hub.py); everything per-client is owned by that client's threads.

Message flow: client -> reader thread -> clean, validate, rate limit ->
hub.post (id, store, fan-out to every queue) -> each generator -> clients.
"""

import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

# Before grpc loads, or its core logs every failed TLS handshake (a client
# that disagrees about TLS, a port scanner) at INFO; GRPC_VERBOSITY=INFO shows them.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import chat_pb2 as pb
import chat_pb2_grpc
import launch
import session
from access import auth
from access.caps import UNJOINED_SHARE, LongCallLimit, StreamsPerAddress, UnjoinedStreams
from access.tls import TLSFilesError, tls_credentials
from access.undecodable import UndecodableRequests
from access.users import UsersFileError, add_user_command
from hub import Hub
from timers import Timers

log = logging.getLogger("server")

# Pool threads beyond --max-clients: up to LONG_CALLS_MAX reflection/watch
# streams (access/caps.py), and the rest for health checks and refusals.
UNARY_HEADROOM_THREADS = 16
SHUTDOWN_GRACE_S = 2.0  # after SIGTERM, streams get this long to drain before cancel
MAX_INBOUND_BYTES = 64 * 1024  # bigger requests are refused by gRPC itself
# grpc.health.v1 answers for the server ("") and the chat service alike.
HEALTH_SERVICES = ("", pb.DESCRIPTOR.services_by_name["ChatService"].full_name)
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

# Transport options, all in one place. Keepalive finds peers that vanished
# without closing their connection (docs/PROTOCOL.md: Leave): the server pings an idle
# connection every KEEPALIVE_TIME_MS and drops it if no ack comes back
# within KEEPALIVE_TIMEOUT_MS, so a dead peer is gone within ~20 s.
# NOTE: grpc core (1.5x+) waits for a keepalive ack for `ping_timeout_ms`,
# default one minute, not `keepalive_timeout_ms`: set both, or a dead peer
# lingers for 70 s.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 10_000
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_INBOUND_BYTES),
    ("grpc.so_reuseport", 0),  # a second server on a busy port fails instead of sharing it
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),  # ping even with no call open
    ("grpc.http2.max_pings_without_data", 0),  # 0 = no limit on pings between data
    # Accept client pings as often as every 5 s (clients ping every 10 s).
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
]


@dataclass
class ChatServer:
    """A built, not yet started, server and the parts a caller may need."""

    grpc_server: grpc.Server
    servicer: session.ChatServicer
    health: health.HealthServicer
    port: int
    per_address: StreamsPerAddress  # open chat streams by client address
    _serving: bool = True  # what health says now; guarded by _health_lock
    _health_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        hub = self.servicer.hub
        hub.store.watch(self._follow_health)  # NOT_SERVING while messages cannot be taken
        hub.store.start(hub.deliver, hub.echo)  # Redis: the writer and the stream follower
        hub.cluster.start(hub)  # Redis: presence and live events of other servers
        self.grpc_server.start()

    def _follow_health(self) -> None:
        """Any thread: the store's `accepting()` may have changed; say it to load balancers."""
        with self._health_lock:  # one thread at a time: the last answer is the one set
            accepting = self.servicer.hub.store.accepting()
            if accepting == self._serving:
                return
            self._serving = accepting
            status = health_pb2.HealthCheckResponse.SERVING if accepting else NOT_SERVING
            for service in HEALTH_SERVICES:
                self.health.set(service, status)  # ignored once shutting down
        log.warning("health: %s", "SERVING" if accepting else "NOT_SERVING (cut off from Redis)")

    def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Tell every client, refuse new calls, drain, flush the store."""
        self.health.enter_graceful_shutdown()
        stopped = self.grpc_server.stop(grace_s)  # refuses new calls at once
        self.servicer.shut_down()  # SHUTTING_DOWN to all, refuse joins, each stream drains
        # NOTE: only after the notice: leaving the cluster talks to Redis,
        # which may hang, and the grace above is already running.
        self.servicer.hub.cluster.close()  # our names are freed, our users leave everywhere
        stopped.wait(grace_s + 1)
        self.servicer.close()  # timers, and the store's pending writes


def create_server(
    settings: session.Settings,
    store,
    address: str = "[::]:0",
    timers: Timers | None = None,
    options: list[tuple[str, int]] | None = None,
    cluster=None,
    gate=None,
    tls: grpc.ServerCredentials | None = None,
) -> ChatServer:
    """Build a chat server on `address` (port 0 picks a free port); do not start it.

    `options` override SERVER_OPTIONS key by key (tests shorten keepalive).
    `cluster` shares names and live events with other servers (cluster/presence.py).
    `gate` says who may call (access/auth.py; default: anyone); with `tls`
    (`tls_credentials`) the port speaks TLS only.
    """
    gate = gate or auth.Anyone()
    per_address = StreamsPerAddress(settings.max_streams_per_address)
    timers = timers or Timers()
    hub = Hub(
        store,
        timers,
        cluster,
        typing_silence_s=settings.typing_silence_s,
        evict_grace_s=settings.evict_grace_s,
    )
    servicer = session.ChatServicer(hub, timers, settings, gate)
    pool_threads = settings.max_clients + UNARY_HEADROOM_THREADS
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=pool_threads, thread_name_prefix="grpc-pool"),
        options=list({**dict(SERVER_OPTIONS), **dict(options or [])}.items()),
        maximum_concurrent_rpcs=pool_threads,  # beyond: RESOURCE_EXHAUSTED, never a wait
        interceptors=[  # in this order, each before the handler runs
            UndecodableRequests(timers),  # bad bytes: no traceback, a few lines a second
            LongCallLimit(),  # reflection and watches cannot take every spare thread
            per_address,  # nor one network every chat slot
            gate,  # credentials
            # nor streams that never join: at most a quarter of the slots
            UnjoinedStreams(max(1, settings.max_clients // UNJOINED_SHARE)),
        ],
    )
    chat_pb2_grpc.add_ChatServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    for service in HEALTH_SERVICES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            pb.DESCRIPTOR.services_by_name["ChatService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_secure_port(address, tls) if tls else server.add_insecure_port(address)
    return ChatServer(server, servicer, health_servicer, port, per_address)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="[::]", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, help="TCP port to listen on.")
@click.option(
    "--redis-url",
    envvar="REDIS_URL",
    help="Keep history in this Redis (redis://host:port/db, or through Sentinel: "
    "redis+sentinel://host:26379,host2:26379/mymaster/db). Default: in memory.",
)
@click.option(
    "--redis-replicas", default=0, show_default=True,
    help="Deliver a message only once this many Redis replicas hold it (WAIT): "
    "a failover then loses no message anyone saw.",
)  # fmt: skip
@click.option("--history", default=50, show_default=True, help="Messages replayed on join.")
@click.option("--history-max", default=10_000, show_default=True, help="Messages kept.")
@click.option("--rate", default=1.0, show_default=True, help="Messages per second per client.")
@click.option("--burst", default=5, show_default=True, help="Messages a client may send at once.")
@click.option(
    "--join-rate", default=2.0, show_default=True, help="Joins per second per client network."
)
@click.option(
    "--join-burst", default=20, show_default=True, help="Joins a client network may make at once."
)
@click.option("--no-rate-limit", is_flag=True, help="Switch rate limits off (benchmarks).")
@click.option("--max-message-chars", default=2000, show_default=True, help="Longest message.")
@click.option("--max-clients", default=512, show_default=True, help="Concurrent chat streams.")
@click.option("--max-rooms", default=20, show_default=True, help="Rooms one stream may be in.")
@click.option(
    "--max-streams-per-address", default=32, show_default=True,
    help="Open chat streams one client network (IPv4 /24, IPv6 /64) may hold, joined or not.",
)  # fmt: skip
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve TLS only, with this certificate chain (PEM; see make cert). Needs --tls-key.",
)  # fmt: skip
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The private key of --tls-cert (PEM).",
)  # fmt: skip
@click.option(
    "--token", envvar="CHAT_TOKEN", show_envvar=True,
    help="Every chat call must carry this shared token (client.py --token).",
)  # fmt: skip
@click.option(
    "--users", type=click.Path(dir_okay=False, path_type=Path),
    help="Accounts: only names in this file may join, each with its password (see add-user).",
)  # fmt: skip
@click.option(
    "--processes", default=1, show_default=True,
    help="Server processes sharing the port, one chat through --redis-url (past one core).",
)  # fmt: skip
@click.option(
    "--metrics-port", type=int,
    help="Serve Prometheus metrics on this port (with --processes N: one endpoint for all).",
)  # fmt: skip
@click.option(
    "--room-idle-days", default=7.0, show_default=True,
    help="With Redis: a room with no member and no message this long is removed, history too.",
)  # fmt: skip
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.pass_context
def main(ctx, host, port, redis_url, redis_replicas, history, history_max, rate, burst,
         join_rate, join_burst, no_rate_limit, max_message_chars, max_clients, max_rooms,
         max_streams_per_address, tls_cert, tls_key, token, users, processes, metrics_port,
         room_idle_days, log_level):  # fmt: skip
    """Run the chat server until SIGINT or SIGTERM (or run a COMMAND instead)."""
    if ctx.invoked_subcommand is not None:
        return  # add-user: the server's options are not for it
    pid = " [%(process)d]" if processes > 1 else ""  # which process said it
    logging.basicConfig(
        level=log_level.upper(), format=f"%(asctime)s{pid} %(levelname)s %(message)s"
    )
    settings = session.Settings(
        history=history,
        max_message_chars=max_message_chars,
        rate=None if no_rate_limit else rate,
        burst=burst,
        join_rate=join_rate,
        join_burst=join_burst,
        max_clients=max_clients,
        max_rooms=max_rooms,
        max_streams_per_address=max_streams_per_address,
    )
    launch.check_flags(settings, history_max, redis_url, redis_replicas, processes, room_idle_days)
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        gate = auth.from_flags(token, users)
        tls = tls_credentials(tls_cert, tls_key) if tls_cert else None
    except ValueError as error:  # --token and --users
        raise click.UsageError(str(error)) from None
    except (UsersFileError, TLSFilesError, OSError) as error:
        raise click.ClickException(str(error)) from None
    plan = launch.Plan(
        settings,
        host,
        port,
        redis_url,
        history_max,
        gate,
        tls,
        metrics_port,
        redis_replicas,
        room_idle_days,
    )
    if processes > 1:
        launch.supervise(plan, create_server, processes)
    else:
        launch.serve(plan, create_server)


main.add_command(add_user_command)

if __name__ == "__main__":
    main()
