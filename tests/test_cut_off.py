"""A server cut off from a Redis that other servers share: it says so, and holds no name twice."""

import time

import grpc
import redis
from conftest import wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from proxy import Proxy
from wire import Conn, health, join, join_event

import chat_pb2 as pb

CUT_NOTICED_S = 10.0  # a cut link is noticed by the next call that fails (heartbeat: 2 s)
REAPED_S = 15.0  # a server silent this long has been reaped (its alive key lasts 10 s)
SETTLED_S = 8.0  # after Redis is emptied: every server claimed its names again, and more


def standard_health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def test_server_cut_off_from_shared_redis_is_not_serving_until_it_is_back(
    server_process, redis_proc
):
    """When its link to a shared Redis is cut, both health checks say NOT_SERVING; then SERVING."""
    proxy = Proxy(redis_proc.port)
    try:
        cut_off = server_process("--redis-url", f"redis://127.0.0.1:{proxy.port}/0")
        server_process("--redis-url", redis_proc.url)  # the other server sharing the Redis
        assert health(cut_off.address).status == "SERVING"
        alice = join(cut_off.address, "alice")
        proxy.cut()
        assert wait_until(lambda: health(cut_off.address).status == "NOT_SERVING", CUT_NOTICED_S)
        assert standard_health(cut_off.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        alice.say("while cut off")
        refusal = alice.next_event("system_event", where=lambda e: e.code == pb.NOT_SENT)
        assert "not sent" in refusal.system_event.message
        proxy.restore()
        assert wait_until(lambda: health(cut_off.address).status == "SERVING", CUT_NOTICED_S)
        assert standard_health(cut_off.address) == health_pb2.HealthCheckResponse.SERVING
        alice.close()
    finally:
        proxy.close()


def outcome(address: str, name: str) -> grpc.StatusCode | None:
    """None if `name` joined (then left again), else the status its join ended with."""
    conn = Conn(address, join_event(name))
    assert wait_until(lambda: conn.ended.is_set() or not conn.events.empty())
    status = conn.wait_end() if conn.ended.is_set() else None
    conn.close()
    return status


def test_server_cut_off_from_shared_redis_ends_its_sessions_before_it_is_reaped(
    server_process, redis_proc
):
    """When cut off from a shared Redis, a server ends its sessions before its names are freed."""
    proxy = Proxy(redis_proc.port)
    try:
        cut_off = server_process("--redis-url", f"redis://127.0.0.1:{proxy.port}/0")
        other = server_process("--redis-url", redis_proc.url)
        alice = join(cut_off.address, "alice")
        proxy.black_hole()
        alice.next_event("system_event", REAPED_S, where=lambda e: e.code == pb.SHUTTING_DOWN)
        alice.wait_end()
        assert health(cut_off.address).active_clients == 0
        # Until the cut-off server is reaped its claim holds; then alice may join elsewhere.
        assert wait_until(lambda: outcome(other.address, "alice") is None, REAPED_S, 0.5)
        assert health(cut_off.address).active_clients == 0
    finally:
        proxy.close()


def test_redis_emptied_keeps_each_name_with_the_session_that_joined_first(
    server_process, redis_proc
):
    """When Redis is emptied, an impostor on another server never gets a name online elsewhere."""
    first, second = (server_process("--redis-url", redis_proc.url) for _ in range(2))
    alice = join(first.address, "alice")
    with redis.Redis.from_url(redis_proc.url) as client:
        client.flushall()
    outcomes = set()
    deadline = time.monotonic() + SETTLED_S
    while time.monotonic() < deadline:
        outcomes.add(outcome(second.address, "alice"))  # never "joined" (None)
        time.sleep(0.1)
    assert None not in outcomes, outcomes
    assert grpc.StatusCode.ALREADY_EXISTS in outcomes  # decided once the names are back
    assert not alice.ended.is_set()  # the first session keeps its name
    alice.say("still here")
    assert alice.next_event("chat_message").chat_message.message == "still here"
    alice.close()


def test_join_while_shared_redis_is_out_of_memory_is_unavailable_until_it_has_room(
    server_process, redis_proc
):
    """When a shared Redis refuses writes (out of memory), a join is UNAVAILABLE, then taken."""
    server = server_process("--redis-url", redis_proc.url)
    server_process("--redis-url", redis_proc.url)  # another server sharing the Redis
    with redis.Redis.from_url(redis_proc.url) as client:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # every write is refused: OOM
        try:
            assert outcome(server.address, "alice") == grpc.StatusCode.UNAVAILABLE
        finally:
            client.config_set("maxmemory", 0)
    assert outcome(server.address, "alice") is None
