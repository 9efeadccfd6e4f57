"""Benchmark: how much chat a server delivers, how fast, and at what cost.

`python -m bench` (from the repository's top level; `make bench` does it)
starts the servers under test itself, one at a time, each on a free port of
127.0.0.1: this project's `server.py` (rate limit off, history in memory,
or in a private Redis with `--redis`) and the two baselines of bench/peers
(the bare threaded design, and the same on grpc.aio). For each it measures,
medians of `--repeat` runs, a burst of joins and a load or a sweep of loads
(bench.py says what each is).

Same-run comparisons, each a column of the table:

- `--alt-dir` adds server "alt", a changed copy of the project, so that a
  change to the hot path is measured in the same run as the original;
- `--before COMMIT` adds server "before", server.py as it was at COMMIT, from
  a git worktree made in a temp dir for the run and removed after it;
- `--rooms 1,10` runs the load once per room count on every server that has
  rooms: the columns `project` (one room) and `project:10rooms`; `5/5`
  puts every client in all 5 rooms at once (column `project:5rooms/5`),
  with a fifth of `--clients`, so that the rooms have as many members as
  with `5`: a user in 5 rooms against 5 users in one room each;
- server "processes" is `server.py --processes 2` on a private Redis, to
  set beside "project+redis" (one process on the same kind of Redis).

The servers are started by servers.py; the clients are played by load.py
in worker processes driven by generator.py; report.py prints the table.
"""

import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import click
import grpc
import psutil

from bench.bench import Bench, run_server
from bench.generator import CLIENTS_PER_CHANNEL, LoadGenerator
from bench.report import finite, medians, report
from bench.servers import BASELINES, KINDS, ROOT, PrivateRedis, Server, Worktree, start_server


def columns(kinds: list[str], rooms: list[tuple[int, int]]) -> list[tuple[str, str, int, int]]:
    """(column, kind, rooms, rooms each client is in) for each measurement of one
    repetition, in order."""
    return [(column_name(kind, n, each), kind, n, each) for kind in kinds for n, each in rooms
            if n == 1 or kind == "target" or KINDS[kind].rooms]  # fmt: skip


