"""The loss window: messages echoed, then gone after a Redis failover.

    python -m bench.failover                      # without --redis-replicas
    python -m bench.failover --replicas 1         # with it: expect 0 lost
    python -m bench.failover --replica-delay-ms 50  # the replica 50 ms away

Starts a Redis master, replica and three sentinels (deploy/sentinel/start.sh,
short timings), two servers on the Sentinel URL, and `--senders` clients
(half on each server) sending `--rate` messages a second in all, one stream
each (a refused line is not sent again). After `--before` seconds the
master is SIGKILLed; sending goes on for `--after` more; with --replicas
the dead master is started again once the replica is master (as a
supervisor would), so WAIT can be met again. Then
the new master's history is read: a message its sender saw echoed but that
is not in it is lost. Each run prints sent, echoed, refused (NOT_SENT),
lost, when the first line sent after the kill came back, and the span of
time the lost ones were echoed in.
"""

import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import grpc
import redis

import chat_pb2 as pb
import chat_pb2_grpc
from bench.lag import DelayedLink
from bench.servers import ROOT, STREAMS_PER_ADDRESS, free_port, wait_healthy

START = ROOT / "deploy" / "sentinel" / "start.sh"
HISTORY_MAX = 1_000_000  # the servers' --history-max: no message trimmed (that is not a loss)
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # each sender its own TCP connection


class Sender:
    """One client stream: sends its numbered lines; notes when each came back (echo)."""

    def __init__(self, address: str, name: str):
        self.name = name
        self.echoed: dict[str, float] = {}  # text -> monotonic time of its echo
        self.refused = 0  # NOT_SENT answers
        self.sent: list[str] = []
        self._outbox: queue.Queue = queue.Queue()
        self._outbox.put(
            pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
        )
        self.channel = grpc.insecure_channel(address, options=OWN_CONNECTION)
        stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.call = stub.Chat(iter(self._outbox.get, None), timeout=600)
        self.joined = threading.Event()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        try:
            for event in self.call:
                kind = event.WhichOneof("event")
                if kind == "user_event" and event.user_event.username == self.name:
                    self.joined.set()
                elif kind == "chat_message" and event.chat_message.username == self.name:
                    self.echoed.setdefault(event.chat_message.message, time.monotonic())
                elif kind == "system_event" and event.system_event.code == pb.NOT_SENT:
                    self.refused += 1
        except grpc.RpcError:
            pass

    def say(self, text: str) -> None:
        self.sent.append(text)
        self._outbox.put(pb.ClientEvent(chat_message=pb.ChatMessageEvent(message=text)))

    def close(self) -> None:
        self._outbox.put(None)
        self.call.cancel()
        self.channel.close()


def start_redis(directory: Path, delay_ms: float) -> tuple[str, dict, DelayedLink | None]:
    """deploy/sentinel/start.sh on free ports in `directory`: (URL, ports, the lag relay).

    With `delay_ms`, the replica then replicates through a DelayedLink. NOTE:
    Sentinel puts back a replica whose master looks wrong, but only once
    failover-timeout has passed since its last change: 60 s here, past the run.
    """
    ports = {"master": free_port(), "replica": free_port()}
    sentinels = [free_port() for _ in range(3)]
    timeout_ms = "60000" if delay_ms else "3000"
    env = {**os.environ, "DIR": str(directory), "MASTER_PORT": str(ports["master"]),
           "REPLICA_PORT": str(ports["replica"]), "SENTINEL_PORTS": " ".join(map(str, sentinels)),
           "DOWN_AFTER_MS": "1000", "FAILOVER_TIMEOUT_MS": timeout_ms}  # fmt: skip
    done = subprocess.run([str(START)], env=env, capture_output=True, text=True, check=True)
    ports["sentinel"] = sentinels[0]
    link = None
    if delay_ms:
        link = DelayedLink(ports["master"], delay_ms)
        with redis.Redis(port=ports["replica"], decode_responses=True) as replica:
            replica.replicaof("127.0.0.1", link.port)
            deadline = time.monotonic() + 20
            while replica.info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise click.ClickException("the replica did not sync through the lag relay")
                time.sleep(0.1)
    time.sleep(2)  # the sentinels find each other (hello messages every 2 s)
    return done.stdout.strip().splitlines()[-1], ports, link


def master_port(ports: dict) -> int:
    with redis.Redis(port=ports["sentinel"], decode_responses=True) as sentinel:
        return int(sentinel.sentinel_get_master_addr_by_name("mymaster")[1])


