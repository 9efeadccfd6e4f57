"""Benchmark: how much chat a server delivers, how fast, and at what cost.

`python -m bench` (from the repository's top level; `make bench` does it)
starts the servers under test itself, one at a time, each on a free port of
127.0.0.1: this project's `server.py` (rate limit off, history in memory,
or in a private Redis with `--redis`) and the two baselines of bench/peers
(the bare threaded design, and the same on grpc.aio). For each it measures,
medians of `--repeat` runs:

1. a burst: `--burst-clients` clients join at the same moment; the time until
   all are in, how many were refused, and the server's memory per idle client;
2. a load: `--clients` clients join, `--senders` of them write `--rate`
   messages/s each for `--duration` s; every client receives every message.
   Deliveries, loss, latency from send to receive, whether all clients saw
   the same order, and the CPU of the server and of this load generator
   (they share the machine). `--sweep` instead raises the rate until p99
   latency passes `--p99-limit-ms` or anything is lost, and reports the most
   deliveries/s that held: the sustainable fan-out.

`--alt-dir` adds server "alt", a changed copy of the project, so that a
change to the hot path is measured in the same run as the original. The
servers are started by servers.py; the clients are played by load.py, in
worker processes; report.py prints the table.
"""

import json
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click
import grpc
import psutil

from bench.load import LoadGenerator
from bench.report import Progress, finite, medians, report
from bench.servers import BASELINES, KINDS, ROOT, PrivateRedis, Server, start_server

SETTLE_S = 0.5  # after a join, before memory is read: let the join's fan-out finish
DRAIN_S = 3.0  # after the last send, how long deliveries may still arrive
SWEEP_MAX_RATES = 12  # a sweep never tries more rates than this
SWEEP_RETRIES = 1  # a rate that failed is tried this many more times before it counts
START_IN_S = 0.3  # a load phase starts this long after it is announced to the workers
SWEEP_RESOLUTION = 0.08  # bisecting stops when pass and fail rates are within 8 %


@dataclass
class Bench:
    """One benchmark run's settings and the load generator it drives."""

    generator: LoadGenerator
    clients: int
    senders: int
    rate: float
    duration_s: float
    chars: int
    p99_limit_ms: float
    phases: int = 0

    def join(self, server: Server, clients: int) -> dict:
        """Connect `clients`, let them join at once; time, refusals, memory per client."""
        self.phases += 1
        self.generator.connect(server.target, clients, prefix=f"b{self.phases}c")
        rss_before = server.rss_bytes()
        joined = self.generator.join()
        time.sleep(SETTLE_S)
        if rss_before is not None:
            joined["idle_kib_per_client"] = (server.rss_bytes() - rss_before) / clients / 1024
        return joined

    def load(self, server: Server, rate: float) -> dict:
        """One load phase at `rate` messages/s per sender, and what it cost whom."""
        self.phases += 1
        label = f"{server.kind} {self.senders}x{rate:g} msg/s to {self.clients}"
        before, started = self.cpu_s(server), time.monotonic()
        with Progress(self.generator, label):
            result = self.generator.load(f"p{self.phases}", self.senders, rate, self.duration_s,
                                         DRAIN_S, self.chars, START_IN_S)  # fmt: skip
        wall_s = time.monotonic() - started - START_IN_S
        cores = {who: (s - before[who]) / wall_s for who, s in self.cpu_s(server).items()}
        result["offered_msgs_per_s"] = self.senders * rate
        result["deliveries_per_s"] = result["delivered"] / result["active_s"]
        result["generator_cores"] = cores["generator"]
        if "server" in cores:  # known pid: what is left of the machine's CPU is noise
            result["other_cores"] = max(0.0, 2 * cores["machine"] - sum(cores.values()))
            result["server_cores"] = cores["server"]
            cpu_s = cores["server"] * wall_s
            result["server_us_per_delivery"] = cpu_s / max(result["delivered"], 1) * 1e6
            result["server_peak_rss_mib"] = server.peak_rss_bytes() / 2**20
        if "redis" in cores:
            result["redis_cores"] = cores["redis"]
        held = result["lost"] == 0 and result["p99_ms"] <= self.p99_limit_ms
        click.echo(f"  {label}: {result['deliveries_per_s']:,.0f} deliveries/s, p99 "
                   f"{result['p99_ms']:.1f} ms, lost {result['lost']}"
                   f"{'' if held else '  (did not hold)'}", err=True)  # fmt: skip
        return {**result, "held": held}

    def cpu_s(self, server: Server) -> dict[str, float]:
        """CPU seconds so far: the server, Redis, this tool, and the whole machine."""
        machine = psutil.cpu_times()
        usage = {
            "machine": sum(machine) - machine.idle - getattr(machine, "iowait", 0),
            "generator": self.generator.cpu_s() + sum(psutil.Process().cpu_times()[:2]),
        }
        if (server_s := server.cpu_s()) is not None:
            usage["server"] = server_s
        if server.redis_pid:
            usage["redis"] = sum(psutil.Process(server.redis_pid).cpu_times()[:2])
        return usage

    def sweep(self, start, server: Server) -> tuple[Server, dict]:
        """Double the rate until it fails, then bisect; the best that held, and every step.

        A rate that fails is tried once more on a fresh server before it counts
        as failed: the machine is shared, and one stall must not end the sweep.
        """
        low, high, best, steps = 0.0, None, None, []
        rate = self.rate
        for _ in range(SWEEP_MAX_RATES):
            for _ in range(1 + SWEEP_RETRIES):
                result = self.load(server, rate)
                steps.append(result)
                if result["held"]:
                    break
                server = self.restart(server, start)  # evictions, backlogs: start afresh
            if result["held"]:
                low = rate
                if best is None or result["deliveries_per_s"] > best["deliveries_per_s"]:
                    best = result
            else:
                high = rate
            if high is not None and (high - low) / high <= SWEEP_RESOLUTION:
                break
            rate = rate * 2 if high is None else (low + high) / 2
        summary = dict(best or {})
        summary["sustainable_deliveries_per_s"] = best["deliveries_per_s"] if best else 0.0
        summary["steps"] = steps
        return server, summary

    def restart(self, server: Server, start) -> Server:
        server.stop()
        self.generator.leave()
        server = start()
        self.join(server, self.clients)
        return server