def column_name(kind: str, rooms: int, each: int) -> str:
    return kind if rooms == 1 else f"{kind}:{rooms}rooms" + (f"/{each}" if each > 1 else "")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--servers",
    default="project,threaded,aio",
    show_default=True,
    help=f"Servers to measure in turn, comma-separated, of: {', '.join(KINDS)} (see "
    "KINDS in bench/servers.py). Ratios are the first one's to each other one.",
)
@click.option(
    "--baseline",
    type=click.Choice(BASELINES),
    help="Measure this baseline alone (same as --servers NAME).",
)
@click.option("--target", metavar="HOST:PORT", help="Measure a running server instead.")
@click.option("--server-pid", type=int, help="With --target: its pid, for CPU and memory.")
@click.option(
    "--alt-dir",
    type=click.Path(exists=True, file_okay=False),
    help='Server "alt" is the server.py in this directory: a changed copy to compare.',
)
@click.option(
    "--before",
    metavar="COMMIT",
    help='Add server "before": server.py at COMMIT, from a git worktree made for the run '
    "in a temp dir and removed after it.",
)
@click.option(
    "--redis",
    "with_redis",
    is_flag=True,
    help="Keep the project's history in a private redis-server started for the run "
    "(project becomes project+redis).",
)
@click.option(
    "--redis-url",
    envvar="BENCH_REDIS_URL",
    help="For the kinds with Redis: use this Redis (not flushed: give it an empty one) "
    "instead of a private one.",
)
@click.option("--clients", default=100, show_default=True, help="Clients in the load phase.")
@click.option("--senders", default=10, show_default=True, help="How many of them send.")
@click.option(
    "--rooms",
    default="1",
    show_default=True,
    help="Room counts, comma-separated: the load runs once per count, its clients spread "
    "over that many rooms (client i in r{i % N}); servers without rooms run 1 only. "
    "N/K: each client in K of the N rooms at once, with --clients/K clients. "
    "The sweep starts N/K times faster, as a message reaches K/N of the clients.",
)
@click.option(
    "--rate",
    default=4.0,
    show_default=True,
    help="Messages/s per sender (the sweep's starting rate).",
)
@click.option("--duration", default=4.0, show_default=True, help="Seconds of load per phase.")
@click.option(
    "--burst-clients",
    default=200,
    show_default=True,
    help="Clients joining at once in the burst test (0: skip it).",
)
@click.option("--sweep", is_flag=True, help="Find the sustainable fan-out instead of one rate.")
@click.option(
    "--p99-limit-ms",
    default=250.0,
    show_default=True,
    help="The sweep's bar: p99 latency above this (or any loss) did not hold.",
)
@click.option("--repeat", default=3, show_default=True, help="Runs per server; medians reported.")
@click.option("--message-chars", default=64, show_default=True, help="Length of each message.")
@click.option("--workers", default=2, show_default=True, help="Load generator processes.")
@click.option(
    "--clients-per-channel",
    default=CLIENTS_PER_CHANNEL,
    show_default=True,
    help="Clients sharing one channel (one TCP connection). Several server processes on one "
    "port split connections, not clients: 1 spreads them as separate users would.",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write to FILE.")
def main(servers, baseline, target, server_pid, alt_dir, before, with_redis, redis_url, clients,
         senders, rooms, rate, duration, burst_clients, sweep, p99_limit_ms, repeat,
         message_chars, workers, clients_per_channel, json_path):  # fmt: skip
    """Benchmark chat servers: joins, fan-out, latency, CPU and memory.

    Starts each of --servers in turn (or measures --target) and reports, as
    medians of --repeat runs: --burst-clients joining at once; then --clients
    joined, --senders of them sending --rate messages/s for --duration s
    (with --sweep: the highest rate that held). With no options: this
    project's server and both baselines, side by side, in about 2 minutes.
    """
    kinds = [baseline] if baseline else [k.strip() for k in servers.split(",")]
    kinds = ["project+redis" if with_redis and k == "project" else k for k in kinds]
    kinds += ["before"] if before and "before" not in kinds else []
    if target:
        kinds = ["target"]
    elif unknown := set(kinds) - set(KINDS):
        raise click.BadParameter(f"unknown server {', '.join(unknown)}", param_hint="--servers")
    room_counts = parse_rooms(rooms, clients)
    if not 0 < senders <= clients or rate <= 0 or duration <= 0 or repeat < 1 or workers < 1:
        raise click.BadParameter("need 0 < senders <= clients, and positive numbers")
    if "before" in kinds and not before:
        raise click.BadParameter('server "before" needs --before COMMIT', param_hint="--servers")
    alt = Path(alt_dir or ROOT).resolve()
    if "alt" in kinds and not (alt / "server.py").exists():
        raise click.ClickException(f"no {alt / 'server.py'}")

    plan = columns(kinds, room_counts)
    runs: dict[str, list[dict]] = {column: [] for column, _, _, _ in plan}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        worktree = Worktree(before, Path(tmp)) if before else None
        directories = {"alt": alt, "before": worktree.path if worktree else None}
        redis = None
        if any(k in KINDS and KINDS[k].redis for k in kinds) and not redis_url:
            redis = PrivateRedis(Path(tmp), replica=any(KINDS[k].replica for k in kinds))
        generator = LoadGenerator(workers, clients_per_channel)
        bench = Bench(generator, clients, senders, rate, duration, message_chars, p99_limit_ms)
        try:
            for run in range(repeat):
                for column, kind, n, each in plan:
                    click.echo(f"run {run + 1}/{repeat}: {column}", err=True)
                    bench.clients = clients // each  # as many in each room as with one each
                    if target:
                        start = partial(Server, "target", target, pid=server_pid)
                    else:
                        directory = directories.get(kind) or ROOT
                        start = partial(start_server, kind, directory, Path(tmp), redis_url, redis)
                    burst = burst_clients if (n, each) == room_counts[0] else 0  # once per server
                    runs[column].append(run_server(bench, start, burst, sweep, n, each))
        finally:
            generator.close()
            if redis:
                redis.stop()
            if worktree:
                worktree.remove()

    table = {column: medians(column_runs) for column, column_runs in runs.items()}
    settings = {"burst": burst_clients, "clients": clients}
    python = sys.version.split()[0]
    machine = f"{psutil.cpu_count()} cores, Python {python}, grpcio {grpc.__version__}"
    click.echo(f"\nmedians of {repeat}; {clients} clients, {senders} senders; {machine}")
    click.echo(report(table, settings))
    if json_path:
        config = {"servers": kinds, "clients": clients, "senders": senders, "rate": rate,
                  "rooms": room_counts, "duration_s": duration, "burst_clients": burst_clients,
                  "sweep": sweep, "p99_limit_ms": p99_limit_ms, "repeat": repeat,
                  "clients_per_channel": clients_per_channel, "before": before,
                  "machine": machine}  # fmt: skip
        document = {"settings": config, "medians": table, "runs": runs}
        Path(json_path).write_text(json.dumps(finite(document), indent=2) + "\n")


def parse_rooms(rooms: str, clients: int) -> list[tuple[int, int]]:
    """--rooms "1,10,5/5" -> [(1, 1), (10, 1), (5, 5)]: rooms, and rooms each client is in."""
    try:
        counts = [tuple(int(n) for n in f"{item}/1".split("/")[:2]) for item in rooms.split(",")]
    except ValueError:
        raise click.BadParameter("comma-separated N or N/K", param_hint="--rooms") from None
    if not all(0 < n <= clients and 0 < each <= n for n, each in counts):
        raise click.BadParameter("each N between 1 and --clients, K up to N", param_hint="--rooms")
    return counts


if __name__ == "__main__":
    main()