def one_run(rate, senders, replicas, before_s, after_s, delay_ms) -> dict:
    with tempfile.TemporaryDirectory(prefix="failover-", ignore_cleanup_errors=True) as tmp:
        directory = Path(tmp)
        url, ports, link = start_redis(directory, delay_ms)
        servers = []
        try:
            for _ in range(2):
                port = free_port()
                command = [sys.executable, "server.py", "--host", "127.0.0.1", "--port", str(port),
                           "--redis-url", url, "--redis-replicas", str(replicas), "--no-rate-limit",
                           "--max-streams-per-address", str(STREAMS_PER_ADDRESS),
                           "--history-max", str(HISTORY_MAX)]  # fmt: skip
                log = (directory / f"server-{port}.log").open("w")
                process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
                servers.append((process, f"127.0.0.1:{port}"))
                wait_healthy(f"127.0.0.1:{port}", process, None)
            return measure(servers, ports, directory, rate, senders, replicas, before_s, after_s)
        finally:
            for process, _ in servers:
                process.kill()
                process.wait()
            subprocess.run([str(START.parent / "stop.sh")], env={**os.environ, "DIR": tmp})
            if link:
                link.close()


def measure(servers, ports, directory, rate, senders, replicas, before_s, after_s) -> dict:
    clients = [Sender(servers[i % 2][1], f"s{i}") for i in range(senders)]
    for client in clients:
        client.joined.wait(10)
    interval = senders / rate  # each sender's pause between two lines
    started = time.monotonic()
    killed_at = None
    n = 0
    while time.monotonic() - started < before_s + after_s:
        if killed_at is None and time.monotonic() - started >= before_s:
            behind = replica_behind(ports)
            os.kill(int((directory / "master.pid").read_text()), signal.SIGKILL)
            killed_at, first_after = time.monotonic(), n
            if replicas:
                threading.Thread(target=restart_old_master, args=(ports, directory)).start()
        for client in clients:
            client.say(f"{client.name}-{n}")
        n += 1
        time.sleep(max(0.0, started + n * interval - time.monotonic()))
    time.sleep(3)  # the last echoes
    with redis.Redis(port=master_port(ports), decode_responses=True) as master:
        kept = {fields.get("message") for _, fields in master.xrange("chat:messages")}
    lost = [(at, text) for c in clients for text, at in c.echoed.items() if text not in kept]
    after = [at for c in clients for text, at in c.echoed.items()
             if int(text.rsplit("-", 1)[1]) >= first_after]  # fmt: skip
    for client in clients:
        client.close()
    span = (max(lost)[0] - min(lost)[0]) * 1000 if lost else 0.0
    return {
        "sent": sum(len(c.sent) for c in clients),
        "echoed": sum(len(c.echoed) for c in clients),
        "refused": sum(c.refused for c in clients),
        "lost": len(lost),
        "replica_behind_bytes": behind,
        "first_echo_after_kill_s": round(min(after) - killed_at, 2) if after else None,
        "lost_span_ms": round(span, 1),
        "lost_after_kill_ms": [round((at - killed_at) * 1000, 1) for at, _ in sorted(lost)][:5],
    }


def replica_behind(ports: dict) -> int | None:
    """How many bytes of replication the replica had not acknowledged, by the master's INFO.

    Acknowledgements come once a second, so this is an upper bound.
    """
    with redis.Redis(port=ports["master"], decode_responses=True) as master:
        info = master.info("replication")
    replica = info.get("slave0")
    return info["master_repl_offset"] - replica["offset"] if replica else None


def restart_old_master(ports: dict, directory: Path) -> None:
    """Once the replica is master, start the dead one again (Sentinel makes it a replica)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if master_port(ports) == ports["replica"]:
                subprocess.run(["redis-server", str(directory / "master.conf")], check=True)
                return
        except redis.RedisError:
            pass
        time.sleep(0.2)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rate", default=200.0, show_default=True, help="Messages per second, all senders.")
@click.option("--senders", default=4, show_default=True, help="Client streams, half per server.")
@click.option("--replicas", default=0, show_default=True, help="The servers' --redis-replicas.")
@click.option(
    "--before", "before_s", default=3.0, show_default=True, help="Seconds before the kill."
)
@click.option("--after", "after_s", default=8.0, show_default=True, help="Seconds after it.")
@click.option("--runs", default=3, show_default=True, help="Failovers, each on a fresh set.")
@click.option(
    "--replica-delay-ms", "delay_ms", default=0.0, show_default=True,
    help="Replication this late (bench/lag.py), as across a network.",
)  # fmt: skip
def main(rate, senders, replicas, before_s, after_s, runs, delay_ms):
    """Measure messages echoed and then lost across a Redis failover (see the module doc)."""
    results = []
    for run in range(runs):
        result = one_run(rate, senders, replicas, before_s, after_s, delay_ms)
        click.echo(f"run {run + 1}: {result}")
        results.append(result)
    lost = [r["lost"] for r in results]
    click.echo(f"--redis-replicas {replicas}, {rate:g} msg/s: lost per failover "
               f"{lost} (median {statistics.median(lost)})")  # fmt: skip


if __name__ == "__main__":
    main()
