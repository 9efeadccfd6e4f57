"""The benchmark's arithmetic and display: latency histograms, progress, the report.

Workers in load.py count deliveries in a latency histogram (buckets
2 % apart, so percentiles come out within 2 % whatever the range) and
`merge_reports` adds up what every worker saw; `Progress` redraws one line
on stderr while a phase runs; `medians` and `report` turn the runs into the
table bench.py prints, with the first server's ratio to each other one.
"""

import math
import statistics
import sys
import threading
import time
from collections import Counter

import click

BUCKETS_PER_E = 50  # latency histogram: bucket edges grow by e^(1/50), 2 % apart
PROGRESS_EVERY_S = 0.5  # how often the progress line is redrawn


def latency_bucket(latency_ns: int) -> int:
    return int(math.log(max(latency_ns, 1_000) / 1_000) * BUCKETS_PER_E)  # 0 = 1 us


def percentile_ms(histogram: dict, fraction: float) -> float:
    """The latency under which `fraction` of deliveries fell (bucket midpoint)."""
    total = sum(histogram.values())
    if not total:
        return float("nan")
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= fraction * total:
            return math.exp((bucket + 0.5) / BUCKETS_PER_E) / 1_000
    return float("nan")


class Progress:
    """A status line on stderr while a load phase runs (refreshed on a terminal)."""

    def __init__(self, generator, label: str):  # generator: a generator.LoadGenerator
        self.generator, self.label = generator, label
        self.started = time.monotonic()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if sys.stderr.isatty():
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()
            click.echo("\r\033[K", nl=False, err=True)

    def _run(self) -> None:
        while not self.done.wait(PROGRESS_EVERY_S):
            sent, delivered = self.generator.totals()
            elapsed = time.monotonic() - self.started
            line = f"{self.label}: {elapsed:5.1f} s  sent {sent}  delivered {delivered}"
            click.echo(f"\r\033[K{line} ({delivered / elapsed:,.0f}/s)", nl=False, err=True)


def merge_reports(reports: list[dict], room_sizes: Counter) -> dict:
    """One phase's figures, from every worker's report; a message is expected by its room."""
    histogram, ended, ids, sent_by_room = Counter(), Counter(), {}, Counter()
    disordered = 0
    for report in reports:
        histogram.update(report["histogram"])
        ended.update(report["ended"])
        sent_by_room.update(report["sent_by_room"])
        # A worker whose clients saw some message under another id disagrees.
        if any(ids.setdefault(key, value) != value for key, value in report["ids"].items()):
            disordered += report["clients"]
        else:
            disordered += report["disordered"]
    sent = sum(r["sent"] for r in reports)
    delivered = sum(r["delivered"] for r in reports)
    expected = sum(count * room_sizes[room] for room, count in sent_by_room.items())
    return {
        "sent": sent,
        "expected": expected,
        "delivered": delivered,
        "lost": expected - delivered,
        "p50_ms": percentile_ms(histogram, 0.50),
        "p90_ms": percentile_ms(histogram, 0.90),
        "p99_ms": percentile_ms(histogram, 0.99),
        "max_ms": max(r["max_ns"] for r in reports) / 1e6,
        "disagree": disordered,
        "send_lag_ms": max(r["lag_ns"] for r in reports) / 1e6,
        "last_ns": max(r["last_ns"] for r in reports),
        "ended": dict(ended),
    }


# (key, label, format) of each line of the report; a line no run measured is left out.
REPORT_LINES = [
    ("burst_join_s", "{burst} clients joining at once: s until all in", "{:.2f}"),
    ("burst_refused", "  of them refused", "{:.0f}"),
    ("idle_kib_per_client", "idle memory per connected client, KiB", "{:.1f}"),
    ("join_s", "{clients} clients joining: s until all in", "{:.2f}"),
    ("busiest_share", "  busiest process's share of them", "{:.2f}"),
    ("offered_msgs_per_s", "offered messages/s", "{:,.0f}"),
    ("sent", "messages sent", "{:,.0f}"),
    ("expected", "deliveries expected", "{:,.0f}"),
    ("delivered", "deliveries received", "{:,.0f}"),
    ("lost", "deliveries lost", "{:,.0f}"),
    ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
    ("sustainable_deliveries_per_s", "sustainable deliveries/s (sweep)", "{:,.0f}"),
    ("p50_ms", "latency p50, ms", "{:.1f}"),
    ("p90_ms", "latency p90, ms", "{:.1f}"),
    ("p99_ms", "latency p99, ms", "{:.1f}"),
    ("max_ms", "latency max, ms", "{:.1f}"),
    ("disagree", "clients disagreeing on order", "{:.0f}"),
    ("server_cores", "server CPU, cores", "{:.2f}"),
    ("server_us_per_delivery", "server CPU per delivery, us", "{:.1f}"),
    ("server_peak_rss_mib", "server peak RSS, MiB", "{:.1f}"),
    ("redis_cores", "redis-server CPU, cores", "{:.2f}"),
    ("generator_cores", "load generator CPU, cores", "{:.2f}"),
    ("other_cores", "other processes' CPU (noise), cores", "{:.2f}"),
    ("send_lag_ms", "worst sender lag, ms", "{:.1f}"),
]


def medians(runs: list[dict]) -> dict:
    keys = [key for key, _, _ in REPORT_LINES]
    values = {key: [r[key] for r in runs if isinstance(r.get(key), int | float)] for key in keys}
    return {key: statistics.median(v) for key, v in values.items() if v}


def report(table: dict[str, dict], settings: dict) -> str:
    """The medians side by side, and the first server's ratio to each other one."""
    kinds = list(table)
    first = kinds[0]
    header = ["", *kinds, *(f"{first}/{other}" for other in kinds[1:])]
    rows = [header]
    for key, label, fmt in REPORT_LINES:
        if not any(key in table[kind] for kind in kinds):
            continue
        cells = [fmt.format(table[k][key]) if key in table[k] else "-" for k in kinds]
        ratios = [ratio(table[first].get(key), table[other].get(key)) for other in kinds[1:]]
        rows.append([label.format(**settings), *cells, *ratios])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in rows]  # fmt: skip
    return "\n".join(lines)


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def finite(value):
    """JSON has no NaN: write null instead."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and value != value else value
