"""The stage of the fault hunt: one redis-server, three servers, a relay each.

Each `server.py` reaches the shared Redis through its own `Proxy`, so the
hunt can cut or black-hole one server's connection and leave the others
alone. `Stage` owns those processes and knows how to break each one and how
to put it back; `Faults` picks what to break, when and for how long, from
the hunt's seeded random source, and keeps a timeline for the failure
message.

    bots --gRPC--> server 0 --relay 0--\\
    bots --gRPC--> server 1 --relay 1---> redis-server (append-only, fsync always)
    bots --gRPC--> server 2 --relay 2--/
"""

import signal
import threading
import time
from collections import deque
from pathlib import Path

from conftest import ServerProcess
from proxy import Proxy

SERVER_START_S = 20.0  # a restarted server.py prints its banner within this, even when loaded
SERVER_STOP_S = 15.0  # SIGTERM to exit, Redis calls on the way included
LOG_TAIL_LINES = 30  # lines of each server's log kept for a failure message


class Slot:
    """One server position: a port kept across restarts, its relay, its current process."""

    def __init__(self, index: int, relay: Proxy, port: int | None = None):
        self.index = index
        self.relay = relay
        self.port = port
        self.process: ServerProcess | None = None
        self.generation = 0  # how many times it was started
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None


class Stage:
    """The processes of one hunt; every method returns within a deadline or raises."""

    def __init__(self, redis_proc, servers: int, log_dir: Path):
        self.redis = redis_proc
        self.log_dir = log_dir
        self.slots = [Slot(i, Proxy(redis_proc.port)) for i in range(servers)]
        self._lock = threading.Lock()  # guards which slots are up, for the bots' choice

    def start(self) -> None:
        for slot in self.slots:
            self.start_server(slot)

    def live_addresses(self) -> list[str]:
        with self._lock:
            return [slot.address for slot in self.slots if slot.up]

    # -- servers --------------------------------------------------------------

    def start_server(self, slot: Slot) -> None:
        """Start `slot`'s server (on its old port if it had one), draining its log."""
        url = f"redis://127.0.0.1:{slot.relay.port}/0"
        started: list = []
        thread = threading.Thread(
            target=lambda: started.append(
                ServerProcess("--redis-url", url, "--no-rate-limit", port=slot.port)
            ),
            daemon=True,
        )
        thread.start()
        thread.join(SERVER_START_S)
        if not started:
            raise AssertionError(f"server {slot.index} did not start within {SERVER_START_S} s")
        with self._lock:
            slot.process, slot.port = started[0], started[0].port
            slot.generation += 1
        log_path = self.log_dir / f"server{slot.index}.{slot.generation}.log"
        threading.Thread(target=self._drain_log, args=(slot, log_path), daemon=True).start()

    def _drain_log(self, slot: Slot, path: Path) -> None:
        """Read the server's stderr (a full pipe would block its logging) into a file."""
        process = slot.process
        with path.open("w") as out:
            try:
                for line in process.proc.stderr:
                    out.write(line)
                    if "refused an event" not in line:  # one per NOT_SENT: the file has them
                        slot.tail.append(f"[{slot.index}.{slot.generation}] {line.rstrip()}")
            except (OSError, ValueError):
                pass  # the pipe was closed by ServerProcess.stop()

    def kill_server(self, slot: Slot) -> None:
        with self._lock:
            process = slot.process
        process.signal(signal.SIGKILL)
        process.wait(SERVER_STOP_S)

    def stop_servers(self) -> list[int]:
        """SIGTERM every server at once; their exit codes."""
        for slot in self.slots:
            if slot.up:
                slot.process.signal(signal.SIGTERM)
        return [slot.process.wait(SERVER_STOP_S) for slot in self.slots]

    def close(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                slot.process.stop()
            slot.relay.close()

    # -- Redis ------------------------------------------------------------------

    def kill_redis(self) -> None:
        self.redis.kill()

    def start_redis(self) -> None:
        self.redis.start()  # same port, same dir: the append-only file brings the data back

    def logs(self) -> str:
        return "\n".join(line for slot in self.slots for line in slot.tail)


class Faults:
    """A seeded schedule of faults, one at a time, run on its own thread."""

    KINDS = ("redis_restart", "cut", "black_hole", "server_kill")

    def __init__(self, stage: Stage, rng, clock, kinds=KINDS):
        self.stage = stage
        self.rng = rng
        self.clock = clock  # seconds since the hunt began
        self.kinds = kinds
        self.timeline: list[str] = []
        self.last_kill_t = -1e9  # when a server was last SIGKILLed (its users linger until reaped)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop injecting; the fault under way is put right first."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the fault thread did not stop"
        if self.error is not None:
            raise AssertionError(f"a fault could not be injected or undone: {self.error!r}")

    def note(self, text: str) -> None:
        self.timeline.append(f"{self.clock():6.1f} s  {text}")

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.rng.uniform(1.0, 4.0)) and self.kinds:
                kind = self.rng.choice(self.kinds)
                getattr(self, f"_do_{kind}")(self.rng.uniform(0.5, 6.0))
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error
            self.note(f"fault thread failed: {error!r}")

    def _hold(self, seconds: float) -> None:
        self._stop.wait(seconds)  # a stop ends the fault early, never skips the undo

    def _do_redis_restart(self, seconds: float) -> None:
        self.note("redis-server SIGKILLed")
        self.stage.kill_redis()
        self._hold(seconds)
        self.stage.start_redis()
        self.note("redis-server restarted")

    def _do_cut(self, seconds: float) -> None:
        slot = self.rng.choice(self.stage.slots)
        self.note(f"server {slot.index}: Redis connection cut")
        slot.relay.cut()
        self._hold(seconds)
        slot.relay.restore()
        self.note(f"server {slot.index}: Redis connection restored")

    def _do_black_hole(self, seconds: float) -> None:
        slot = self.rng.choice(self.stage.slots)
        self.note(f"server {slot.index}: Redis connection black-holed")
        slot.relay.black_hole()
        self._hold(seconds)
        slot.relay.restore()
        self.note(f"server {slot.index}: Redis connection restored (black-holed ones reset)")

    def _do_server_kill(self, seconds: float) -> None:
        slot = self.rng.choice(self.stage.slots)
        self.note(f"server {slot.index} SIGKILLed")
        self.stage.kill_server(slot)
        self.last_kill_t = self.clock()
        self._hold(min(seconds, 3.0))
        started = time.monotonic()
        self.stage.start_server(slot)
        self.note(f"server {slot.index} restarted ({time.monotonic() - started:.1f} s to start)")
