"""The servers under test for bench.py: this project's, the baselines, a private Redis.

`start_server` runs this project's server.py (or a changed copy, "alt") or
one of the baselines of ../shared/baselines as a child process on a free
port of 127.0.0.1, and waits until it answers HealthCheck. `PrivateRedis`
runs an unpersisted redis-server for a run with history in Redis. The
clients that load them are in bench_load.py.
"""

import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import grpc
import psutil

import chat_pb2 as pb
import chat_pb2_grpc

HERE = Path(__file__).resolve().parent
BASELINE_SCRIPTS = {"sync": "sync_threaded.py", "aio": "aio.py"}
START_TIMEOUT_S = 20.0  # a server not answering HealthCheck by then failed to start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server under test: a process we started, or one at --target (pid optional)."""

    kind: str
    target: str
    process: subprocess.Popen | None = None
    pid: int | None = None
    redis_pid: int | None = None  # the private redis-server it uses, if any
    members: list = field(default_factory=list)  # a cluster's servers, stopped with it

    def rss_bytes(self) -> int | None:
        return psutil.Process(self.pid).memory_info().rss if self.pid else None

    def peak_rss_bytes(self) -> int | None:
        """The kernel's high-water mark of resident memory (VmHWM)."""
        if not self.pid:
            return None
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None

    def stop(self) -> None:
        """SIGKILL it: a server under test is thrown away.

        A graceful stop would only make the benchmark wait: each of its
        clients' leaves is broadcast to all the others.
        """
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        for member in self.members:
            member.stop()


def wait_healthy(target: str, process: subprocess.Popen | None, log_path: Path | None) -> None:
    """Call HealthCheck until it answers; fail with the server's log if it exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                log = log_path.read_text()[-2000:] if log_path else ""
                raise click.ClickException(f"server exited ({process.returncode}):\n{log}")
            try:
                stub.HealthCheck(pb.HealthCheckRequest(), timeout=1.0, wait_for_ready=True)
                return
            except grpc.RpcError as error:
                if time.monotonic() > deadline:
                    raise click.ClickException(f"no server at {target}: {error}") from None


def start_server(kind: str, script: Path, log_dir: Path, redis_url=None, redis=None):
    """Run `script` (a server.py, or a baseline) on a free port; wait until it answers.

    With `redis` (a PrivateRedis), the server keeps its history there, in a Redis
    flushed first; with `redis_url`, in a Redis the user gave, as it is.
    """
    if redis:
        redis.flush()
        redis_url = redis.url
    port = free_port()
    command = [sys.executable, str(script), "--port", str(port)]
    if script.name == "server.py":  # this project's: same flags as a baseline's defaults
        command += ["--host", "127.0.0.1", "--no-rate-limit"]
        command += ["--redis-url", redis_url] if redis_url else []
    log_path = log_dir / f"{kind}-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=script.parent, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        wait_healthy(target, process, log_path)
    except click.ClickException:
        process.kill()
        raise
    return Server(kind, target, process, process.pid, redis.process.pid if redis else None)


def start_cluster(kind: str, script: Path, log_dir: Path, redis_url=None, redis=None, size=3):
    """`size` server.py processes on one Redis, as one target "a,b,c" (SPEC §7).

    Clients are spread over the servers, so every message crosses between
    them through Redis. CPU and memory are not reported for a cluster.
    """
    if redis:
        redis.flush()
        redis_url, redis = redis.url, None
    members = [start_server(kind, script, log_dir, redis_url) for _ in range(size)]
    return Server(kind, ",".join(m.target for m in members), members=members)


class PrivateRedis:
    """A private, unpersisted redis-server on a free port (never the machine's own)."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--dir", str(directory)]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.command(b"PING").startswith(b"+PONG"):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise click.ClickException("redis-server did not start")

    def command(self, command: bytes) -> bytes:
        """One inline command, the first bytes of its reply (bench.py never imports redis)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(command + b"\r\n")
            return s.recv(64)

    def flush(self) -> None:
        """Forget the last server's stream and online names.

        NOTE: a server is stopped with SIGKILL, so its names stay online in
        Redis; the next server would reap them ~15 s later, one USER_LEFT
        broadcast each, in the middle of a measurement.
        """
        self.command(b"FLUSHALL")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
