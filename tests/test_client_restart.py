"""The client through planned restarts: SIGTERM is a reconnect, not the end, and a
rolling deploy of two servers loses no line and delivers none twice."""

import signal
import subprocess
import sys
import threading

import pytest
from clients import CLIENT, CLIENT_ENV, RECONNECT_WITHIN_S, finishes_the_half_typed_line
from conftest import ROOT
from wire import Conn, join_event

import chat_pb2 as pb

# Fast enough that lines flow all through a restart; history long enough to hold them all.
ROLLING = ("--rate", "50", "--burst", "50", "--history", "2000")
LINE_EVERY_S = 0.05  # each client's pace while the servers restart
FLOWING = 5  # echoes each client must get on the new server before the next step


class Feeder:
    """Pipes numbered lines ("ann 0", "ann 1", ...) into one client until stopped."""

    def __init__(self, client, name: str):
        self.client, self.name = client, name
        self.sent = 0  # lines written to its stdin so far (the feeder thread writes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while not self._stop.wait(LINE_EVERY_S):
            self.client.send(f"{self.name} {self.sent}")
            self.sent += 1

    def flowing(self) -> None:
        """Wait until a line written from now on has come back."""
        self.client.expect(f"[you] {self.name} {self.sent + FLOWING}", RECONNECT_WITHIN_S)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.sent


def history(address: str) -> list[str]:
    """Every message text the server replays to a new joiner, oldest first."""
    checker = Conn(address, join_event("checker"))
    texts = []
    while True:
        event = checker.next_event()
        if event.WhichOneof("event") == "chat_message":
            texts.append(event.chat_message.message)
        elif event.user_event.type == pb.USER_JOINED and event.user_event.username == "checker":
            checker.close()
            return texts


@pytest.mark.timeout(120)
def test_rolling_restart_delivers_every_line_once_and_every_client_exits_0(
    redis_proc, server_process, pipe_client
):
    """When two servers on one Redis are each SIGTERMed and restarted in turn while three
    clients given both addresses keep sending, every line is delivered exactly once."""
    args = ("--redis-url", redis_proc.url, *ROLLING)
    a, b = server_process(*args), server_process(*args)
    orders = {"ann": (a, b), "ben": (b, a), "cat": (a, b)}
    feeders = []
    for name, (first, second) in orders.items():
        client = pipe_client(f"{first.address},{second.address}", name)
        client.expect(f"* {name} joined the chat")
        feeders.append(Feeder(client, name))
    for feeder in feeders:
        feeder.flowing()
    for server in (a, b):
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        for feeder in feeders:
            feeder.flowing()  # all on the other server now
        server_process(*args, port=server.port)  # back in place
    sent = {feeder.name: feeder.stop() for feeder in feeders}
    for feeder in feeders:
        assert feeder.client.finish(RECONNECT_WITHIN_S) == 0, feeder.client.seen
        shown = [line.removeprefix("[history] ") for line in feeder.client.seen]
        echoes = [line for line in shown if line.startswith("[you] ")]  # replayed ones too
        assert echoes == [f"[you] {feeder.name} {n}" for n in range(sent[feeder.name])]
        said = " ".join(feeder.client.seen)
        assert "server is shutting down" in said and "trying 127.0.0.1:" in said
    stored = history(b.address)
    expected = [f"{name} {n}" for name, count in sent.items() for n in range(count)]
    assert sorted(stored) == sorted(expected)  # each once: none lost, none twice


def test_piped_client_outlives_a_restart_saying_where_it_tries_and_why(server_process, pipe_client):
    """When the server is SIGTERMed and started again, a piped client says so, says where
    it tries and why each try failed, rejoins it and sends what was typed meanwhile."""
    first = server_process()
    bob = pipe_client(first.address, "bob")
    bob.expect("* bob joined the chat")
    first.signal(signal.SIGTERM)
    bob.expect("! server shutting down")
    bob.expect("* reconnecting... (the server is shutting down)")
    assert first.wait() == 0
    bob.send("while it was down")
    bob.expect(f"* trying {first.address}")
    bob.expect(f"* cannot reach {first.address}; next try in")  # why that try failed
    server_process(port=first.port)
    bob.expect("[you] while it was down", timeout=RECONNECT_WITHIN_S)
    assert bob.finish() == 0
    assert "Traceback" not in bob.stderr()


def test_terminal_outlives_a_restart_keeping_the_half_typed_line(terminal, server_process):
    """When the server is SIGTERMed mid-line and started again, the client rejoins it
    with the half-typed line still on its input line."""
    first = server_process()
    alice = terminal(first.address, "alice")
    alice.send("half")
    alice.expect_exact("half")  # echoed on the input line
    first.signal(signal.SIGTERM)
    alice.expect_exact("* reconnecting... (the server is shutting down)")
    assert first.wait() == 0
    server_process(port=first.port)
    alice.expect_exact("* alice joined the chat", timeout=RECONNECT_WITHIN_S)
    finishes_the_half_typed_line(alice)


@pytest.mark.timeout(90)
def test_clients_started_together_wait_out_the_join_limit_and_all_exit_0(server_factory):
    """When 25 piped clients start at once and the server refuses joins for coming too
    often (with a time to retry), each waits that time, joins, and exits 0."""
    server = server_factory(rate=100.0, burst=100, join_burst=1, join_rate=10.0)
    clients = [
        subprocess.Popen(
            [sys.executable, CLIENT, "--name", f"u{n}", "--address", server.address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=CLIENT_ENV,
            cwd=ROOT,
        )  # fmt: skip
        for n in range(25)
    ]
    try:
        results = [c.communicate(f"hello from u{n}\n", timeout=60) for n, c in enumerate(clients)]
    finally:
        for client in clients:
            client.kill()
            client.wait(5)
    for n, (client, (out, err)) in enumerate(zip(clients, results, strict=True)):
        assert client.returncode == 0, (out, err)
        assert f"[you] hello from u{n}" in out and err == ""
    assert any("joining too often" in out for out, _ in results)  # the limit was met
