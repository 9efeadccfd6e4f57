"""Reliability of one server (PROTOCOL: Leave, Slow clients): slow readers, limits, dead peers.

Each test breaks one thing on purpose and checks that the server drops only
the client at fault, tells the others, and frees that client's threads.
"""

import threading
import time

import grpc
from conftest import wait_until
from proxy import Proxy
from wire import Conn, health, join, join_event

import chat_pb2 as pb
import chat_pb2_grpc
from server import SERVER_OPTIONS

LONG_TEXT = "x" * 1500  # large messages fill a flow-control window quickly
# A client channel that never reads: no BDP probing and a 16 KiB stream
# window, so gRPC flow control stops the server's sends after a few messages
# (by default the client buffers megabytes before that happens).
STALLED_CHANNEL_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16384)]
# Keepalive short enough for a test: ping every 1 s, give up 1 s later
# (both timeouts, as in server.SERVER_OPTIONS).
FAST_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.http2.ping_timeout_ms", 1000),
]


class StalledStream:
    """A Chat stream that joins as `name`, then neither reads nor sends."""

    def __init__(self, address: str, name: str):
        self._release = threading.Event()
        self.channel = grpc.insecure_channel(address, options=STALLED_CHANNEL_OPTIONS)
        stub = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.call = stub.Chat(self._requests(name), timeout=30)

    def _requests(self, name: str):
        yield join_event(name)
        self._release.wait()  # keep the request side open, silently

    def read_to_end(self) -> tuple[int, grpc.StatusCode]:
        """Read at last: how many events were waiting, and how the stream ended."""
        count = 0
        try:
            for _ in self.call:
                count += 1
        except grpc.RpcError as error:
            return count, error.code()
        return count, grpc.StatusCode.OK

    def close(self) -> None:
        self._release.set()
        self.call.cancel()
        self.channel.close()


def left(name: str):
    return lambda e: e.type == pb.USER_LEFT and e.username == name


class Talker:
    """A joined Conn that keeps every chat message and user event it reads."""

    def __init__(self, address: str, name: str):
        self.name = name
        self.conn = join(address, name)
        self.messages: list[pb.ChatMessageEvent] = []
        self.user_events: list[pb.UserEvent] = []

    def read_messages(self, count: int) -> list[pb.ChatMessageEvent]:
        got = []
        while len(got) < count:
            event = self.conn.next_event()
            if event.WhichOneof("event") == "user_event":
                self.user_events.append(event.user_event)
            elif event.WhichOneof("event") == "chat_message":
                got.append(event.chat_message)
        self.messages += got
        return got


def chat_until_evicted(server, talkers: list[Talker], batch: int = 16) -> list[str]:
    """Talkers take turns saying LONG_TEXT in batches until the one silent client is gone.

    Every talker reads each batch before the next is sent, so only the
    silent client falls behind. Returns the texts sent.
    """
    sent = []
    while server.servicer.hub.count() == len(talkers) + 1:
        assert len(sent) < 2000, "the silent client was never evicted"
        texts = [f"{len(sent) + i:05d} {LONG_TEXT}" for i in range(batch)]
        for i, text in enumerate(texts):
            talkers[i % len(talkers)].conn.say(text)
        for talker in talkers:
            talker.read_messages(batch)
        sent += texts
    return sent


def test_slow_client_is_evicted_and_others_get_every_message(server_factory):
    """When a client stops reading, the server evicts it with RESOURCE_EXHAUSTED; others go on."""
    server = server_factory(queue_max_events=64)
    slow = StalledStream(server.address, "slow")
    assert wait_until(lambda: server.servicer.hub.count() == 1)
    talkers = [Talker(server.address, f"talker{i}") for i in range(4)]
    sent = chat_until_evicted(server, talkers)
    after = [f"after {i}" for i in range(8)]  # the chat goes on without the slow one
    for text in after:
        talkers[0].conn.say(text)
    for talker in talkers:
        talker.read_messages(len(after))
        leaves = [e.username for e in talker.user_events if e.type == pb.USER_LEFT]
        assert leaves == ["slow"]
        assert talker.messages == talkers[0].messages  # same messages, same order, same ids
    received = talkers[0].messages
    assert sorted(m.message for m in received) == sorted(sent + after)
    for talker in talkers:  # each talker's own messages arrive in the order it sent them
        own = [m.message for m in received if m.username == talker.name]
        assert own == sorted(own)
    waiting, status = slow.read_to_end()
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < waiting < len(sent)
    assert health(server.address).active_clients == 4
    for talker in talkers:
        talker.conn.close()
    slow.close()


