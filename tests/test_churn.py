"""Churn and garbage (PROTOCOL: Leave): many short sessions, killed clients, malformed events.

A server that leaks one thread or one registry entry per disconnect looks
fine in every other test. These run hundreds of sessions that end in every
way a session can end, then check that nothing is left behind.
"""

import itertools
import logging
import queue
import signal
import subprocess
import sys
import threading

import grpc
import psutil
import pytest
from conftest import ROOT, _chat_threads, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire import Conn, health, join, join_event

import chat_pb2 as pb

CHURN_MAX_CLIENTS = 32  # the server's --max-clients in the thread-count test
# The gRPC pool keeps idle threads for reuse and may grow to its size
# (max clients + 16) at a new peak of concurrency, which a loaded machine
# makes likelier; a leak adds one thread per session, 120 here.
POOL_SLACK_THREADS = CHURN_MAX_CLIENTS + 16

# A client process that joins one stream per name, says so, and waits to be killed.
JOINER = f"""
import sys, threading
sys.path.insert(0, {str(ROOT)!r})
import grpc, chat_pb2 as pb, chat_pb2_grpc

def requests(name):
    yield pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
    threading.Event().wait(60)

address, names = sys.argv[1], sys.argv[2:]
stub = chat_pb2_grpc.ChatServiceStub(grpc.insecure_channel(address))
calls = [stub.Chat(requests(name)) for name in names]  # kept: a dropped call is cancelled
for name, call in zip(names, calls):
    while next(call).user_event.username != name:
        pass
print("joined", flush=True)
threading.Event().wait(60)  # the test kills us long before; an orphan ends by itself
"""


def start_joiner(address: str, names: list[str]) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", JOINER, address, *names], stdout=subprocess.PIPE, text=True
    )
    return process


def kill_when_joined(process: subprocess.Popen) -> None:
    assert process.stdout.readline() == "joined\n"
    process.send_signal(signal.SIGKILL)
    process.wait(5)
    process.stdout.close()


def one_session(address: str, name: str, ending: int) -> None:
    """Open one session and end it in one of five ways."""
    if ending == 0:  # never joins: half-closes at once
        conn = Conn(address, None)
        conn.half_close()
        assert conn.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
        return
    conn = join(address, name)
    if ending == 1:  # cancels (Ctrl-C)
        conn.close()
    elif ending == 2:  # half-closes, and gets an OK
        conn.half_close()
        assert conn.wait_end() == grpc.StatusCode.OK
    elif ending == 3:  # the channel goes away under the stream
        conn.channel.close()
        conn.half_close()  # only ends our request generator's thread
    else:  # says something, then cancels
        conn.say("bye")
        conn.next_event("chat_message")
        conn.close()


def churn(address: str, sessions: int, killed_processes: int, per_process: int = 10) -> int:
    """Run `sessions` in-process sessions while client processes join and get killed."""
    joiners = [
        start_joiner(address, [f"k{p}x{i}" for i in range(per_process)])
        for p in range(killed_processes)
    ]
    for i in range(sessions):
        if i == sessions // 2:  # half-way: the client processes die mid-conversation
            for process in joiners:
                kill_when_joined(process)
        one_session(address, f"s{i}", i % 5)
    return sessions + killed_processes * per_process


def test_300_sessions_leave_no_client_and_no_thread(server_factory):
    """When 300 sessions end every which way, each is announced gone and nothing is left behind."""
    server = server_factory()
    watcher = join(server.address, "watcher")
    assert churn(server.address, 250, killed_processes=5) == 300
    joined = 250 - 250 // 5 + 50  # the sessions that never joined are never announced
    seen: dict[str, list] = {}
    for _ in range(2 * joined):
        event = watcher.next_event("user_event").user_event
        seen.setdefault(event.username, []).append(event.type)
    assert len(seen) == joined
    assert all(kinds == [pb.USER_JOINED, pb.USER_LEFT] for kinds in seen.values())
    assert health(server.address).active_clients == 1
    assert wait_until(lambda: {t.name for t in _chat_threads()} == {"reader-watcher"})
    watcher.close()


def test_server_process_threads_return_to_baseline_after_churn(server_process):
    """When sessions come and go, the server process's thread count returns to where it was."""
    server = server_process(
        "--log-level", "WARNING", "--max-clients", str(CHURN_MAX_CLIENTS),
        "--max-streams-per-address", "1000", "--no-rate-limit",
    )  # fmt: skip
    process = psutil.Process(server.proc.pid)
    churn(server.address, 100, killed_processes=2)  # warm up: pool threads are kept for reuse
    assert wait_until(lambda: health(server.address).active_clients == 0)
    baseline = process.num_threads()
    churn(server.address, 100, killed_processes=2)
    assert wait_until(lambda: health(server.address).active_clients == 0)
    assert wait_until(lambda: process.num_threads() <= baseline + POOL_SLACK_THREADS), (
        process.num_threads(),
        baseline,
    )


