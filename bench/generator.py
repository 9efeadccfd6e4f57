"""The load generator's parent side: the worker processes of load.py, and who plays what.

bench.py drives a `LoadGenerator`: it spawns the workers (load.py), shares
the clients out among them in contiguous blocks, picks which clients send
(`sender_indices`, spread over the workers and, with rooms, over the
rooms), and merges what every worker measured into one phase's figures.
"""

import multiprocessing
import time
from collections import Counter

import psutil

from bench.load import _worker_main, room_of, rooms_of
from bench.report import merge_reports

CLIENTS_PER_CHANNEL = 32  # default streams multiplexed on one channel (one TCP connection)


def sender_indices(clients: int, senders: int, rooms: int) -> dict[int, int]:
    """Which clients send: {client index: sender number}.

    Sender k starts from index k * clients / senders, so senders spread evenly
    over the workers' blocks; with rooms it moves on to the next free client
    of room k % rooms, so that every room has its share of senders.
    """
    roles: dict[int, int] = {}
    for k in range(senders):
        index = k * clients // senders
        while index in roles or (rooms > 1 and room_of(index, rooms) != room_of(k, rooms)):
            index = (index + 1) % clients
        roles[index] = k
    return roles


class LoadGenerator:
    """The parent's handle on the worker processes; every call waits for all of them."""

    def __init__(self, workers: int, clients_per_channel: int = CLIENTS_PER_CHANNEL):
        context = multiprocessing.get_context("spawn")  # no grpc state crosses a fork
        self.progress = [context.Array("q", 3, lock=False) for _ in range(workers)]
        pipes = [context.Pipe() for _ in range(workers)]
        self.conns = [parent for parent, _ in pipes]
        self.processes = [
            context.Process(target=_worker_main, args=(child, progress), daemon=True)
            for (_, child), progress in zip(pipes, self.progress, strict=True)
        ]
        for process in self.processes:
            process.start()
        self.psutil = [psutil.Process(process.pid) for process in self.processes]
        self.clients_per_channel = clients_per_channel
        self.clients = 0
        self.rooms = 1
        self.each = 1  # rooms each client is in

    def _each(self, command: str, kwargs_list: list[dict]) -> list:
        for conn, kwargs in zip(self.conns, kwargs_list, strict=True):
            conn.send((command, kwargs))
        results = []
        for conn in self.conns:
            status, result = conn.recv()
            if status == "error":
                raise RuntimeError(f"load worker failed:\n{result}")
            results.append(result)
        return results

    def connect(self, target: str, clients: int, prefix: str, rooms: int = 1, each=1) -> int:
        """Open the channels for `clients` clients named prefix0, prefix1, ... in `rooms`
        (each client in `each` of them)."""
        self.clients, self.rooms, self.each = clients, rooms, each
        workers = len(self.conns)
        shares = [{} for _ in range(workers)]  # contiguous blocks, so senders spread evenly
        for i in range(clients):
            shares[i * workers // clients][i] = f"{prefix}{i}"
        kwargs = [{"target": target, "names": share, "rooms": rooms, "each": each,
                   "per_channel": self.clients_per_channel} for share in shares]  # fmt: skip
        return sum(self._each("connect", kwargs))

    def join(self, go_in_s: float = 0.3) -> dict:
        """Every client joins at the same moment; seconds until the last one is in."""
        go_at_ns = time.monotonic_ns() + int(go_in_s * 1e9)
        reports = self._each("join", [{"go_at_ns": go_at_ns}] * len(self.conns))
        refused = Counter()
        for report in reports:
            refused.update(report["refused"])
        return {
            "join_s": (max(r["done_ns"] for r in reports) - go_at_ns) / 1e9,
            "joined": sum(r["joined"] for r in reports),
            "refused": sum(refused.values()),
            "refused_codes": dict(refused),
        }

    def load(self, tag, senders, rate, duration_s, drain_s, chars, start_in_s=0.3) -> dict:
        """Run one load phase; merge what every worker measured."""
        roles = sender_indices(self.clients, senders, self.rooms)
        start_ns = time.monotonic_ns() + int(start_in_s * 1e9)
        kwargs = dict(tag=tag, senders=roles, total_senders=senders, rate=rate, chars=chars,
                      duration_s=duration_s, start_ns=start_ns, drain_s=drain_s,
                      rooms=self.rooms)  # fmt: skip
        room_sizes = Counter(room for i in range(self.clients)
                             for room in rooms_of(i, self.rooms, self.each))  # fmt: skip
        merged = merge_reports(self._each("load", [kwargs] * len(self.conns)), room_sizes)
        merged["active_s"] = max(duration_s, (merged.pop("last_ns") - start_ns) / 1e9)
        return merged

    def leave(self) -> None:
        self._each("leave", [{}] * len(self.conns))

    def totals(self) -> tuple[int, int]:
        """(messages sent, deliveries received) so far in this phase, for a progress line."""
        return sum(p[0] for p in self.progress), sum(p[1] for p in self.progress)

    def events(self) -> int:
        """Every event the clients received so far (joins and notices too)."""
        return sum(p[2] for p in self.progress)

    def cpu_s(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.psutil)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(("quit", {}))
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
