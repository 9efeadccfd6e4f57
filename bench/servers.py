"""The servers under test for the benchmark: this project's, the baselines, a private Redis.

`KINDS` says how to start each kind of server; `start_server` runs one as a
child process on a free port of 127.0.0.1 and waits until it answers
HealthCheck. The project's kinds run server.py (or a changed copy: "alt",
or "before", a git worktree of an older commit made by `worktree`); the
baselines run from bench/peers. `PrivateRedis` runs an unpersisted
redis-server for the kinds that keep history in Redis. The clients that
load them are in load.py.
"""

import re
import shutil
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

ROOT = Path(__file__).resolve().parent.parent  # the repository: server.py, chat_pb2.py
START_TIMEOUT_S = 20.0  # a server not answering HealthCheck by then failed to start
STREAMS_PER_ADDRESS = 10_000  # every benchmark client comes from 127.0.0.1: no per-address cap


@dataclass(frozen=True)
class Kind:
    """How to run one kind of server under test."""

    argv: tuple[str, ...]  # after `python`, before `--port N`; run in the project's directory
    project: bool = True  # server.py: also --host 127.0.0.1 --no-rate-limit
    redis: bool = False  # keeps history in Redis: gets --redis-url
    members: int = 1  # servers started side by side on one Redis, clients spread over them
    rooms: bool = True  # knows rooms: may run the scenarios with clients in several rooms
    replica: bool = False  # its Redis needs a replica (--redis-replicas): every kind's gets one
    nginx: bool = False  # clients reach it through nginx (deploy/nginx/chat.conf)


# A new kind is one more line. "processes" is one server.py of 2 processes on
# one port (SO_REUSEPORT): its children are measured and stopped with it.
KINDS = {
    "project": Kind(("server.py",)),
    "project+redis": Kind(("server.py",), redis=True),
    "processes": Kind(("server.py", "--processes", "2"), redis=True),
    "cluster": Kind(("server.py",), redis=True, members=3),  # cross-server fan-out
    # The costs of the deployment (deploy/): delivery only once a replica holds it,
    # to set beside "project+redis" (whose Redis then has the replica too); and
    # nginx in front, to set beside "project".
    "project+replicas": Kind(("server.py", "--redis-replicas", "1"), redis=True, replica=True),
    "project+nginx": Kind(("server.py",), nginx=True),
    "alt": Kind(("server.py",)),  # run in --alt-dir: a changed copy of the project
    "before": Kind(("server.py",), rooms=False),  # run in a worktree of --before COMMIT
    "threaded": Kind(("-m", "bench.peers.threaded"), project=False, rooms=False),
    "aio": Kind(("-m", "bench.peers.aio"), project=False, rooms=False),
}
BASELINES = [name for name, kind in KINDS.items() if not kind.project]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A server under test: a process we started, several, or one at --target (pid optional)."""

    kind: str
    target: str  # "host:port", or "a,b,c" for several servers: clients alternate
    process: subprocess.Popen | None = None
    pid: int | None = None
    redis_pid: int | None = None  # the private redis-server it uses, if any
    members: list["Server"] = field(default_factory=list)  # started and stopped with it

    def family(self) -> list[psutil.Process]:
        """Its processes: its own, its children (several processes on one port), its members'."""
        processes = [member for m in self.members for member in m.family()]
        if self.pid:
            own = psutil.Process(self.pid)
            processes += [own, *own.children(recursive=True)]
        return processes

    def cpu_s(self) -> float | None:
        """CPU seconds so far, user and system, of all its processes; None if unknown."""
        family = self.family()
        return sum(sum(p.cpu_times()[:2]) for p in family) if family else None

    def rss_bytes(self) -> int | None:
        family = self.family()
        return sum(p.memory_info().rss for p in family) if family else None

    def peak_rss_bytes(self) -> int | None:
        """The kernel's high-water mark of resident memory (VmHWM), summed over its processes."""
        family = self.family()
        return sum(peak_rss_bytes(p.pid) for p in family) if family else None

    def busiest_share(self) -> float | None:
        """Of the clients' connections, the share of its busiest process; None for one process.

        With several processes on one port the kernel picks the process of
        each new connection, so the split is luck: 0.5 is even for two.
        """
        family = self.family()
        ports = {int(target.rsplit(":", 1)[1]) for target in self.target.split(",")}
        counts = [sum(c.status == "ESTABLISHED" and c.laddr.port in ports
                      for c in p.net_connections("tcp")) for p in family]  # fmt: skip
        return max(counts) / sum(counts) if len(family) > 1 and sum(counts) else None

    def stop(self) -> None:
        """SIGKILL it: a server under test is thrown away.

        A graceful stop would only make the benchmark wait: each of its
        clients' leaves is broadcast to all the others. Its children go too
        (a server of several processes): nobody would reap them.
        """
        if self.process is not None and self.kind == "nginx":
            # Its master respawns a killed worker: SIGTERM is nginx's own fast stop,
            # which takes the workers with it.
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None and self.process.poll() is None:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            self.process.kill()
            self.process.wait()
        for member in self.members:
            member.stop()


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


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


