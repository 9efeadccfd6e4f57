"""One /metrics for `--processes N`: the children's metrics summed by the parent.

Real processes on one port (tests/test_processes.py's `Supervised`), a real
Redis, clients landing on each child; /metrics read over HTTP.
"""

import re
import urllib.request

import psutil
import pytest
from conftest import free_port, wait_until
from test_processes import Supervised, join_on_each_process
from wire import EVENT_TIMEOUT_S

pytestmark = pytest.mark.timeout(60)

SAMPLE = re.compile(r"^(chat_\S+?)(\{[^}]*\})? (\S+)$")


def scrape(port: int) -> dict[str, float]:
    """Every chat_ sample of one GET of /metrics: 'name{labels}' -> value."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT_S) as reply:
        text = reply.read().decode()
    samples = (SAMPLE.match(line) for line in text.splitlines())
    return {m[1] + (m[2] or ""): float(m[3]) for m in samples if m}


def test_processes_share_one_metrics_endpoint_with_deliveries_summed(redis_proc):
    """When clients chat on two processes, one GET of the parent's /metrics shows
    both processes' counts summed and the delivery-time histogram moving; a dead
    process's gauges drop out and its counts stay."""
    unused_port = free_port()
    server = Supervised(
        "--processes", "2", "--redis-url", redis_proc.url, "--no-rate-limit",
        "--metrics-port", str(unused_port),
    )  # fmt: skip
    try:
        assert f"metrics at http://127.0.0.1:{unused_port}/metrics" in server.banner
        by_pid = join_on_each_process(server, "user")
        first, second = by_pid.values()
        for n in range(3):
            first.say(f"one {n}")
        for n in range(2):
            second.say(f"two {n}")
        for conn in (first, second):
            assert len(conn.messages(5)) == 5
        assert wait_until(lambda: scrape(unused_port).get("chat_clients_online") == 2)
        seen = scrape(unused_port)
        assert seen["chat_messages_accepted_total"] == 5  # 3 on one process, 2 on the other
        assert seen["chat_deliveries_total"] >= 10  # 5 messages to 2 clients, one on each
        delivered = seen["chat_delivery_seconds_count"]
        assert delivered >= 10
        assert seen['chat_delivery_seconds_bucket{le="+Inf"}'] == delivered
        assert 0 < seen["chat_delivery_seconds_sum"] < delivered  # under a second each
        first.say("one more")
        for conn in (first, second):
            conn.messages(1)
        assert wait_until(
            lambda: scrape(unused_port)["chat_delivery_seconds_count"] == delivered + 2
        )
        dead = next(pid for pid, conn in by_pid.items() if conn is first)
        psutil.Process(dead).kill()  # its client's gauge goes with it; its counts stay
        assert wait_until(lambda: scrape(unused_port).get("chat_clients_online") == 1, timeout=10)
        assert scrape(unused_port)["chat_messages_accepted_total"] == 6
        for conn in (first, second):
            conn.close()
    finally:
        server.stop()
