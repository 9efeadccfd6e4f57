"""Caps and guess limits by client network, bounded credential checks, the header's RFCs."""

import base64
import logging
import subprocess
import sys
import threading
import time

import grpc
import psutil
import pytest
from clients import CLIENT_ENV
from conftest import ROOT, ServerProcess, wait_until
from test_hogging import OTHER_HOST, FromAddress, can_bind
from test_security import UNAUTHENTICATED, chat_code, unary_code
from wire import Conn, join

import chat_pb2 as pb
import chat_pb2_grpc
from access import auth
from access.caps import network_of
from access.credentials import basic_pair, credentials
from access.users import add_user
from server import create_server
from session import Settings
from store import MemoryStore
from terminal.dial import Authorization, basic

pytestmark = pytest.mark.timeout(60)
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
OK = grpc.StatusCode.OK
SAME_NETWORK = ("127.0.0.2", "127.0.0.3")  # beside 127.0.0.1, in its /24
needs_loopbacks = pytest.mark.skipif(
    not all(can_bind(a) for a in (*SAME_NETWORK, OTHER_HOST)), reason="loopback addresses"
)


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "users.txt"
    add_user(path, "alice", "wonderland")
    add_user(path, "zoe", "pässwörd")
    return path


@pytest.fixture
def on_all_interfaces():
    """Start in-process servers on 0.0.0.0 (reachable from every loopback address)."""
    started = []

    def start(gate=None, **settings):
        server = create_server(Settings(**settings), MemoryStore(), "0.0.0.0:0", gate=gate)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(grace_s=0.5)


def test_network_of_is_the_ipv4_24_or_the_ipv6_64():
    """When a caller's address is known, caps count its /24 (IPv4) or its /64 (IPv6)."""
    assert network_of("ipv4:198.51.100.7") == "198.51.100.0/24"
    assert network_of("ipv4:198.51.100.250") == "198.51.100.0/24"
    assert network_of("ipv6:[2001:db8:1:2:aaaa::1]") == "2001:db8:1:2::/64"
    assert network_of("ipv6:%5B2001:db8:1:2:bbbb::1%5D") == "2001:db8:1:2::/64"  # as gRPC says
    assert network_of("ipv6:[2001:db8:1:2:ffff::9]") == "2001:db8:1:2::/64"
    assert network_of("ipv6:[::ffff:198.51.100.7]") == "198.51.100.0/24"
    assert network_of("ipv6:[::1]") == network_of("ipv4:127.0.0.1") == "127.0.0.0/24"
    assert network_of("unix:/tmp/chat.sock") == "unix:/tmp/chat.sock"


@needs_loopbacks
def test_streams_of_one_network_share_its_cap(on_all_interfaces):
    """When three addresses of one /24 hold 3 streams, a fourth of it is refused; not others'."""
    server = on_all_interfaces(rate=None, max_streams_per_address=3)
    port = server.port
    relays = [FromAddress(source, port) for source in (*SAME_NETWORK, OTHER_HOST)]
    try:
        idle = [Conn(f"127.0.0.1:{port}", None), Conn(relays[0].address, None)]
        idle.append(Conn(relays[1].address, None))
        assert wait_until(lambda: server.per_address.open_streams("127.0.0.0/24") == 3)
        assert not any(conn.ended.is_set() for conn in idle)
        fourth = Conn(relays[1].address, None)
        assert fourth.wait_end() == EXHAUSTED
        assert "your network" in fourth.error.details()
        join(relays[2].address, "bob").close()  # another /24 still gets in
        for conn in idle:
            conn.close()
    finally:
        for relay in relays:
            relay.close()


def test_idle_streams_hold_at_most_a_quarter_and_never_keep_a_joiner_out(server_factory):
    """When 10 streams never join, a quarter of --max-clients stay open, the older ones end;
    alice still joins."""
    server = server_factory(max_clients=16, join_timeout_s=30.0)  # a quarter: 4
    idle = [Conn(server.address, None) for _ in range(10)]
    assert wait_until(lambda: sum(conn.ended.is_set() for conn in idle) == 6)
    ended = [conn for conn in idle if conn.ended.is_set()]
    assert {conn.wait_end() for conn in ended} == {grpc.StatusCode.CANCELLED}  # not a timeout
    alice = join(server.address, "alice")
    alice.say("in")
    assert alice.messages(1)[0].message == "in"
    alice.close()
    for conn in idle:
        conn.close()


