"""What deploy/ sets up, started by tests: Redis under Sentinel, and nginx in front.

`SentinelSet` runs deploy/sentinel/start.sh (a master, a replica, three
sentinels) on free ports in a temp dir, with short timings so a failover
takes seconds; `Nginx` runs nginx with one of deploy/nginx/'s configs, its
backends and port filled in. Both are the real programs the README tells an
operator to run; each is stopped by the pids it wrote.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, free_port, wait_until

SENTINEL_START = ROOT / "deploy" / "sentinel" / "start.sh"
DOWN_AFTER_MS = 1000  # the master is called down after this long without an answer
FAILOVER_TIMEOUT_MS = 3000  # a stuck failover is tried again after this long


def _require(program: str) -> str:
    found = shutil.which(program) or next(
        (p for p in (f"/usr/sbin/{program}", f"/usr/bin/{program}") if os.path.exists(p)), None
    )
    if found is None:
        raise AssertionError(f"{program} is not installed (.ci/run installs it)")
    return found


class SentinelSet:
    """A master, its replica and three sentinels, from deploy/sentinel/start.sh."""

    def __init__(self, directory: Path):
        _require("redis-sentinel")
        self.directory = directory
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        env = {
            **os.environ,
            "DIR": str(directory),
            "MASTER_PORT": str(self.master_port),
            "REPLICA_PORT": str(self.replica_port),
            "SENTINEL_PORTS": " ".join(map(str, self.sentinel_ports)),
            "DOWN_AFTER_MS": str(DOWN_AFTER_MS),
            "FAILOVER_TIMEOUT_MS": str(FAILOVER_TIMEOUT_MS),
        }
        done = subprocess.run(
            [str(SENTINEL_START)], env=env, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            self.stop()
            raise AssertionError(f"start.sh failed: {done.stdout}{done.stderr}")
        self.url = done.stdout.strip().splitlines()[-1]  # the script's last line: the URL
        assert self.url.startswith("redis+sentinel://"), done.stdout
        assert wait_until(self._replica_in_sync, timeout=15), "the replica never synced"
        assert wait_until(self._sentinels_know_each_other, timeout=15), "sentinels never met"

    def pid(self, name: str) -> int:
        return int((self.directory / f"{name}.pid").read_text())

    def kill_master(self) -> None:
        os.kill(self.pid("master"), signal.SIGKILL)

    def restart_master(self) -> None:
        """Start the killed master again, as a supervisor (systemd) would: Sentinel
        makes it a replica of the new master."""
        subprocess.run(
            ["redis-server", str(self.directory / "master.conf")], check=True, timeout=10
        )

    def ask(self, port: int, *command: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=5
        )
        return done.stdout

    def _replica_in_sync(self) -> bool:
        return "master_link_status:up" in self.ask(self.replica_port, "info", "replication")

    def _sentinels_know_each_other(self) -> bool:
        return all(
            "num-other-sentinels\n2\n" in self.ask(port, "sentinel", "master", "mymaster")
            for port in self.sentinel_ports
        )

    def master_now(self) -> int:
        """The master's port, as the first sentinel sees it."""
        reply = self.ask(self.sentinel_ports[0], "sentinel", "get-master-addr-by-name", "mymaster")
        return int(reply.split()[1])

    def stop(self) -> None:
        for pidfile in self.directory.glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


@pytest.fixture
def sentinel_set(tmp_path):
    redis_set = SentinelSet(tmp_path)
    yield redis_set
    redis_set.stop()


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


NGINX_DIR = ROOT / "deploy" / "nginx"
UPSTREAM_SERVERS = re.compile(r"(\n\s*server 127\.0\.0\.1:\d+ [^\n]*)+")


class Nginx:
    """nginx with deploy/nginx/`config`, its listener and backends set for this test.

    The files are copied to `directory` (the -p prefix) and only the ports
    are changed, plus any `stream.conf` setting named in `overrides`
    (`{"grpc_read_timeout": "2s"}`); `files` (name -> path) are copied beside
    them (the TLS variant's cert.pem and key.pem).
    """

    def __init__(self, directory: Path, backends: list[str], config="chat.conf", overrides=None,
                 files=None):  # fmt: skip
        program = _require("nginx")
        self.directory = directory
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        text = (NGINX_DIR / config).read_text()
        text = re.sub(r"listen 127\.0\.0\.1:\d+", f"listen 127.0.0.1:{self.port}", text)
        servers = "".join(f"\n        server {b} max_fails=1 fail_timeout=5s;" for b in backends)
        text, count = UPSTREAM_SERVERS.subn(servers, text, count=1)
        assert count == 1, "no upstream servers in the config"
        (directory / config).write_text(text)
        stream = (NGINX_DIR / "stream.conf").read_text()
        for setting, value in (overrides or {}).items():
            stream, count = re.subn(rf"\b{setting} [^;]+;", f"{setting} {value};", stream)
            assert count == 1, f"{setting} is not in stream.conf"
        (directory / "stream.conf").write_text(stream)
        for name, path in (files or {}).items():
            shutil.copy(path, directory / name)
        self.proc = subprocess.Popen(
            [program, "-p", str(directory), "-e", str(directory / "error.log"),
             "-c", str(directory / config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if not wait_until(lambda: answers(self.port) or self.proc.poll() is not None, timeout=10):
            self.stop()
            raise AssertionError("nginx did not start")
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx did not start: {self.proc.stderr.read()}")

    def log(self) -> str:
        return (self.directory / "error.log").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # fast stop: a graceful one would wait for every stream to end
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stderr.close()


@pytest.fixture
def nginx(tmp_path):
    started = []

    def start(backends, config="chat.conf", overrides=None, files=None):
        directory = tmp_path / f"nginx{len(started)}"
        directory.mkdir()
        proxy = Nginx(directory, backends, config, overrides, files)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