def start_server(name: str, directory: Path, log_dir: Path, redis_url=None, redis=None) -> Server:
    """Start a server of kind `name` (see KINDS) from `directory`; wait until it answers.

    A kind with Redis keeps its history in `redis` (a PrivateRedis), flushed
    first, or else at `redis_url`, a Redis the user gave, as it is. A kind of
    several members comes back as one Server whose target lists them all.
    """
    kind = KINDS[name]
    if redis and kind.redis:
        redis.flush()
        redis_url = redis.url
    url = redis_url if kind.redis else None
    members = [start_process(name, kind, directory, log_dir, url) for _ in range(kind.members)]
    server = members[0] if kind.members == 1 else Server(name, ",".join(m.target for m in members),
                                                         members=members)  # fmt: skip
    server.redis_pid = redis.process.pid if redis and kind.redis else None
    if kind.nginx:
        proxy = start_nginx(server.target, log_dir)
        return Server(name, proxy.target, members=[server, proxy])
    return server


def start_nginx(backend: str, log_dir: Path) -> Server:
    """nginx with deploy/nginx/chat.conf in front of `backend`; wait until it answers.

    Only its ports change, and its per-address limits go: every benchmark
    client comes from 127.0.0.1 (the servers' caps are raised the same way).
    """
    port = free_port()
    prefix = log_dir / f"nginx-{port}"
    prefix.mkdir()
    config = (ROOT / "deploy" / "nginx" / "chat.conf").read_text()
    config = re.sub(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{port}", config)
    config = re.sub(
        r"(\n\s*server 127\.0\.0\.1:\d+ [^\n]*)+", f"\n        server {backend};", config
    )
    (prefix / "chat.conf").write_text(config)
    stream = (ROOT / "deploy" / "nginx" / "stream.conf").read_text()
    stream = re.sub(r"\n\s*limit_(conn|req) [^;]*;", "", stream)
    (prefix / "stream.conf").write_text(stream)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    command = [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"),
               "-c", str(prefix / "chat.conf"), "-g", "daemon off;"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        wait_healthy(target, process, prefix / "error.log")
    except click.ClickException:
        process.kill()
        raise
    return Server("nginx", target, process, process.pid)


def start_process(name: str, kind: Kind, directory: Path, log_dir: Path, redis_url) -> Server:
    """One child process on a free port, its output in `log_dir`; wait until it answers."""
    port = free_port()
    command = [sys.executable, *kind.argv, "--port", str(port)]
    if kind.project:  # this project's server: the same flags as a baseline's defaults
        command += ["--host", "127.0.0.1", "--no-rate-limit"]
        command += ["--max-streams-per-address", str(STREAMS_PER_ADDRESS)]
        command += ["--redis-url", redis_url] if redis_url else []
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        wait_healthy(target, process, log_path)
    except click.ClickException:
        process.kill()
        raise
    return Server(name, target, process, process.pid)


class PrivateRedis:
    """A private, unpersisted redis-server on a free port (never the machine's own)."""

    def __init__(self, directory: Path, replica: bool = False):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = self._start(self.port, directory)
        self.replica = None  # with `replica`: a second redis-server replicating this one
        if replica:
            replica_port = free_port()
            self.replica = self._start(replica_port, directory / "replica",
                                       "--replicaof", "127.0.0.1", str(self.port))  # fmt: skip
            deadline = time.monotonic() + START_TIMEOUT_S
            while b"connected_slaves:1" not in self.command(b"INFO replication", 4096):
                if time.monotonic() > deadline:
                    self.stop()
                    raise click.ClickException("the Redis replica did not connect")
                time.sleep(0.05)

    def _start(self, port: int, directory: Path, *more: str) -> subprocess.Popen:
        directory.mkdir(exist_ok=True)
        command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--daemonize", "no", "--dir", str(directory),
                   "--repl-diskless-sync-delay", "0", *more]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.command(b"PING", port=port).startswith(b"+PONG"):
                    return process
            except OSError:
                time.sleep(0.05)
        process.kill()
        raise click.ClickException("redis-server did not start")

    def command(self, command: bytes, size: int = 64, port: int | None = None) -> bytes:
        """One inline command, the first bytes of its reply (the benchmark never imports redis)."""
        with socket.create_connection(("127.0.0.1", port or self.port), timeout=1) as s:
            s.sendall(command + b"\r\n")
            return s.recv(size)

    def flush(self) -> None:
        """Forget the last server's stream and online names.

        NOTE: a server is stopped with SIGKILL, so its names stay online in
        Redis; the next server would reap them ~15 s later, one USER_LEFT
        broadcast each, in the middle of a measurement.
        """
        self.command(b"FLUSHALL")

    def stop(self) -> None:
        for process in (self.process, self.replica):
            if process is not None:
                process.kill()
                process.wait()


class Worktree:
    """A `git worktree` of `commit` in `directory`, for server "before"; removed by `remove`."""

    def __init__(self, commit: str, directory: Path):
        self.path = directory / "before"
        self._git("worktree", "add", "--detach", str(self.path), commit)

    def _git(self, *args: str) -> None:
        result = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        if result.returncode != 0:
            raise click.ClickException(f"git {' '.join(args)}: {result.stderr.strip()}")

    def remove(self) -> None:
        self._git("worktree", "remove", "--force", str(self.path))
        shutil.rmtree(self.path, ignore_errors=True)
