"""A server cut off from a Redis that other servers share: it says so, and holds no name twice."""

import grpc
from conftest import wait_until
from grpc_health.v1 import health_pb2, health_pb2_grpc
from proxy import Proxy
from wire import health, join

import chat_pb2 as pb

CUT_NOTICED_S = 10.0  # a cut link is noticed by the next call that fails (heartbeat: 2 s)


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
