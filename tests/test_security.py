"""Who may talk to us (access/): a shared token or accounts, and guessing limited."""

import subprocess
import sys
import time

import grpc
import pytest
from clients import CLIENT_ENV, run_client
from conftest import ROOT, ServerProcess, wait_until
from wire import EVENT_TIMEOUT_S, Conn, health, join_event

import chat_pb2 as pb
import chat_pb2_grpc
from access import auth
from access.users import add_user
from ratelimit import Buckets
from server import create_server
from session import Settings
from store import MemoryStore
from terminal.dial import Authorization, basic, bearer

pytestmark = pytest.mark.timeout(30)
TOKEN = "correct-horse-battery-staple"
NO_FAILURE_LIMIT = Buckets(1000.0, 1000)  # tests of right and wrong, not of guessing


@pytest.fixture
def gated():
    """Start in-process servers behind a gate; stop them on teardown."""
    started = []

    def start(gate):
        server = create_server(Settings(rate=None), MemoryStore(), "127.0.0.1:0", gate=gate)
        server.start()
        started.append(server)
        return f"127.0.0.1:{server.port}"

    yield start
    for server in started:
        server.stop(grace_s=0.5)


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "users.txt"
    add_user(path, "alice", "wonderland")
    return path


def channel(address: str, header: str = "") -> grpc.Channel:
    plain = grpc.insecure_channel(address)
    return grpc.intercept_channel(plain, Authorization(header)) if header else plain


def chat_code(address: str, header: str, name: str = "alice") -> grpc.StatusCode:
    """Join as `name` with `header`: OK once joined, else the code the stream ended with."""
    conn = Conn(address, join_event(name), channel=channel(address, header))
    try:
        assert wait_until(lambda: conn.ended.is_set() or not conn.events.empty())
        if conn.ended.is_set() and conn.events.empty():
            return conn.wait_end()  # refused
        conn.next_event("user_event", where=lambda e: e.username == name)
        return grpc.StatusCode.OK
    finally:
        conn.close()


def unary_code(address: str, header: str, method: str) -> grpc.StatusCode:
    """Call ListRooms or ListUsers with `header`: the status code of the answer."""
    with channel(address, header) as ch:
        stub = chat_pb2_grpc.ChatServiceStub(ch)
        request = pb.ListRoomsRequest() if method == "ListRooms" else pb.ListUsersRequest()
        try:
            getattr(stub, method)(request, timeout=EVENT_TIMEOUT_S)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", ["ListRooms", "ListUsers"])
def test_token_guards_queries_before_their_handler(gated, method):
    """When --token is set, a query without it or with a wrong one is UNAUTHENTICATED."""
    address = gated(auth.Guard(auth.SharedToken(TOKEN), NO_FAILURE_LIMIT))
    assert unary_code(address, "", method) == UNAUTHENTICATED
    assert unary_code(address, bearer("wrong"), method) == UNAUTHENTICATED
    assert unary_code(address, basic("alice", TOKEN), method) == UNAUTHENTICATED
    assert unary_code(address, bearer(TOKEN), method) != UNAUTHENTICATED  # the handler's answer


def test_token_guards_chat_and_leaves_health_open(gated):
    """When --token is set, Chat needs it; HealthCheck and grpc.health.v1 do not."""
    address = gated(auth.Guard(auth.SharedToken(TOKEN), NO_FAILURE_LIMIT))
    assert chat_code(address, "") == UNAUTHENTICATED
    assert chat_code(address, bearer(TOKEN + "x")) == UNAUTHENTICATED
    assert chat_code(address, bearer(TOKEN)) == grpc.StatusCode.OK
    assert chat_code(address, bearer(TOKEN), "anyone") == grpc.StatusCode.OK  # a token says no name
    assert health(address).status == "SERVING"
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as ch:
        answer = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=EVENT_TIMEOUT_S
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_accounts_let_only_the_signed_in_name_join(gated, users_file):
    """With --users, a listed name joins with its password, as itself only (PERMISSION_DENIED)."""
    address = gated(auth.Guard(auth.Accounts(users_file), NO_FAILURE_LIMIT))
    assert chat_code(address, "") == UNAUTHENTICATED
    assert chat_code(address, basic("alice", "wrong")) == UNAUTHENTICATED
    assert chat_code(address, basic("mallory", "wonderland"), "mallory") == UNAUTHENTICATED
    assert chat_code(address, bearer("wonderland")) == UNAUTHENTICATED
    assert chat_code(address, basic("alice", "wonderland")) == grpc.StatusCode.OK
    assert (
        chat_code(address, basic("alice", "wonderland"), "bob") == grpc.StatusCode.PERMISSION_DENIED
    )
    for method in ("ListRooms", "ListUsers"):
        assert unary_code(address, basic("alice", "nope"), method) == UNAUTHENTICATED
        assert unary_code(address, basic("alice", "wonderland"), method) != UNAUTHENTICATED