def test_evicted_client_that_never_reads_is_cut_off_after_grace(server_factory):
    """When an evicted client still does not read, the server cancels its call and frees it."""
    server = server_factory(queue_max_events=16, evict_grace_s=0.3, max_clients=3)
    slow = StalledStream(server.address, "slow")
    assert wait_until(lambda: server.servicer.hub.count() == 1)
    talkers = [Talker(server.address, f"talker{i}") for i in range(2)]
    chat_until_evicted(server, talkers)
    # The slot comes back only when the slow stream's handler has finished.
    assert wait_until(lambda: try_join(server.address, "newcomer"), timeout=5)
    assert slow.read_to_end()[1] == grpc.StatusCode.CANCELLED
    for talker in talkers:
        talker.conn.close()
    slow.close()


def try_join(address: str, name: str) -> bool:
    """Join as `name`: True if let in (then leave at once), False if the server is full."""
    conn = Conn(address, join_event(name))
    assert wait_until(lambda: conn.ended.is_set() or not conn.events.empty())
    if conn.ended.is_set():
        assert conn.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    conn.half_close()
    assert conn.wait_end() == grpc.StatusCode.OK
    return True


def test_client_past_max_clients_is_refused_at_once(server_factory):
    """When --max-clients streams are open, the next Chat fails at once with RESOURCE_EXHAUSTED."""
    server = server_factory(max_clients=8)
    clients = [join(server.address, f"user{i}") for i in range(8)]
    started = time.monotonic()
    ninth = Conn(server.address, join_event("ninth"))
    assert ninth.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 2.0  # at once: a waiting call would hang to its deadline
    assert health(server.address).active_clients == 8  # unary calls still answered
    clients[0].half_close()  # leaves; its stream ends once its handler is done
    assert clients[0].wait_end() == grpc.StatusCode.OK
    join(server.address, "ninth").close()
    for conn in clients[1:]:
        conn.close()


def test_message_over_64_kib_is_refused_by_grpc(server_factory):
    """When a client sends an event over 64 KiB, gRPC ends its call with RESOURCE_EXHAUSTED."""
    server = server_factory()
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    alice.say("y" * 60_000)  # under 64 KiB: reaches the server, too long for a chat line
    alice.next_event("system_event", where=lambda e: e.code == pb.INVALID_EVENT)
    alice.say("z" * (64 * 1024))
    assert alice.wait_end() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bob.next_event("user_event", where=left("alice"))
    bob.close()


def test_stream_that_never_joins_is_cancelled_after_join_timeout(server_factory):
    """When a stream sends nothing for join_timeout_s, the server cancels it and frees its slot."""
    server = server_factory(join_timeout_s=0.3, max_clients=1)
    started = time.monotonic()
    silent = Conn(server.address, None)
    assert silent.wait_end() == grpc.StatusCode.CANCELLED
    assert 0.3 <= time.monotonic() - started < 2.0
    assert wait_until(lambda: try_join(server.address, "alice"))  # the one slot is free again
    silent.close()


def test_channel_closed_abruptly_is_user_left(server_factory):
    """When a client's channel is closed mid-stream, the server removes it and tells the rest."""
    server = server_factory()
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    bob.channel.close()
    bob.half_close()  # only ends our request generator's thread
    alice.next_event("user_event", where=left("bob"))
    assert health(server.address).active_clients == 1
    alice.close()


def test_dead_peer_is_found_by_keepalive_and_user_left(server_factory):
    """When a peer goes silent without closing, keepalive drops it and the rest get USER_LEFT."""
    server = server_factory(options=FAST_KEEPALIVE)
    proxy = Proxy(server.port)
    alice, bob = join(server.address, "alice"), join(proxy.address, "bob")
    proxy.black_hole()
    started = time.monotonic()
    alice.next_event("user_event", timeout=10, where=left("bob"))
    assert time.monotonic() - started < 5  # ~ keepalive time + timeout
    assert health(server.address).active_clients == 1
    alice.close()
    bob.close()
    proxy.close()


def test_default_keepalive_drops_dead_peer_within_30_s():
    """When a peer goes silent, the default options drop it within the promised ~30 s."""
    options = dict(SERVER_OPTIONS)
    # grpc core waits for the keepalive ack for ping_timeout_ms (default 60 s).
    ack_wait_ms = max(options["grpc.keepalive_timeout_ms"], options["grpc.http2.ping_timeout_ms"])
    assert options["grpc.keepalive_time_ms"] + ack_wait_ms <= 30_000
