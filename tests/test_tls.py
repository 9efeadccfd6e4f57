"""TLS (--tls-cert/--tls-key, client --tls/--ca-cert): real TLS, a certificate made in the test."""

import subprocess
import sys

import grpc
import pytest
from certs import self_signed
from clients import CLIENT_ENV, ERROR_WITHIN_S, assert_one_clean_error, run_client
from conftest import ROOT
from wire import EVENT_TIMEOUT_S, Conn, join_event

import chat_pb2 as pb
from server import create_server, tls_credentials
from session import Settings
from store import MemoryStore

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair(tmp_path):
    return self_signed(tmp_path)  # (cert.pem, key.pem)


@pytest.fixture
def tls_server(pair):
    cert, key = pair
    server = create_server(
        Settings(rate=None), MemoryStore(), "127.0.0.1:0", tls=tls_credentials(cert, key)
    )
    server.start()
    yield server
    server.stop(grace_s=0.5)


def tls_join(port: int, cert, name: str) -> Conn:
    """Join over TLS, trusting `cert`; wait until the server announced it."""
    channel = grpc.secure_channel(
        f"localhost:{port}", grpc.ssl_channel_credentials(cert.read_bytes())
    )
    conn = Conn("", join_event(name), channel=channel)
    conn.next_event("user_event", where=lambda e: e.username == name and e.type == pb.USER_JOINED)
    return conn


def test_tls_clients_chat(tls_server, pair):
    """When the server serves TLS, clients that trust its certificate chat as usual."""
    alice = tls_join(tls_server.port, pair[0], "alice")
    bob = tls_join(tls_server.port, pair[0], "bob")
    alice.say("over tls")
    assert bob.next_event("chat_message").chat_message.message == "over tls"
    alice.close()
    bob.close()


def test_plaintext_call_to_a_tls_server_fails_at_once(tls_server):
    """When a plaintext client calls a TLS server, its call fails UNAVAILABLE, never hangs."""
    conn = Conn(f"127.0.0.1:{tls_server.port}", join_event("alice"))
    assert conn.wait_end(timeout=EVENT_TIMEOUT_S) == grpc.StatusCode.UNAVAILABLE
    conn.close()


def test_pipe_client_with_ca_cert_chats(tls_server, pair):
    """When client.py is given --ca-cert, it chats over TLS in pipe mode."""
    address = f"localhost:{tls_server.port}"
    result, _ = run_client("--name", "alice", "--address", address, "--ca-cert", str(pair[0]),
                           stdin="hello over tls\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "[you] hello over tls" in result.stdout


def test_plaintext_pipe_client_against_tls_says_so_in_one_line(tls_server):
    """When client.py without TLS meets a TLS server, it says so in one line, no traceback."""
    result, took_s = run_client("--name", "alice", "--address", f"localhost:{tls_server.port}",
                                stdin="hello\n")  # fmt: skip
    assert_one_clean_error(result, took_s, "cannot reach")
    assert "TLS" in result.stderr


def test_tls_pipe_client_against_plaintext_says_so_in_one_line(server, pair):
    """When client.py with --ca-cert meets a plaintext server, one line names TLS."""
    result, took_s = run_client("--name", "alice", "--address", f"localhost:{server.port}",
                                "--ca-cert", str(pair[0]), stdin="hello\n")  # fmt: skip
    assert_one_clean_error(result, took_s, "over TLS")


def test_tls_server_logs_no_line_per_bad_handshake(server_process, pair):
    """When plaintext clients knock on a TLS server, its output stays clean: no traceback."""
    cert, key = pair
    server = server_process("--tls-cert", str(cert), "--tls-key", str(key))
    result, took_s = run_client("--name", "alice", "--address", f"localhost:{server.port}",
                                stdin="hello\n")  # fmt: skip
    assert result.returncode != 0 and took_s < ERROR_WITHIN_S
    server.signal()
    assert server.wait() == 0
    output = server.proc.stdout.read() + server.proc.stderr.read()
    assert "Traceback" not in output and "andshake" not in output, output


def test_tls_cert_without_key_is_a_start_up_error():
    """When --tls-cert comes without --tls-key, the server does not start, and says why."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--tls-cert", "README.md"],
        capture_output=True, text=True, timeout=EVENT_TIMEOUT_S * 2, env=CLIENT_ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--tls-cert and --tls-key go together" in result.stderr
