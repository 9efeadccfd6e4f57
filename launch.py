"""From flags to a running server: one process, or N processes on one port.

server.py parses the flags into a `Plan`; `serve(plan)` is the life of one
server process: open the store (Redis or memory), join the other servers,
build the gRPC server with `server.create_server`, wait for SIGINT or
SIGTERM, then stop cleanly.

`--processes N` is how the synchronous server gets past one core. grpc's
own recipe for Python: every process binds the same port with
SO_REUSEPORT, and the kernel spreads new connections over them. NOTE: gRPC's
threads do not survive a fork, so the parent (`supervise`) creates no gRPC
object at all: it forks N children, and each builds its server after the
fork. The children are one chat through Redis, as separate servers would
be (see the README's "More than one server"); that is why `--processes`
needs `--redis-url`. The parent restarts a child that dies, and on SIGTERM
passes it on to every child, each of which stops as one server does.
"""

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import dataclass

import click

import metrics
import session
from access.auth import FAILURE_BURST, FAILURES_RATE
from sanitize import without_secrets
from store import MemoryStore, StoreUnavailable

log = logging.getLogger("server")

CHILD_START_TIMEOUT_S = 20.0  # a child that is not serving by then failed to start
CHILD_STOP_TIMEOUT_S = 15.0  # each child gets this long to stop after SIGTERM
RESTART_BACKOFF_S = 1.0  # a child that keeps dying is restarted at most this often


@dataclass(frozen=True)
class Plan:
    """Everything the flags decide about one server process."""

    settings: session.Settings
    host: str
    port: int
    redis_url: str | None
    history_max: int
    gate: object  # access/auth.py: who may call
    tls: object | None  # grpc.ServerCredentials, or None for plaintext
    metrics_port: int | None = None
    redis_replicas: int = 0  # deliver a message once this many Redis replicas hold it
    room_idle_days: float = 7.0  # with Redis: a room with no member and no message is removed


def check_flags(settings, history_max, redis_url, redis_replicas, processes, room_idle_days):
    """Refuse flags that cannot make a server, with the click error that says why."""
    rate = 1.0 if settings.rate is None else settings.rate  # None: limits off
    join_rate = settings.join_rate
    if min(rate, join_rate) <= 0 or min(settings.burst, settings.join_burst) < 1:
        raise click.BadParameter("rates and bursts must be positive")
    if min(settings.max_clients, history_max, settings.max_streams_per_address) < 1:
        raise click.BadParameter(
            "--max-clients, --history-max and --max-streams-per-address must be positive"
        )
    if settings.history < 0:
        raise click.BadParameter("--history cannot be negative")
    if min(settings.max_rooms, processes, room_idle_days) <= 0:
        raise click.BadParameter("--max-rooms, --processes and --room-idle-days must be positive")
    if redis_replicas < 0:
        raise click.BadParameter("--redis-replicas cannot be negative")
    if redis_replicas and not redis_url:
        raise click.UsageError("--redis-replicas needs --redis-url: replicas of which Redis?")
    if processes > 1 and not redis_url:
        raise click.UsageError(
            "--processes above 1 needs --redis-url: the processes are one chat through Redis"
        )


def open_store(redis_url: str | None, max_messages: int, replicas: int = 0):
    """The store the flags ask for. Raises StoreUnavailable if Redis is down."""
    if redis_url:
        from cluster.store import RedisStore  # only a server with Redis loads redis

        return RedisStore(redis_url, max_messages, replicas=replicas)
    return MemoryStore(max_messages)


def serve(plan: Plan, build, index: int = 0, ready=None) -> None:
    """Run one server process until SIGINT/SIGTERM. `ready()` is called once it serves.

    `build` is `server.create_server`. Raises click.ClickException for a
    start-up failure (Redis down, port busy).
    """
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        store = open_store(plan.redis_url, plan.history_max, plan.redis_replicas)
    except StoreUnavailable as error:
        raise click.ClickException(without_secrets(str(error), plan.redis_url)) from None
    cluster = None
    if plan.redis_url:  # every server on this Redis is one chat server
        from cluster.presence import Cluster

        cluster = Cluster(store.redis, store.server_id, store.progress)
        plan.gate.count_guesses_in(_shared_guesses(store))
    address = f"{plan.host}:{plan.port}"
    reuse = [("grpc.so_reuseport", 1)] if ready is not None else None  # one of N processes
    try:
        server = build(
            plan.settings, store, address, options=reuse, cluster=cluster, gate=plan.gate,
            tls=plan.tls,
        )  # fmt: skip
    except RuntimeError as error:  # grpc cannot bind the port
        store.close()
        raise click.ClickException(f"cannot listen on {address}: {error}") from None
    if plan.metrics_port is not None:
        metrics.watch(server.servicer.hub)
        try:
            if ready is None:  # one of N processes: the parent serves them all
                metrics.serve(plan.metrics_port, _metrics_host(plan))
        except OSError as error:
            store.close()
            raise click.ClickException(f"cannot serve metrics: {error}") from None
    server.start()
    idle_rooms = _idle_rooms(plan, store, server)
    if ready is None:
        history = without_secrets(store.description, plan.redis_url)
        click.echo(
            f"chat server listening on {plan.host}:{server.port}; history {history}"
            + _metrics_said(plan)
        )
    else:
        ready()
    stop.wait()
    log.info("shutting down")
    started = time.monotonic()
    if idle_rooms is not None:
        idle_rooms.close()
    server.stop()
    log.info("stopped in %.1f s", time.monotonic() - started)


