"""Rooms: idle ones leave Redis (--room-idle-days), and a network opens only a few."""

import time

import grpc
import pytest
import redis
from conftest import wait_until
from wire import Conn, enter_event, join, join_event

import chat_pb2 as pb
from cluster.keys import ROOM_PREFIX, ROOMS_ACTIVE_KEY
from reader import NEW_ROOMS_BURST

pytestmark = pytest.mark.timeout(60)
IDLE_DAYS = 0.00003  # 2.6 s; the server then sweeps every 0.65 s
IDLE_S = IDLE_DAYS * 86_400


def test_idle_room_is_removed_with_its_history_and_an_occupied_one_is_kept(
    server_process, redis_proc
):
    """When a room has had no member and no message for the idle time, its history goes;
    a room whose member stays, silent as long, is kept until it empties."""
    server = server_process(
        "--redis-url", redis_proc.url, "--no-rate-limit", "--room-idle-days", str(IDLE_DAYS)
    )
    kv = redis.Redis(port=redis_proc.port, decode_responses=True)
    bob = join(server.address, "bob", room="kept")
    bob.say("first, and then silence")
    bob.messages(1)
    alice = join(server.address, "alice", room="tmp")
    said = time.monotonic()  # before the message: its id's time is later
    alice.say("hi")
    alice.messages(1)
    alice.close()  # tmp is empty from now on
    assert kv.exists(ROOM_PREFIX + "tmp") and kv.exists(ROOM_PREFIX + "kept")
    assert wait_until(lambda: not kv.exists(ROOM_PREFIX + "tmp"), timeout=20)
    assert time.monotonic() - said >= IDLE_S  # not before it was idle
    assert kv.exists(ROOM_PREFIX + "kept")  # older message, but bob is in it
    assert kv.hexists(ROOMS_ACTIVE_KEY, "kept") and not kv.hexists(ROOMS_ACTIVE_KEY, "tmp")
    again = Conn(server.address, join_event("carol", room="tmp"))  # opens it again, empty
    assert not [e for e in drain(again) if e.WhichOneof("event") == "chat_message"]
    again.close()
    bob.close()
    assert wait_until(lambda: not kv.exists(ROOM_PREFIX + "kept"), timeout=20)


def drain(conn) -> list:
    """A fresh joiner's events up to the "in #room" notice: its history, then its join."""
    events = [conn.next_event()]
    while events[-1].WhichOneof("event") != "system_event":
        events.append(conn.next_event())
    return events


def test_rooms_opened_by_one_network_are_limited(server_factory):
    """When one network opens room after room, past NEW_ROOMS_BURST it is refused with a retry
    time, on a later join and on a stream's first; a room someone is in can still be joined."""
    server = server_factory(rate=1000.0, burst=1000)
    bob = join(server.address, "bob", room="busy")  # one room opened from 127.0.0.0/24
    alice = join(server.address, "alice")
    for n in range(NEW_ROOMS_BURST - 1):
        alice.send(enter_event(f"r{n}"))
        alice.next_event("user_event", where=lambda e, n=n: e.room == f"r{n}")
    alice.send(enter_event("one-too-many"))
    notice = alice.next_event("system_event", where=lambda e: e.code == pb.RATE_LIMITED)
    assert "too many new rooms" in notice.system_event.message
    assert "retry in" in notice.system_event.message
    alice.send(enter_event("busy"))  # bob is there: not a new room
    alice.next_event("user_event", where=lambda e: e.room == "busy" and e.username == "alice")
    carol = Conn(server.address, join_event("carol", room="another-new"))
    assert carol.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many new rooms" in carol.error.details()
    alice.close()
    bob.close()
