"""The measurements of the benchmark: a burst of joins, a load, a sweep of loads.

cli.py (the command line) starts each server under test in turn and calls
`run_server` for it, once per repetition and scenario; it measures:

1. a burst: `--burst-clients` clients join at the same moment; the time until
   all are in, how many were refused, and the server's memory per idle client;
2. a load: `--clients` clients join, `--senders` of them write `--rate`
   messages/s each for `--duration` s; every client receives every message.
   Deliveries, loss, latency from send to receive, whether all clients saw
   the same order, and the CPU of the server and of this load generator
   (they share the machine). `--sweep` instead raises the rate until p99
   latency passes `--p99-limit-ms` or anything is lost, and reports the most
   deliveries/s that held: the sustainable fan-out.

With `rooms` above 1 the load's clients are spread over that many rooms
(load.py says which); each message then reaches its room only. With `each`
above 1 every client is in that many of the rooms at once (one stream).
"""

import time
from dataclasses import dataclass

import click
import psutil

from bench.generator import LoadGenerator
from bench.report import Progress
from bench.servers import Server

SETTLE_S = 0.5  # after a join, before memory is read: let the join's fan-out finish
# ... and until no event came for SETTLE_S, at most this long: clients in several
# rooms get a USER_JOINED from every member of each, many more than a load phase
# should find still queued when it starts.
SETTLE_MAX_S = 60.0
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
    rooms: int = 1  # the load phase's clients are spread over this many rooms
    each: int = 1  # and each client is in this many of them
    phases: int = 0

    def join(self, server: Server, clients: int, rooms: int = 1, each: int = 1) -> dict:
        """Connect `clients`, let them join at once; time, refusals, memory per client."""
        self.phases += 1
        prefix = f"b{self.phases}c"
        self.generator.connect(server.target, clients, prefix, rooms, each)
        rss_before = server.rss_bytes()
        joined = self.generator.join()
        self.settle()
        if rss_before is not None:
            joined["idle_kib_per_client"] = (server.rss_bytes() - rss_before) / clients / 1024
        if (share := server.busiest_share()) is not None:
            joined["busiest_share"] = share
        return joined

    def settle(self) -> None:
        """Wait until the clients have received no event for SETTLE_S (SETTLE_MAX_S at most)."""
        deadline, seen = time.monotonic() + SETTLE_MAX_S, -1
        while seen != (seen := self.generator.events()) and time.monotonic() < deadline:
            time.sleep(SETTLE_S)

    def load(self, server: Server, rate: float) -> dict:
        """One load phase at `rate` messages/s per sender, and what it cost whom."""
        self.phases += 1
        label = f"{server.kind} {self.senders}x{rate:g} msg/s to {self.clients}"
        label += f" in {self.rooms} rooms" if self.rooms > 1 else ""
        label += f", {self.each} each" if self.each > 1 else ""
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
        rate = self.rate * self.rooms / self.each  # a message reaches each/rooms of the clients
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
        self.join(server, self.clients, self.rooms, self.each)
        return server


def run_server(
    bench: Bench, start, burst_clients: int, sweep: bool, rooms: int = 1, each: int = 1
) -> dict:
    """One repetition against one server: the burst of joins, then the load (or sweep).

    Fails if any of the load's clients was refused: the figures would mean nothing.
    """
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
    bench.rooms, bench.each = rooms, each
    server = start()
    try:
        joined = bench.join(server, bench.clients, rooms, each)
        if joined["refused"]:
            raise click.ClickException(f"{server.kind}: {joined['refused']} of {bench.clients} "
                                       f"clients refused ({joined['refused_codes']})")  # fmt: skip
        if sweep:
            server, result = bench.sweep(start, server)
        else:
            result = bench.load(server, bench.rate)
    finally:
        server.stop()
        bench.generator.leave()
    row.setdefault("idle_kib_per_client", joined.get("idle_kib_per_client"))
    row["busiest_share"] = joined.get("busiest_share")
    return {"join_s": joined["join_s"], "refused": joined["refused"], **result, **row}