def run_server(bench: Bench, start, burst_clients: int, sweep: bool) -> dict:
    """One repetition against one server: the burst of joins, then the load (or sweep)."""
    row = {}
    if burst_clients:
        server = start()
        try:
            burst = bench.join(server, burst_clients)
        finally:
            server.stop()
            bench.generator.leave()
        row = {"burst_join_s": burst["join_s"], "burst_refused": burst["refused"],
               "idle_kib_per_client": burst.get("idle_kib_per_client")}  # fmt: skip
    server = start()
    try:
        joined = bench.join(server, bench.clients)
        if sweep:
            server, result = bench.sweep(start, server)
        else:
            result = bench.load(server, bench.rate)
    finally:
        server.stop()
        bench.generator.leave()
    row.setdefault("idle_kib_per_client", joined.get("idle_kib_per_client"))
    return {"join_s": joined["join_s"], "refused": joined["refused"], **result, **row}


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
    "--redis",
    "with_redis",
    is_flag=True,
    help="Keep the project's history in a private redis-server started for the run "
    "(project becomes project+redis).",
)
@click.option(
    "--redis-url",
    envvar="BENCH_REDIS_URL",
    help="For project+redis: use this Redis (not flushed: give it an empty one) instead "
    "of a private one.",
)
@click.option("--clients", default=100, show_default=True, help="Clients in the load phase.")
@click.option("--senders", default=10, show_default=True, help="How many of them send.")
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write to FILE.")
def main(servers, baseline, target, server_pid, alt_dir, with_redis, redis_url,
         clients, senders, rate, duration, burst_clients, sweep, p99_limit_ms, repeat,
         message_chars, workers, json_path):  # fmt: skip
    """Benchmark chat servers: joins, fan-out, latency, CPU and memory.

    Starts each of --servers in turn (or measures --target) and reports, as
    medians of --repeat runs: --burst-clients joining at once; then --clients
    joined, --senders of them sending --rate messages/s for --duration s
    (with --sweep: the highest rate that held). With no options: this
    project's server and both baselines, side by side, in about 2 minutes.
    """
    kinds = [baseline] if baseline else [k.strip() for k in servers.split(",")]
    kinds = ["project+redis" if with_redis and k == "project" else k for k in kinds]
    if target:
        kinds = ["target"]
    elif unknown := set(kinds) - set(KINDS):
        raise click.BadParameter(f"unknown server {', '.join(unknown)}", param_hint="--servers")
    if not 0 < senders <= clients or rate <= 0 or duration <= 0 or repeat < 1 or workers < 1:
        raise click.BadParameter("need 0 < senders <= clients, and positive numbers")
    alt = Path(alt_dir or ROOT).resolve()
    if "alt" in kinds and not (alt / "server.py").exists():
        raise click.ClickException(f"no {alt / 'server.py'}")

    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        redis = None
        if any(k in KINDS and KINDS[k].redis for k in kinds) and not redis_url:
            redis = PrivateRedis(Path(tmp))
        generator = LoadGenerator(workers)
        bench = Bench(generator, clients, senders, rate, duration, message_chars, p99_limit_ms)
        try:
            for run in range(repeat):
                for kind in kinds:
                    click.echo(f"run {run + 1}/{repeat}: {kind}", err=True)
                    if target:
                        start = partial(Server, "target", target, pid=server_pid)
                    else:
                        directory = alt if kind == "alt" else ROOT
                        start = partial(start_server, kind, directory, Path(tmp), redis_url, redis)
                    runs[kind].append(run_server(bench, start, burst_clients, sweep))
        finally:
            generator.close()
            if redis:
                redis.stop()

    table = {kind: medians(kind_runs) for kind, kind_runs in runs.items()}
    settings = {"burst": burst_clients, "clients": clients}
    python = sys.version.split()[0]
    machine = f"{psutil.cpu_count()} cores, Python {python}, grpcio {grpc.__version__}"
    click.echo(f"\nmedians of {repeat}; {clients} clients, {senders} senders; {machine}")
    click.echo(report(table, settings))
    if json_path:
        config = {"servers": kinds, "clients": clients, "senders": senders, "rate": rate,
                  "duration_s": duration, "burst_clients": burst_clients, "sweep": sweep,
                  "p99_limit_ms": p99_limit_ms, "repeat": repeat, "machine": machine}  # fmt: skip
        document = {"settings": config, "medians": table, "runs": runs}
        Path(json_path).write_text(json.dumps(finite(document), indent=2) + "\n")


if __name__ == "__main__":
    main()
