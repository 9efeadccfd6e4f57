"""How to lay rooms out in Redis: four layouts measured at 1 and 1,000 rooms.

Not part of the chat program: the measurement behind the layout in
cluster/keys.py (the README's "Running more than one server" quotes it). Run
`python -m bench.redis_layout` from the repository's top level; it starts a
private redis-server and prints one table. For each layout and room count:

1. **write**: µs per message, 20,000 messages over the rooms in pipelined
   batches of 200 (as the store's writer sends them);
2. **follow**: µs per wake of one following server, when each XREAD
   finds one new message (a quiet chat: the worst case per message);
3. **history**: ms to read a quiet room's last 50 (written first, then
   20,000 messages to the other rooms, every stream capped at 10,000), and
   how many of its 50 are still there.

Each figure is the best of REPEATS runs; memory is Redis's after a run.

The layouts: `one stream` (a room field, nothing else), `bus+rooms` (every
message to one bus and to its room's stream), `per room` (a stream per room,
followers XREAD them all), `lobby+bus` (the lobby's stream as before, every
other room to one bus and its room's stream; the one chosen).
"""

import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the chat's modules

from bench.servers import PrivateRedis  # noqa: E402
from cluster.lua import APPEND  # noqa: E402 - the script the store runs

MESSAGES = 20_000
BATCH = 200  # messages per pipelined round trip, as cluster.writer.WRITE_BATCH_MAX
HISTORY_MAX = 10_000  # --history-max's default: MAXLEN ~ of every stream
HISTORY = 50  # --history's default
WAKES = 300  # follower reads measured
REPEATS = 3  # runs of each layout; the table shows the best
FIELDS = {"username": "alice", "message": "x" * 40, "timestamp": 1_700_000_000,
          "server": "0123456789ab", "seq": 1}  # fmt: skip


def stream_of(layout: str, room: str) -> str:
    """Where `room`'s history is read."""
    if layout == "one stream" or (room == "lobby" and layout in ("per room", "lobby+bus")):
        return "chat:messages"
    return f"chat:room:{room}"


def followed(layout: str, rooms: list[str]) -> list[str]:
    """The streams a following server reads."""
    return {
        "one stream": ["chat:messages"],
        "bus+rooms": ["chat:bus"],
        "per room": [stream_of("per room", room) for room in rooms],
        "lobby+bus": ["chat:messages", "chat:bus"],
    }[layout]


def write(pipe, append, layout: str, room: str) -> None:
    """One message of `room`, as the layout writes it."""
    fields = {**FIELDS, "room": room}
    if layout in ("one stream", "per room") or (layout, room) == ("lobby+bus", "lobby"):
        pipe.xadd(stream_of(layout, room), fields, maxlen=HISTORY_MAX, approximate=True)
    else:
        args = [HISTORY_MAX, "*", *(v for pair in fields.items() for v in pair)]
        append(keys=["chat:bus", stream_of(layout, room)], args=args, client=pipe)


def measure_write(client, append, layout: str, rooms: list[str]) -> float:
    started = time.perf_counter()
    for start in range(0, MESSAGES, BATCH):
        pipe = client.pipeline(transaction=False)
        for n in range(start, start + BATCH):
            write(pipe, append, layout, rooms[n % len(rooms)])
        pipe.execute()
    return (time.perf_counter() - started) / MESSAGES * 1e6


def measure_follow(client, append, layout: str, rooms: list[str]) -> float:
    keys = followed(layout, rooms)
    positions = {key: next(iter(client.xrevrange(key, count=1)), ("0-0",))[0] for key in keys}
    spent = 0.0
    for n in range(WAKES):
        pipe = client.pipeline(transaction=False)
        write(pipe, append, layout, rooms[n % len(rooms)])
        pipe.execute()
        started = time.perf_counter()
        reply = client.xread(positions, count=500)
        spent += time.perf_counter() - started
        for key, entries in reply:
            positions[key] = entries[-1][0]
    return spent / WAKES * 1e6


def measure_history(client, layout: str, quiet: str) -> tuple[float, int]:
    started = time.perf_counter()
    found, last, page = [], "+", HISTORY
    while len(found) < HISTORY:  # one stream: scan back in growing pages, keep the room's
        entries = client.xrevrange(stream_of(layout, quiet), max=last, count=page)
        found += [e for e in entries if e[1].get("room") == quiet][: HISTORY - len(found)]
        if len(entries) < page:
            break
        last, page = f"({entries[-1][0]}", min(2 * page, 1000)
    return (time.perf_counter() - started) * 1000, len(found)


def run(client, layout: str, room_count: int) -> list:
    client.flushall()
    append = client.register_script(APPEND)
    rooms = ["lobby"] + [f"room{n}" for n in range(1, room_count)]
    quiet = rooms[-1]
    pipe = client.pipeline(transaction=False)
    for _ in range(HISTORY):
        write(pipe, append, layout, quiet)
    pipe.execute()
    busy = [room for room in rooms if room != quiet] or rooms
    write_us = measure_write(client, append, layout, busy)
    history_ms, found = measure_history(client, layout, quiet)
    follow_us = measure_follow(client, append, layout, rooms)
    memory_mb = client.info("memory")["used_memory"] / 1e6
    return [layout, room_count, write_us, follow_us, history_ms, found, memory_mb]


def best_of(client, layout: str, room_count: int) -> list:
    """The best of REPEATS runs for each figure (a shared machine only ever adds time)."""
    runs = [run(client, layout, room_count) for _ in range(REPEATS)]
    return [layout, room_count, *(min(column) for column in list(zip(*runs, strict=True))[2:])]


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        server = PrivateRedis(Path(directory))
        try:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            rows = [best_of(client, layout, rooms) for rooms in (1, 1000)
                    for layout in ("one stream", "bus+rooms", "per room", "lobby+bus")]  # fmt: skip
            client.close()
        finally:
            server.stop()
    print("| layout | rooms | write µs/msg | follow µs/wake | quiet room's last 50: ms | "
          "found | Redis MB |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for layout, rooms, write_us, follow_us, history_ms, found, memory in rows:
        print(f"| {layout} | {rooms:,} | {write_us:.1f} | {follow_us:.0f} | {history_ms:.2f} | "
              f"{found}/{HISTORY} | {memory:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