@needs_loopbacks
def test_failed_sign_ins_are_counted_by_network(on_all_interfaces, users_file):
    """When 127.0.0.1 used up the failures, 127.0.0.2 is refused too; 127.0.1.2 is not."""
    port = on_all_interfaces(gate=auth.Guard(auth.Accounts(users_file)), rate=None).port
    relays = [FromAddress(source, port) for source in (SAME_NETWORK[0], OTHER_HOST)]
    try:
        for n in range(auth.FAILURE_BURST):
            assert unary_code(f"127.0.0.1:{port}", basic("alice", f"g{n}"), "ListRooms") == (
                UNAUTHENTICATED
            )
        assert unary_code(relays[0].address, basic("alice", "x"), "ListRooms") == EXHAUSTED
        assert unary_code(relays[1].address, basic("alice", "x"), "ListRooms") == UNAUTHENTICATED
    finally:
        for relay in relays:
            relay.close()


def test_failed_sign_ins_are_counted_across_servers_through_redis(redis_proc, users_file):
    """When one server saw the failures, another on the same Redis refuses that network too."""
    a, b = (
        ServerProcess("--redis-url", redis_proc.url, "--users", str(users_file)) for _ in range(2)
    )
    try:
        for n in range(auth.FAILURE_BURST):
            assert unary_code(a.address, basic("alice", f"g{n}"), "ListRooms") == UNAUTHENTICATED
        assert unary_code(b.address, basic("alice", "wonderland"), "ListRooms") == EXHAUSTED
    finally:
        a.stop()
        b.stop()


def test_right_credentials_are_not_hashed_each_call_and_hashes_are_capped(users_file):
    """When 48 calls sign in at once, memory stays bounded; repeated calls skip the hash."""
    # Two malloc arenas: what is measured is hashes at once, not memory glibc keeps.
    server = ServerProcess("--users", str(users_file), env={"MALLOC_ARENA_MAX": "2"})
    try:
        process = psutil.Process(server.proc.pid)
        before = peak = process.memory_info().rss
        encoded = base64.b64encode(b"alice:wonderland").decode()
        headers = ["Basic" + " " * k + encoded for k in range(1, 49)]  # 48 distinct, all right
        codes: list = []
        threads = [
            threading.Thread(
                target=lambda h=h: codes.append(unary_code(server.address, h, "ListUsers"))
            )
            for h in headers
        ]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.01)
        assert codes == [grpc.StatusCode.OK] * 48
        assert peak - before < 300 * 2**20, f"{(peak - before) / 2**20:.0f} MiB"  # 48 hashes: 768
        cpu = sum(process.cpu_times()[:2])
        for _ in range(40):  # one header again and again: no hash (40 take 1.8 s of CPU)
            assert unary_code(server.address, headers[0], "ListUsers") == grpc.StatusCode.OK
        assert sum(process.cpu_times()[:2]) - cpu < 0.9  # CPU, not wall time: load-proof
    finally:
        server.stop()


@pytest.mark.parametrize(
    "header,pair",
    [
        ("Basic " + base64.b64encode(b"alice:wonderland").decode(), ("alice", "wonderland")),
        ("basic  " + base64.b64encode(b"alice:wonderland").decode() + " ", ("alice", "wonderland")),
        ("BASIC\t" + base64.b64encode("zoe:pässwörd".encode()).decode(), ("zoe", "pässwörd")),
        (
            "Basic " + base64.b64encode("zoe:pässwörd".encode("latin-1")).decode(),
            ("zoe", "pässwörd"),
        ),
        ("Basic", None),
        ("Basic !!!", None),
        ("Bearer abc", None),
        ("Basicx " + base64.b64encode(b"alice:w").decode(), None),
    ],
)
def test_basic_header_is_read_as_rfc_7617_says(header, pair):
    """When a Basic header has any-case scheme, extra spaces, UTF-8 or Latin-1, it is read."""
    assert basic_pair(header) == pair


