"""Past one core: `server.py --processes N` is N processes on one port, one chat through Redis.

The processes are told apart by their log lines, which carry the pid with
`--processes` ("... [4242] INFO alice joined #lobby ...").
"""

import re
import signal
import threading
import urllib.request

import psutil
import pytest
from conftest import ServerProcess, free_port, wait_until
from wire import EVENT_TIMEOUT_S, health, join

import chat_pb2 as pb

pytestmark = pytest.mark.timeout(90)

JOINED = re.compile(r"\[(\d+)\] INFO (\S+) joined")


class Supervised(ServerProcess):
    """A `--processes` server whose log lines (stderr) a thread collects."""

    def __init__(self, *args):
        super().__init__(*args)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def pid_of(self, name: str) -> int | None:
        for line in list(self.lines):
            if (found := JOINED.search(line)) and found[2] == name:
                return int(found[1])
        return None

    def children(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.proc.pid).children()]


def join_on_each_process(server: Supervised, prefix: str, wanted: int = 2) -> dict[int, object]:
    """Join new users until the log shows `wanted` processes serving them: pid -> conn."""
    by_pid, extra = {}, []
    for n in range(40):
        conn = join(server.address, f"{prefix}{n}")
        assert wait_until(lambda name=f"{prefix}{n}": server.pid_of(name) is not None)
        pid = server.pid_of(f"{prefix}{n}")
        (extra if pid in by_pid else by_pid.setdefault(pid, [])).append(conn)
        if len(by_pid) == wanted:
            break
    for conn in extra:
        conn.close()
    assert len(by_pid) == wanted, "new connections never reached every process"
    return {pid: conns[0] for pid, conns in by_pid.items()}


@pytest.fixture
def supervised(redis_proc):
    started = []

    def start(*args):
        server = Supervised("--processes", "2", "--redis-url", redis_proc.url, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_two_processes_are_one_chat_and_sigterm_stops_both_cleanly(supervised):
    """When clients land on both processes they chat as one; SIGTERM to the parent tells
    every client and every process exits 0."""
    server = supervised("--no-rate-limit")
    children = server.children()
    assert len(children) == 2
    conns = join_on_each_process(server, "user")
    first, second = conns.values()
    first.say("from one process")
    assert second.messages(1)[0].message == "from one process"
    second.say("and back")
    assert [m.message for m in first.messages(2)][-1] == "and back"
    server.signal(signal.SIGTERM)
    for conn in conns.values():
        notice = conn.next_event("system_event", where=lambda e: e.code == pb.SHUTTING_DOWN)
        assert notice.system_event.message
    assert server.wait(20) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in children)  # fmt: skip
    for conn in conns.values():
        conn.close()


def test_a_killed_process_is_restarted_and_new_clients_get_in(supervised):
    """When one process is SIGKILLed, the parent says so, starts another, and joins work."""
    server = supervised()
    victim = server.children()[0]
    psutil.Process(victim).kill()
    assert wait_until(lambda: any("died" in line for line in server.lines), timeout=10)
    assert wait_until(lambda: len(server.children()) == 2 and victim not in server.children(),
                      timeout=15)  # fmt: skip
    for n in range(4):  # wherever the kernel sends them
        conn = join(server.address, f"late{n}")
        conn.close()
    assert health(server.address).status == "SERVING"


def test_processes_without_redis_is_a_clear_start_up_error():
    """When --processes 2 comes without --redis-url, the server says why and exits non-zero."""
    with pytest.raises(AssertionError) as failed:
        ServerProcess("--processes", "2")
    assert "needs --redis-url" in str(failed.value)
    assert "Traceback" not in str(failed.value)


def test_metrics_count_what_happens(server_process):
    """When clients chat, /metrics shows the counters and the states moving."""
    metrics_port = free_port()
    server = server_process("--metrics-port", str(metrics_port), "--rate", "100")
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    for n in range(3):
        alice.say(f"m{n}")
    bob.messages(3)
    alice.say("")  # refused: empty

    def scrape() -> dict[str, float]:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT_S) as reply:
            text = reply.read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("chat_")}  # fmt: skip

    assert wait_until(lambda: scrape().get('chat_refusals_total{reason="invalid"}') == 1)
    seen = scrape()
    assert seen["chat_messages_accepted_total"] == 3
    assert seen["chat_deliveries_total"] >= 6  # 3 messages x 2 clients, plus joins
    assert seen["chat_clients_online"] == 2
    assert seen["chat_joins_total"] == 2
    assert seen["chat_redis_up"] == 1
    alice.close()
    bob.close()
