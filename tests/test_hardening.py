"""Hostile and unlucky input to one server: floods, reconnect loops, idle tool streams.

Each test is one way a client (or a stock gRPC tool) could hog or spam the
server; each checks that the server answers it and keeps serving the rest.
"""

import logging
import threading

import grpc
import pytest
from conftest import wait_until
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_reliability import STALLED_CHANNEL_OPTIONS
from wire import Conn, health, join, join_event

import chat_pb2 as pb
import chat_pb2_grpc
from access.caps import LONG_CALLS_MAX

pytestmark = pytest.mark.timeout(60)


class IdleReflection:
    """A reflection stream that a tool opened and then left idle."""

    def __init__(self, channel):
        self._done = threading.Event()
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        self.call = stub.ServerReflectionInfo(self._requests(), timeout=30)
        self.refused = threading.Event()  # set if the server refused the stream
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self):
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        self._done.wait()

    def _read(self):
        try:
            for _ in self.call:
                pass
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.refused.set()

    def close(self):
        self._done.set()
        self.call.cancel()


def test_idle_reflection_streams_cannot_starve_health_checks_or_chats(server_factory):
    """When 18 reflection streams sit idle, HealthCheck and a new chat still get in."""
    server = server_factory(max_clients=2)
    with grpc.insecure_channel(server.address) as channel:
        idle = [IdleReflection(channel) for _ in range(18)]
        assert wait_until(lambda: sum(s.refused.is_set() for s in idle) == 18 - LONG_CALLS_MAX)
        assert health(server.address).status == "SERVING"
        alice, bob = join(server.address, "alice"), join(server.address, "bob")
        assert health(server.address).active_clients == 2
        for stream in idle:
            stream.close()
    alice.close()
    bob.close()


def test_bad_event_flood_is_summarised_in_the_log_and_the_sender_is_cut_off(server_factory, caplog):
    """When a client that never reads sends 20,000 empty events, the log stays short
    and the client is cut off once its queue of refusals is full."""
    caplog.set_level(logging.INFO)
    server = server_factory(queue_max_events=64, evict_grace_s=0.5)
    bob = join(server.address, "bob")
    channel = grpc.insecure_channel(server.address, options=STALLED_CHANNEL_OPTIONS)
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    flood = stub.Chat(iter([join_event("flood")] + [pb.ClientEvent()] * 20_000), timeout=30)
    bob.next_event("user_event", where=lambda e: e.username == "flood" and e.type == pb.USER_LEFT)
    with pytest.raises(grpc.RpcError) as ended:
        for _ in flood:
            pass
    assert ended.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED)
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 0 < len(refusals) < 50, f"{len(refusals)} refusal lines"
    assert health(server.address).active_clients == 1
    channel.close()
    bob.close()


def answer(event) -> bool:
    """An answer to something said: its echo, or a rate-limit refusal."""
    kind = event.WhichOneof("event")
    return kind == "chat_message" or (
        kind == "system_event" and event.system_event.code == pb.RATE_LIMITED
    )


def test_reconnecting_does_not_refill_the_rate_limit(server_factory):
    """When a client leaves and rejoins to send more, its bucket is the one it left."""
    server = server_factory(rate=0.2, burst=2)
    bob = join(server.address, "bob")
    accepted = 0
    for _ in range(5):
        alice = join(server.address, "alice")
        alice.say("again")
        alice.say("again")
        for _ in range(2):
            event = alice.next_event(where=answer)
            accepted += event.WhichOneof("event") == "chat_message"
        alice.close()
        bob.next_event("user_event", where=lambda e: e.type == pb.USER_LEFT)
    assert accepted == 2, f"{accepted} messages got through five reconnects with a burst of 2"
    bob.close()


def test_joining_too_often_from_one_address_is_refused_with_a_retry_time(server_factory):
    """When one address opens joins in a loop, past the join burst it is told to wait."""
    server = server_factory(rate=1.0, join_rate=0.1, join_burst=3)
    for n in range(3):
        join(server.address, f"user{n}").close()
    refused = Conn(server.address, join_event("user3"))
    assert refused.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in" in refused.error.details()
    refused.close()


def open_chat_streams(server) -> int:
    """Chat calls whose handler is running, joined or not (the taken slots)."""
    servicer = server.servicer
    return servicer._settings.max_clients - servicer._slots._value


def test_a_join_during_the_shutdown_grace_is_refused(server_factory):
    """When a stream opened before shutdown joins during the grace, it is refused."""
    server = server_factory()
    alice = join(server.address, "alice")
    late = Conn(server.address, None)  # opened now, joins later
    assert wait_until(lambda: open_chat_streams(server) == 2)
    server.servicer.shut_down()
    alice.next_event("system_event", where=lambda e: e.code == pb.SHUTTING_DOWN)
    late.send(join_event("late"))
    assert late.wait_end() == grpc.StatusCode.UNAVAILABLE
    assert server.servicer.hub.names() == []
    alice.close()
    late.close()
