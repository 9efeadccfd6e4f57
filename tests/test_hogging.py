"""No cheap hogging: streams capped per address (access/caps.py), typing floods capped (hub.py)."""

import socket
import threading
import time

import grpc
import pytest
from conftest import wait_until
from wire import EVENT_TIMEOUT_S, Conn, join, join_event

import chat_pb2 as pb
from server import create_server
from session import Settings
from store import MemoryStore

pytestmark = pytest.mark.timeout(30)
OTHER_HOST = "127.0.1.2"  # a loopback address in another /24: "another network" to the server


class FromAddress:
    """A relay on 127.0.0.1 whose connections reach `target_port` from `source`."""

    def __init__(self, source: str, target_port: int):
        self._source, self._target_port = source, target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return  # closed
            up = socket.socket()
            up.bind((self._source, 0))
            up.connect(("127.0.0.1", self._target_port))
            self._sockets += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def can_bind(address: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((address, 0))
        return True
    except OSError:
        return False


@pytest.fixture
def capped_server():
    """A server on every interface, so another loopback address reaches it too."""
    settings = Settings(rate=None, max_streams_per_address=3, join_timeout_s=2.0)
    server = create_server(settings, MemoryStore(), "0.0.0.0:0")
    server.start()
    yield server
    server.stop(grace_s=0.5)


@pytest.mark.skipif(not can_bind(OTHER_HOST), reason=f"cannot bind {OTHER_HOST} here")
def test_a_fourth_stream_from_one_address_is_refused_while_others_get_in(capped_server):
    """With --max-streams-per-address 3, a 4th open stream is RESOURCE_EXHAUSTED; not others'."""
    address = f"127.0.0.1:{capped_server.port}"
    idle = [Conn(address, None) for _ in range(3)]  # open, never joined: they count too
    per_address = capped_server.per_address
    assert wait_until(lambda: per_address.open_streams("127.0.0.0/24") == 3)
    fourth = Conn(address, join_event("mallory"))
    assert fourth.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many open chats" in fourth.error.details()
    relay = FromAddress(OTHER_HOST, capped_server.port)
    try:
        bob = join(relay.address, "bob")  # another host still gets in
        bob.close()
    finally:
        relay.close()
    # An idle stream still ends at the join timeout, and gives its slot back.
    for conn in idle:
        assert conn.wait_end(timeout=EVENT_TIMEOUT_S) == grpc.StatusCode.CANCELLED
    alice = join(address, "alice")
    alice.close()


def test_a_typing_flood_reaches_others_as_a_handful_of_events(capped_server):
    """When a client flips typing 2,000 times, others see a few changes; a message still arrives."""
    address = f"127.0.0.1:{capped_server.port}"
    alice, bob = join(address, "alice"), join(address, "bob")
    alice.next_event("user_event", where=lambda e: e.username == "bob")
    bob.next_event("system_event")  # the online list: bob's join is complete
    started = time.monotonic()
    for n in range(2000):
        alice.typing(pb.TYPING_START if n % 2 == 0 else pb.TYPING_STOP)
    alice.say("after the flood")
    seen = [bob.next_event()]
    while seen[-1].WhichOneof("event") != "chat_message":
        seen.append(bob.next_event())
    took_s = time.monotonic() - started
    assert seen[-1].chat_message.message == "after the flood"
    typing = [e for e in seen if e.WhichOneof("event") == "typing_event"]
    assert 1 <= len(typing) <= 10, len(typing)
    assert took_s < 3.0, took_s
    alice.close()
    bob.close()