def test_add_user_piped_takes_effect_without_a_restart(gated, users_file):
    """When add-user reads a password from a pipe, the running server accepts it at once."""
    address = gated(auth.Guard(auth.Accounts(users_file), NO_FAILURE_LIMIT))
    assert chat_code(address, basic("carol", "s3cret"), "carol") == UNAUTHENTICATED
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "add-user", "carol", "--users", str(users_file)],
        input="s3cret\n", capture_output=True, text=True, timeout=EVENT_TIMEOUT_S * 2, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in users_file.read_text() and "carol:scrypt$" in users_file.read_text()
    assert chat_code(address, basic("carol", "s3cret"), "carol") == grpc.StatusCode.OK
    assert chat_code(address, basic("alice", "wonderland")) == grpc.StatusCode.OK  # still there


def test_repeated_failures_from_one_address_are_refused_at_once(gated, users_file):
    """When an address keeps failing to sign in, it is soon refused without a check."""
    address = gated(auth.Guard(auth.Accounts(users_file)))  # the real limit
    started = time.monotonic()
    codes = [unary_code(address, basic("alice", f"guess{n}"), "ListRooms") for n in range(8)]
    assert codes[: auth.FAILURE_BURST] == [UNAUTHENTICATED] * auth.FAILURE_BURST
    assert set(codes[auth.FAILURE_BURST :]) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    # The right password does not get through either, until the bucket refills.
    assert chat_code(address, basic("alice", "wonderland")) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - started < 10


def test_token_with_users_is_a_start_up_error(users_file):
    """When both --token and --users are given, the server does not start, and says why."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--users", str(users_file)],
        capture_output=True, text=True, timeout=EVENT_TIMEOUT_S * 2, cwd=ROOT,
        env={**CLIENT_ENV, "CHAT_TOKEN": TOKEN},
    )  # fmt: skip
    assert result.returncode == 2
    assert "--token or --users, not both" in result.stderr and TOKEN not in result.stderr


def test_secrets_stay_out_of_output_help_and_errors(users_file):
    """The token, passwords and a Redis password never show in logs, --help or errors."""
    env = {"CHAT_TOKEN": TOKEN}
    server = ServerProcess("--log-level", "DEBUG", env=env)
    try:
        for header in ("", bearer("hunter2"), bearer(TOKEN)):
            chat_code(server.address, header)
        result, _ = run_client("--name", "bob", "--address", server.address, "--token", "hunter2")
        assert "hunter2" not in result.stdout + result.stderr
        assert "wrong token" in result.stderr
    finally:
        server.signal()
        server.wait()
        output = server.banner + server.proc.stdout.read() + server.proc.stderr.read()
        server.stop()
    assert TOKEN not in output and "hunter2" not in output and "refused a call" in output
    helped = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--help"],
        capture_output=True, text=True, env={**CLIENT_ENV, **env}, cwd=ROOT,
    )  # fmt: skip
    assert TOKEN not in helped.stdout and "CHAT_TOKEN" in helped.stdout
    url = "redis://:hunter2@127.0.0.1:1/0"
    failed = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--redis-url", url],
        capture_output=True, text=True, timeout=EVENT_TIMEOUT_S * 2, env=CLIENT_ENV, cwd=ROOT,
    )  # fmt: skip
    assert failed.returncode == 1 and "hunter2" not in failed.stdout + failed.stderr
