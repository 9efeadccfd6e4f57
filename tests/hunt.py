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

import shutil
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
        self.frozen = False  # SIGSTOPped: bots do not pick it (a join there would hang)
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
            return [slot.address for slot in self.slots if slot.up and not slot.frozen]

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

    def kill_server(self, slot: Slot, sig=signal.SIGKILL) -> int:
        """Stop `slot`'s server with `sig` (SIGKILL, or SIGTERM: a planned restart); its code."""
        with self._lock:
            process = slot.process
        process.signal(sig)
        return process.wait(SERVER_STOP_S)

    def freeze_server(self, slot: Slot, frozen: bool) -> None:
        """SIGSTOP (frozen) or SIGCONT `slot`'s server: alive to the kernel, silent to all."""
        with self._lock:
            process, slot.frozen = slot.process, frozen
        process.signal(signal.SIGSTOP if frozen else signal.SIGCONT)

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

    def start_redis(self, empty: bool = False) -> None:
        """Same port, same dir: the append-only file brings the data back, unless `empty`."""
        if empty:
            for path in self.redis.directory.glob("appendonly*"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.redis.start()

    def logs(self) -> str:
        return "\n".join(line for slot in self.slots for line in slot.tail)


class Faults:
    """A seeded schedule of faults, one at a time, run on its own thread."""

    KINDS = (
        "redis_restart", "cut", "black_hole", "server_kill", "server_term", "server_freeze",
        "slow_link", "redis_empty", "burst",
    )  # fmt: skip

    def __init__(self, stage: Stage, rng, clock, kinds=KINDS, burst=None):
        self.stage = stage
        self.rng = rng
        self.clock = clock  # seconds since the hunt began
        self.kinds = kinds
        self.burst = burst  # burst(address): users arriving on one server and dying together
        self.timeline: list[str] = []
        self.term_codes: list[int] = []  # exit codes of servers stopped with SIGTERM
        self.frozen: list[tuple] = []  # (address, from t, to t): servers SIGSTOPped
        self.wiped: list[float] = []  # when Redis was killed to come back empty
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

    def _do_redis_empty(self, seconds: float) -> None:
        self.note("redis-server SIGKILLed (to come back empty)")
        self.stage.kill_redis()
        self.wiped.append(self.clock())
        self._hold(min(seconds, 2.0))
        self.stage.start_redis(empty=True)
        self.note("redis-server restarted empty")

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

    def _do_slow_link(self, seconds: float) -> None:
        slot, rtt_s = self.rng.choice(self.stage.slots), self.rng.uniform(0.5, 1.8)
        self.note(f"server {slot.index}: Redis round trips {rtt_s:.1f} s longer")
        slot.relay.slow(rtt_s)
        self._hold(seconds)
        slot.relay.slow(0)
        self.note(f"server {slot.index}: Redis link fast again")

    def _do_server_freeze(self, seconds: float) -> None:
        slot = self.rng.choice(self.stage.slots)
        self.note(f"server {slot.index} SIGSTOPped")
        self.stage.freeze_server(slot, True)
        frozen_t = self.clock()
        self._hold(seconds * 2)  # up to 12 s: past 10 s it is reaped, and wakes to find it out
        self.stage.freeze_server(slot, False)
        self.frozen.append((slot.address, frozen_t, self.clock()))
        self.last_kill_t = self.clock()
        self.note(f"server {slot.index} SIGCONTed")

    def _do_server_term(self, seconds: float) -> None:
        slot = self.rng.choice(self.stage.slots)
        self.note(f"server {slot.index} SIGTERMed (a planned restart)")
        self.term_codes.append(self.stage.kill_server(slot, signal.SIGTERM))
        self._hold(min(seconds, 2.0))
        self.stage.start_server(slot)
        self.note(f"server {slot.index} restarted")

    def _do_burst(self, seconds: float) -> None:
        slot = self.rng.choice(self.stage.slots)
        if self.burst is not None and slot.up:
            self.note(f"server {slot.index}: a burst of users arrive, then all die at once")
            self.burst(slot.address, seconds)

    def _do_server_kill(self, seconds: float) -> None:
        slot = self.rng.choice(self.stage.slots)
        self.note(f"server {slot.index} SIGKILLed")
        self.stage.kill_server(slot)
        self.last_kill_t = self.clock()
        self._hold(min(seconds, 3.0))
        started = time.monotonic()
        self.stage.start_server(slot)
        self.note(f"server {slot.index} restarted ({time.monotonic() - started:.1f} s to start)")
