"""Shared test helpers: real servers on port 0, real clients, a real redis-server.

Nothing here is mocked. `server_factory` builds the server with the same
`create_server` that `python server.py` uses; `ServerProcess` runs the real
command line; `RedisProcess` runs a private `redis-server` in a temp dir on
a free port (never the machine's own Redis), so a test may kill it.
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Tests fork (pexpect, subprocess) while gRPC threads run; gRPC's fork
# handlers would then break the child. Nothing here needs gRPC across a fork.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from wire import EVENT_TIMEOUT_S  # noqa: E402

from server import create_server  # noqa: E402
from session import Settings  # noqa: E402
from store import MemoryStore  # noqa: E402

PORTS_FROM = 10_000  # free_port draws from here up to the kernel's ephemeral ports
_given: set[int] = set()  # ports this process handed out (pytest runs tests on one thread)


def free_port() -> int:
    """A port nobody holds now, for a server the test starts next.

    Drawn below the kernel's ephemeral range, so no outgoing connection (a
    client, another test's) can take it before the server binds it; each
    pytest-xdist worker draws from its own slice, and never hands out one
    port twice.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        ephemeral = int(ranges.read().split()[0])
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    span = (ephemeral - PORTS_FROM) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    start = PORTS_FROM + worker * span
    for _ in range(1000):
        port = random.randrange(start, start + span)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in _given:
            _given.add(port)
            return port
    raise AssertionError(f"no free port in {start}-{start + span}")


def wait_until(predicate, timeout=EVENT_TIMEOUT_S, interval=0.02) -> bool:
    """Wait for a condition the code under test offers no event for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stored(store, limit: int = 50, after_id: str | None = None, room: str = "lobby") -> list:
    """The messages `store.history` gives, its pages joined."""
    return [message for page in store.history(limit, after_id, room) for message in page]


# -- servers -------------------------------------------------------------------


def _chat_threads() -> set:
    """Threads the chat server starts per client (pool threads are reused)."""
    return {t for t in threading.enumerate() if t.name.startswith("reader-")}


@pytest.fixture
def server_factory():
    """Start in-process servers; on teardown fail on leftovers, then stop them."""
    started = []

    def start(store=None, options=None, **settings):
        # Most tests are not about the rate limits or the per-address cap (all are 127.0.0.1).
        defaults = {"rate": None, "max_streams_per_address": 10_000}
        server = create_server(
            Settings(**{**defaults, **settings}),
            store or MemoryStore(),
            "127.0.0.1:0",
            options=options,
        )
        server.start()
        server.address = f"127.0.0.1:{server.port}"
        started.append(server)
        return server

    yield start
    for server in started:
        hub = server.servicer.hub
        leftovers = wait_until(lambda h=hub: h.count() == 0 and not _chat_threads())
        server.stop(grace_s=0.5)
        assert leftovers, f"left behind: clients {hub.names()}, threads {_chat_threads()}"


@pytest.fixture
def server(server_factory):
    return server_factory()


class ServerProcess:
    """`python server.py` as a subprocess, on `port` or a free one.

    Its log (stderr) is read at the end with `proc.stderr.read()`, or, after
    `watch_log()`, collected as it comes by a thread (`wait_for_log`).
    """

    def __init__(self, *args: str, env: dict | None = None, port: int | None = None):
        self.port = port or free_port()  # a given port lets a server come back in place
        self.address = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "server.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                *args,
            ],  # fmt: skip
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
        self.banner = self.proc.stdout.readline()  # "chat server listening on ..."
        if "listening" not in self.banner:
            self.proc.kill()
            raise AssertionError(f"server did not start: {self.banner}{self.proc.stderr.read()}")

    def watch_log(self) -> None:
        self.log_lines: list[str] = []
        threading.Thread(target=self._collect_log, daemon=True).start()

    def _collect_log(self) -> None:
        try:
            for line in self.proc.stderr:
                self.log_lines.append(line)
        except ValueError:  # stop() closed the pipe
            pass

    def wait_for_log(self, text: str, timeout: float = 15) -> bool:
        return wait_until(lambda: any(text in line for line in list(self.log_lines)), timeout)

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout=10) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            pipe.close()


@pytest.fixture
def server_process():
    started = []

    def start(*args, **kwargs):
        process = ServerProcess(*args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# -- a private redis-server -------------------------------------------------------

REDIS_SERVER = shutil.which("redis-server")


class RedisProcess:
    """A redis-server on a free port with append-only persistence in `directory`."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--logfile",
                "redis.log",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_until(self._answers, timeout=10), "redis-server did not start"

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def redis_proc(tmp_path):
    if REDIS_SERVER is None:
        raise AssertionError("redis-server is not installed (.ci/run installs it)")
    process = RedisProcess(tmp_path)
    process.start()
    yield process
    process.kill()


def banner_port(line: str) -> int:
    return int(re.search(r":(\d+);", line).group(1))


# -- real clients (tests/clients.py) ------------------------------------------------


@pytest.fixture
def pipe_client():
    started = []

    def start(*args):
        import clients  # imports this module: not at the top

        client = clients.PipeClient(*args)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


@pytest.fixture
def terminal():
    """Start interactive clients; each has joined when it is returned."""
    started = []

    def start(address: str, name: str):
        import clients  # imports this module: not at the top

        child = clients.Terminal(address, name)
        started.append(child)
        child.expect_exact(f"* {name} joined the chat")
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait(5)
        child.close()