def test_bearer_header_is_read_as_rfc_6750_says():
    """When a Bearer header has any-case scheme and extra spaces, its token is read."""
    assert credentials("bearer  s3cret ", "Bearer") == "s3cret"
    assert credentials("Basic s3cret", "Bearer") is None


def test_sign_in_with_spaces_case_and_utf8_is_accepted(gated_users, users_file):
    """When a client signs in with `basic`, two spaces, a trailing space or UTF-8, it gets in."""
    address = gated_users
    encoded = base64.b64encode(b"alice:wonderland").decode()
    for header in (f"Basic  {encoded}", f"Basic {encoded} ", f"bAsIc {encoded}"):
        assert unary_code(address, header, "ListUsers") == grpc.StatusCode.OK, header
    assert chat_code(address, basic("zoe", "pässwörd"), "zoe") == grpc.StatusCode.OK


@pytest.fixture
def gated_users(on_all_interfaces, users_file):
    server = on_all_interfaces(gate=auth.Guard(auth.Accounts(users_file)), rate=None)
    return f"127.0.0.1:{server.port}"


def test_users_file_others_may_write_is_refused_with_one_line(users_file):
    """When the users file is writable by group or others, the server refuses it, saying why."""
    users_file.chmod(0o666)
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "--port", "0", "--users", str(users_file)],
        capture_output=True, text=True, timeout=30, env=CLIENT_ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "others may write it" in result.stderr
    assert "chmod go-w" in result.stderr


def test_failed_sign_ins_on_ipv4_loopback_count_for_ipv6_loopback(users_file):
    """When 127.0.0.1 used up the failures, [::1] (the same host) is refused too."""
    server = ServerProcess("--host", "[::]", "--users", str(users_file))
    try:
        for n in range(auth.FAILURE_BURST):
            assert unary_code(server.address, basic("alice", f"g{n}"), "ListRooms") == (
                UNAUTHENTICATED
            )
        ipv6 = f"[::1]:{server.port}"
        assert unary_code(ipv6, basic("alice", "wonderland"), "ListRooms") == EXHAUSTED
    finally:
        server.stop()


def test_users_file_made_writable_while_running_keeps_accounts_and_says_so_once(
    gated_users, users_file, caplog
):
    """When the users file becomes writable by others while serving, the accounts read
    before still sign in, and the log says why once, not once per sign-in."""
    caplog.set_level(logging.WARNING, logger="server")
    assert unary_code(gated_users, basic("alice", "wonderland"), "ListUsers") == OK
    users_file.chmod(0o666)
    for n in range(5):
        assert unary_code(gated_users, basic("zoe", "pässwörd"), "ListUsers") == OK
        assert unary_code(gated_users, basic("alice", f"wrong{n}"), "ListUsers") != OK
    warnings = [r.getMessage() for r in caplog.records if "others may write" in r.getMessage()]
    assert len(warnings) == 1 and "keeping the accounts read before" in warnings[0]


def own_connection_code(address: str, header: str) -> grpc.StatusCode:
    """ListRooms on a channel with its own TCP connection (so --processes spreads them)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as plain:
        stub = chat_pb2_grpc.ChatServiceStub(grpc.intercept_channel(plain, Authorization(header)))
        try:
            stub.ListRooms(pb.ListRoomsRequest(), timeout=10)
            return OK
        except grpc.RpcError as error:
            return error.code()


def test_failed_sign_ins_are_counted_across_processes(redis_proc, users_file):
    """When --processes 2 share the port, the failures of both count in one bucket."""
    server = ServerProcess(
        "--processes", "2", "--redis-url", redis_proc.url, "--users", str(users_file)
    )
    try:
        codes = [own_connection_code(server.address, basic("alice", f"g{n}")) for n in range(8)]
        assert codes[: auth.FAILURE_BURST] == [UNAUTHENTICATED] * auth.FAILURE_BURST
        assert set(codes[auth.FAILURE_BURST :]) == {EXHAUSTED}, codes
    finally:
        server.signal()
        server.wait(20)
        server.stop()
