"""Requests gRPC cannot decode (invalid UTF-8 in a string field): refused, summarised."""

import grpc
import pytest
from conftest import ServerProcess
from wire import Conn, join, join_event

pytestmark = pytest.mark.timeout(60)

BAD_ROOM = b"\x0a\x02\xff\xfe"  # ListUsersRequest{room: invalid UTF-8}
BAD_JOIN = b"\x1a\x06\x08\x01\x12\x02\xff\xfe"  # ClientEvent{user_event{JOINED, username: bad}}


def test_undecodable_requests_log_a_few_lines_and_no_traceback():
    """When 40 requests carry invalid UTF-8, the log has a few lines, no traceback; chat goes on."""
    server = ServerProcess()
    try:
        with grpc.insecure_channel(server.address) as channel:
            list_users = channel.unary_unary("/chat.ChatService/ListUsers")
            chat = channel.stream_stream("/chat.ChatService/Chat")
            for n in range(40):
                with pytest.raises(grpc.RpcError) as refused:
                    if n % 2:
                        list_users(BAD_ROOM, timeout=5)
                    else:
                        list(chat(iter([BAD_JOIN]), timeout=5))
                assert refused.value.code() == grpc.StatusCode.INTERNAL
        alice = join(server.address, "alice")  # still serving
        alice.say("still here")
        assert alice.messages(1)[0].message == "still here"
        alice.close()
    finally:
        server.signal()
        server.wait()
        log = server.proc.stderr.read()
        server.stop()
    refusals = [line for line in log.splitlines() if "cannot be decoded" in line]
    assert "Traceback" not in log and "Exception deserializing" not in log
    assert 1 <= len(refusals) <= 12, log
    assert len(log.splitlines()) <= 20, log


def test_bad_first_events_in_a_loop_log_a_few_lines_then_a_count():
    """When 40 streams open with a bad name, the log has a few lines and a count of the rest."""
    server = ServerProcess()
    server.watch_log()
    try:
        for n in range(40):
            conn = Conn(server.address, join_event(f"bad name {n}"))
            assert conn.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
        alice = join(server.address, "alice")  # still serving
        alice.close()
        assert server.wait_for_log("more streams before their join")  # when the second ends
    finally:
        server.stop()
    refusals = [line for line in server.log_lines if "invalid username" in line]
    assert 1 <= len(refusals) <= 12, server.log_lines