def supervise(plan: Plan, build, count: int) -> None:
    """Run `count` server processes on one port until SIGINT/SIGTERM; restart the dead.

    The parent sleeps in one `wait`: on the children's sentinels (readable
    when a child exits) and on a pipe the signal handler writes to.
    """
    wake_read, wake_write = os.pipe()  # the signal handler's way to wake the wait below
    # Held open by the parent alone: a child reading it sees EOF when the parent is
    # gone, however it went (a SIGKILL included), and stops rather than live on orphaned.
    alive = os.pipe()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: os.write(wake_write, b"x"))
    shared = None  # the directory of the children's metrics, and whether we made it
    if plan.metrics_port is not None:  # one endpoint, here, for every child
        shared = metrics.shared_directory()
        try:
            metrics.serve_shared(plan.metrics_port, _metrics_host(plan), shared[0])
        except OSError as error:
            raise click.ClickException(f"cannot serve metrics: {error}") from None
    try:
        _supervise(plan, build, count, alive, wake_read, shared and shared[0])
    finally:
        if shared and shared[1]:
            metrics.remove_directory(shared[0])


def _supervise(plan: Plan, build, count: int, alive, wake_read: int, directory) -> None:
    forks = multiprocessing.get_context("fork")
    children = [_start(forks, plan, build, i, alive, directory) for i in range(count)]
    for i, (process, started) in enumerate(children):
        if not started.wait(CHILD_START_TIMEOUT_S):
            _stop_all([p for p, _ in children])
            raise click.ClickException(f"process {i} did not start (exit code {process.exitcode})")
    click.echo(
        f"chat server listening on {plan.host}:{plan.port}; {count} processes on one Redis"
        + _metrics_said(plan)
    )
    while True:
        sentinels = {process.sentinel: i for i, (process, _) in enumerate(children)}
        woken = multiprocessing.connection.wait([wake_read, *sentinels])
        if wake_read in woken:
            break
        for i in (sentinels[s] for s in woken):
            dead = children[i][0]
            log.error("process %d (pid %d) died with code %s: restarting", i, dead.pid,
                      dead.exitcode)  # fmt: skip
            if directory:
                metrics.process_dead(dead.pid, directory)
            # A child that dies at once is not restarted in a loop; a stop asked for
            # meanwhile is not kept waiting for a child that would start only to stop.
            if multiprocessing.connection.wait([wake_read], RESTART_BACKOFF_S):
                break  # the wait above now returns at once, and the loop ends
            children[i] = _start(forks, plan, build, i, alive, directory)
    log.info("stopping %d processes", count)
    # One that died and was not restarted (a stop came first) was reported above.
    failed = _stop_all([p for p, _ in children if p.exitcode is None])
    if failed:
        raise click.ClickException(f"{failed} processes did not stop cleanly")


def _start(forks, plan: Plan, build, index: int, alive, metrics_dir: str | None):
    started = forks.Event()
    process = forks.Process(
        target=_child, args=(plan, build, index, started, alive, metrics_dir), name=f"chat-{index}"
    )
    process.start()
    log.info("process %d started (pid %d)", index, process.pid)
    return process, started


def _child(plan: Plan, build, index: int, started, alive, metrics_dir: str | None) -> None:
    """A child's body, after the fork: one server process, like `python server.py` alone."""
    # NOTE: the fork copied the parent's handlers, which only wake the parent. Until
    # serve() puts its own, a SIGTERM or SIGINT ends this child: nothing to undo yet.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_before_serving)
    alive_read, alive_write = alive
    os.close(alive_write)  # only the parent's copy may keep the pipe open
    if metrics_dir:  # before anything counts: this child's metrics go to the shared files
        metrics.share_between_processes(metrics_dir)
    threading.Thread(target=_stop_with_parent, args=(alive_read,), daemon=True).start()
    try:
        serve(plan, build, index, ready=started.set)
    except click.ClickException as error:
        log.error("process %d (pid %d): %s", index, os.getpid(), error.message)
        raise SystemExit(1) from None


def _exit_before_serving(*_) -> None:
    raise SystemExit(0)


def _metrics_host(plan: Plan) -> str:
    """Where metrics listen: the chat's own interface ("[::1]" -> "::1"; "[::]" stays "::",
    which on Linux takes IPv4 too, as the chat port does)."""
    return plan.host.strip("[]")


def _metrics_said(plan: Plan) -> str:
    """The start-up line's last words: where metrics are served, if they are."""
    if plan.metrics_port is None:
        return ""
    host = _metrics_host(plan)
    host = "localhost" if host in ("", "::", "0.0.0.0") else host  # every interface: here too
    host = f"[{host}]" if ":" in host else host
    return f"; metrics at http://{host}:{plan.metrics_port}/metrics"


def _stop_with_parent(alive_read: int) -> None:
    """A child's watcher thread: when the parent is gone, stop as on SIGTERM."""
    os.read(alive_read, 1)  # blocks until EOF: the parent's end closed with it
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_all(processes) -> int:
    """SIGTERM to every child, then wait for each; the number that did not exit 0."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    failed = 0
    for process in processes:
        process.join(CHILD_STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join(5)
        failed += process.exitcode != 0
    return failed


def _shared_guesses(store):
    """Failed sign-ins counted in Redis, for every process and server (cluster/guesses.py)."""
    from cluster.guesses import SharedGuesses  # only a server with Redis loads redis

    return SharedGuesses(store.redis, FAILURES_RATE, FAILURE_BURST)


def _idle_rooms(plan: Plan, store, server):
    """With Redis, the thread that removes idle rooms (cluster/idle.py), started; else None."""
    if not plan.redis_url:
        return None
    from cluster.idle import IdleRooms

    idle = IdleRooms(store.redis, server.servicer.hub.rooms, plan.room_idle_days * 86_400)
    idle.start()
    return idle
