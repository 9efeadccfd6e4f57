"""Past one core: `server.py --processes N` is N processes on one port, one chat through Redis.

The processes are told apart by their log lines, which carry the pid with
`--processes` ("... [4242] INFO alice joined #lobby ...").
"""

import re
import signal
import urllib.request

import grpc
import psutil
import pytest
from conftest import ServerProcess, free_port, wait_until
from wire import EVENT_TIMEOUT_S, Conn, health, join, join_event

import chat_pb2 as pb

pytestmark = pytest.mark.timeout(90)

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a channel's own TCP connection
JOINED = re.compile(r"\[(\d+)\] INFO (\S+) joined")


class Supervised(ServerProcess):
    """A `--processes` server whose log lines (stderr) a thread collects."""

    def __init__(self, *args):
        super().__init__(*args)
        self.watch_log()

    def stop(self) -> None:
        """SIGTERM, as an operator would; whatever is left after that is killed."""
        family = [self.proc.pid, *self.children()] if self.proc.poll() is None else []
        if family:
            self.signal(signal.SIGTERM)
            self.proc.wait(20)
        for pid in family:
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
        super().stop()

    def pid_of(self, name: str) -> int | None:
        for line in list(self.log_lines):
            if (found := JOINED.search(line)) and found[2] == name:
                return int(found[1])
        return None

    def children(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.proc.pid).children()]


def join_on_each_process(server: Supervised, prefix: str, wanted: int = 2) -> dict[int, object]:
    """Join new users until the log shows `wanted` processes serving them: pid -> conn.

    Each user gets a TCP connection of its own (gRPC would otherwise share
    one between channels to the same address), since the kernel spreads
    connections, not streams, over the processes.
    """
    by_pid = {}
    for n in range(40):
        name = f"{prefix}{n}"
        channel = grpc.insecure_channel(server.address, options=OWN_CONNECTION)
        conn = Conn(server.address, join_event(name), channel=channel)
        conn.next_event("user_event", where=lambda e, name=name: e.username == name)
        assert wait_until(lambda name=name: server.pid_of(name) is not None)
        pid = server.pid_of(name)
        if pid in by_pid:
            conn.close()
            continue
        by_pid[pid] = conn
        if len(by_pid) == wanted:
            return by_pid
    raise AssertionError("new connections never reached every process")


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
    assert server.wait_for_log("died", timeout=10)
    assert wait_until(lambda: len(server.children()) == 2 and victim not in server.children(),
                      timeout=15)  # fmt: skip
    for n in range(4):  # wherever the kernel sends them
        conn = join(server.address, f"late{n}")
        conn.close()
    assert health(server.address).status == "SERVING"


def test_children_stop_when_the_parent_is_killed(supervised):
    """When the parent dies without a word (SIGKILL), its children stop too: no orphans."""
    server = supervised()
    children = server.children()
    psutil.Process(server.proc.pid).kill()
    gone, alive = psutil.wait_procs([psutil.Process(pid) for pid in children], timeout=15)
    assert not alive, f"orphaned children still running: {[p.pid for p in alive]}"


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