# -- garbage ---------------------------------------------------------------------

# Ours, and grpc._server, which logs exceptions escaping a handler.
OUR_LOGGERS = ("server", "session", "hub", "store", "cluster.store", "timers", "grpc._server")
MAX_INBOUND_TEXT_BYTES = 60_000  # under gRPC's 64 KiB limit with room for the envelope

int32s = st.integers(-(2**31), 2**31 - 1)  # enums are open: any int32 goes on the wire
int64s = st.integers(-(2**63), 2**63 - 1)
short_texts = st.text(st.characters(codec="utf-8"), max_size=40)  # control chars included
huge_texts = st.tuples(st.characters(codec="utf-8"), st.integers(1000, 15_000)).map(
    lambda pair: pair[0] * pair[1]  # at most 4 bytes a character: under the limit
)
names = st.one_of(st.sampled_from(["fuzz", "alice", "", "f" * 33]), short_texts)

chat_messages = st.builds(
    lambda text, *fields: pb.ClientEvent(
        chat_message=pb.ChatMessageEvent(
            message=text, username=fields[0], timestamp=fields[1], id=fields[2], replay=fields[3]
        )
    ),
    st.one_of(short_texts, huge_texts),
    short_texts,
    int64s,
    short_texts,
    st.booleans(),
)
typing_events = st.builds(
    lambda kind, name, ts: pb.ClientEvent(
        typing_event=pb.TypingEvent(type=kind, username=name, timestamp=ts)
    ),
    st.one_of(st.sampled_from([pb.TYPING_START, pb.TYPING_STOP]), int32s),
    short_texts,
    int64s,
)
user_events = st.builds(
    lambda kind, name, last: pb.ClientEvent(
        user_event=pb.UserEvent(type=kind, username=name, last_seen_id=last)
    ),
    st.one_of(st.just(pb.USER_JOINED), int32s),
    names,
    st.one_of(short_texts, st.sampled_from(["0-0", "1-0", "99999999999999-0", "9" * 30])),
)
# Serialized events, and now and then raw bytes that may not parse (bad UTF-8, bad tags).
any_event = st.one_of(
    *(events.map(pb.ClientEvent.SerializeToString) for events in (chat_messages, typing_events)),
    user_events.map(pb.ClientEvent.SerializeToString),
    st.just(b""),  # an empty ClientEvent: no oneof set
    st.binary(max_size=64),
)
JOIN = join_event("fuzz").SerializeToString()
tokens = itertools.count()


class RawStream:
    """A Chat stream that sends raw bytes, so it can send what no stub would."""

    def __init__(self, address: str, requests: list[bytes]):
        self.channel = grpc.insecure_channel(address)
        chat = self.channel.stream_stream(
            "/chat.ChatService/Chat", response_deserializer=pb.ServerEvent.FromString
        )
        self._outbox: queue.Queue = queue.Queue()
        for request in requests:
            self._outbox.put(request)
        self.call = chat(iter(self._outbox.get, None), timeout=10)
        self.ended = threading.Event()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            for _ in self.call:
                pass
        except grpc.RpcError:
            pass
        self.ended.set()

    def end(self, hang_up: bool) -> None:
        """Half-close and wait for the server to end the call, or hang up."""
        if hang_up:
            self.call.cancel()
        self._outbox.put(None)
        assert self.ended.wait(10), "the server never ended a garbage stream"
        self.channel.close()


@pytest.fixture
def chatters(server):
    """Two well-behaved users, shared by every example of a property test."""
    pair = join(server.address, "alice"), join(server.address, "bob")
    yield pair
    for conn in pair:
        conn.close()


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    joins=st.booleans(),
    events=st.lists(any_event, max_size=8),
    hang_up=st.booleans(),
)
def test_garbage_events_never_crash_and_others_keep_chatting(
    server, chatters, caplog, joins, events, hang_up
):
    """When a client sends random or malformed events, the server copes and others chat on."""
    alice, bob = chatters
    RawStream(server.address, [JOIN] * joins + events).end(hang_up)
    assert wait_until(lambda: server.servicer.hub.count() == 2)  # the garbage client is gone
    token = f"ping {next(tokens)}"
    alice.say(token)
    for conn in chatters:
        conn.next_event("chat_message", where=lambda e: e.message == token)
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name in OUR_LOGGERS]
    assert not failures, failures[0].getMessage()
