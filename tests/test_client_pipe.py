"""The client with piped input: what it prints, what it cleans, its errors."""

import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from clients import CLIENT, CLIENT_ENV, ERROR_WITHIN_S, assert_one_clean_error, run_client
from conftest import ROOT, free_port
from fakes import NeverAnswers, serving
from wire import join

import chat_pb2 as pb
import chat_pb2_grpc
from store import MemoryStore

# -- piped -----------------------------------------------------------------------


def test_piped_message_shows_as_you_to_sender_and_by_name_to_others(server, pipe_client):
    """When alice pipes a line, she sees [you] and bob sees [alice], with joins and leaves."""
    bob = pipe_client(server.address, "bob")
    bob.expect("* bob joined the chat")
    alice = pipe_client(server.address, "alice")
    alice.send("hello")
    assert alice.finish() == 0
    assert "* alice joined the chat" in alice.seen and "[you] hello" in alice.seen
    bob.expect("* alice joined the chat")
    bob.expect("[alice] hello")
    bob.expect("* alice left the chat")
    assert bob.finish() == 0


def test_piped_lines_over_the_rate_limit_all_arrive_once_in_order(server_factory, pipe_client):
    """When piped lines outrun the rate limit, the client resends until each got through."""
    server = server_factory(rate=5.0, burst=2)
    alice = pipe_client(server.address, "alice")
    lines = [f"line {n}" for n in range(6)]
    for line in lines:
        alice.send(line)
    assert alice.finish() == 0
    echoes = [seen for seen in alice.seen if seen.startswith("[you] ")]
    assert echoes == [f"[you] {line}" for line in lines]
    assert any(seen.startswith("! rate limited") for seen in alice.seen)


def test_history_is_marked_and_timestamps_prefix_the_time(server, pipe_client):
    """When a client joins after messages were sent, it shows them as history."""
    carol = join(server.address, "carol")
    carol.say("earlier")
    carol.messages(1)
    alice = pipe_client(server.address, "alice", "--timestamps")
    line = alice.expect("[carol] earlier")
    assert "[history]" in line
    assert line[:2].isdigit() and line[2] == ":" and line[5] == " "  # "HH:MM ..."
    assert alice.finish() == 0
    carol.close()


def test_escape_codes_in_a_message_never_reach_the_screen(server, pipe_client):
    """When someone sends escape sequences, the other client prints none of them."""
    bob = pipe_client(server.address, "bob")
    bob.expect("* bob joined the chat")
    mallory = join(server.address, "mallory")
    mallory.say("\x1b[2Jwiped \x1b]0;owned\x07title")
    bob.expect("[mallory] ")
    assert bob.finish() == 0
    assert not any("\x1b" in line or "\x07" in line for line in bob.seen), bob.seen
    mallory.close()


def test_history_with_nonsense_timestamps_still_joins_and_renders(server_factory, pipe_client):
    """When stored messages carry a timestamp no clock can show, --timestamps still works."""
    store = MemoryStore()
    for name, text, timestamp in [("bot", "far", 10**17), ("old", "past", -5), ("no", "time", 0)]:
        store.append(name, text, timestamp)
    server = server_factory(store=store)
    alice = pipe_client(server.address, "alice", "--timestamps")
    assert alice.expect("[bot] far").startswith("--:-- ")
    alice.expect("[old] past")
    alice.expect("[no] time")
    alice.send("hi")
    alice.expect("[you] hi")
    assert alice.finish() == 0


def test_piped_line_too_long_is_refused_on_stderr_and_the_rest_go(server, pipe_client):
    """When a piped line is over the wire limit or 2000 characters, the client refuses
    it with one stderr line each and sends the next line; it never rejoins for it."""
    alice = pipe_client(server.address, "alice")
    for line in ("x" * 70_000, "y" * 2001, "after"):
        alice.send(line)
    alice.expect("[you] after")
    assert alice.finish() == 1  # not every line went
    refusals = alice.stderr().splitlines()
    assert len(refusals) == 2 and all("not sent" in line for line in refusals), refusals
    assert alice.seen.count("* alice joined the chat") == 1, alice.seen


def test_line_the_server_refuses_is_dropped_not_retried(server_factory, pipe_client):
    """When the server refuses a line (INVALID_EVENT), the client drops it and goes on."""
    server = server_factory(max_message_chars=10)
    alice = pipe_client(server.address, "alice", "--max-message-chars", "5000")
    alice.send("longer than ten characters")
    alice.send("after")
    alice.expect("! message too long")
    alice.expect("[you] after")
    assert alice.finish() == 1  # not every line went
    assert not any("longer than ten" in line for line in alice.seen)


def test_piped_lines_starting_with_a_slash_are_text_unless_a_known_command(server, pipe_client):
    """When piped lines start with '/', only a known command runs; '//' sends one '/'."""
    alice = pipe_client(server.address, "alice")
    for line in ("/var/lib/db is 91% full", "/nosuch", "//help", "/help", "last"):
        alice.send(line)
    alice.expect("[you] last")
    assert alice.finish() == 0
    for text in ("[you] /var/lib/db is 91% full", "[you] /nosuch", "[you] /help"):
        assert alice.seen.count(text) == 1, (text, alice.seen)
    assert any(line.startswith("* /quit") for line in alice.seen)  # /help listed commands


def test_closed_stdout_stops_the_output_not_the_input(server):
    """When stdout closes (`printf 'a\nb\n' | client.py | head -1`) in a room with history,
    the client still sends every line, then exits 0 without a word."""
    carol = join(server.address, "carol")
    for text in ("earlier 1", "earlier 2"):
        carol.say(text)
    carol.messages(2)
    alice = subprocess.Popen(
        [sys.executable, CLIENT, "--name", "alice", "--address", server.address],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=CLIENT_ENV, cwd=ROOT,
    )  # fmt: skip
    head = subprocess.Popen(["head", "-1"], stdin=alice.stdout, stdout=subprocess.PIPE)
    alice.stdout.close()  # head holds the pipe now, and closes it after one line
    try:
        alice.stdin.write(b"a\nb\n")
        alice.stdin.close()
        assert head.communicate(timeout=ERROR_WITHIN_S)[0] == b"[history] [carol] earlier 1\n"
        assert alice.wait(ERROR_WITHIN_S) == 0
        assert alice.stderr.read() == b""
        said = [m.message for m in carol.messages(2) if m.username == "alice"]
        assert said == ["a", "b"]
    finally:
        alice.kill()
        alice.wait(5)
        carol.close()


@pytest.mark.parametrize(
    "line",
    ["/msg nobody hello", "x" * 2001, "/join #no!", "/me", "/msg bob"],
    ids=["not-online", "too-long", "bad-room", "me-without-text", "msg-without-text"],
)
def test_piped_line_refused_for_good_makes_the_exit_status_1_after_the_rest(
    server, pipe_client, line
):
    """When a piped line is refused for good (recipient not online, too long, bad room or
    arguments), the client still sends the lines after it, then exits 1."""
    alice = pipe_client(server.address, "alice")
    for each in ("before", line, "after"):
        alice.send(each)
    alice.expect("[you] after")
    assert alice.finish() == 1
    assert "[you] before" in alice.seen


def test_join_without_an_answer_is_one_error_line_saying_so():
    """When the server never confirms the join, the client says so, not "cancelled"."""
    with serving(NeverAnswers()) as address:
        result, took_s = run_client("--name", "alice", "--address", address)
    assert result.returncode == 1 and took_s < 2 * ERROR_WITHIN_S
    assert result.stderr == "Error: cannot join: the server did not answer within 5 s\n"


class LyingServicer(chat_pb2_grpc.ChatServiceServicer):
    """A server that sends escape codes, to show the client cleans text itself."""

    def Chat(self, request_iterator, context):
        name = next(request_iterator).user_event.username
        evil = "\x1b[2Jwiped \x1b]0;owned\x07title\nforged"
        yield pb.ServerEvent(chat_message=pb.ChatMessageEvent(username="ev\x1bil", message=evil))
        yield pb.ServerEvent(system_event=pb.SystemEvent(message="\x1b[31mnotice"))
        yield pb.ServerEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
        for _ in request_iterator:  # until the client leaves
            pass


def test_client_cleans_text_even_if_the_server_does_not(pipe_client):
    """When a server sends escape codes, the client strips them before printing."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    chat_pb2_grpc.add_ChatServiceServicer_to_server(LyingServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        alice = pipe_client(f"127.0.0.1:{port}", "alice")
        line = alice.expect("wiped")
        assert line == "[evil] [2Jwiped ]0;ownedtitle forged"  # defused: ESC, BEL, \n gone
        assert alice.finish() == 0
        assert not any("\x1b" in line or "\x07" in line for line in alice.seen), alice.seen
    finally:
        server.stop(0)


# -- errors ----------------------------------------------------------------------------


def test_unreachable_server_is_one_error_line(tmp_path):
    """When nothing listens at the address, the client says so and exits non-zero."""
    result, took_s = run_client("--name", "alice", "--address", f"127.0.0.1:{free_port()}")
    assert_one_clean_error(result, took_s, "cannot reach")


def test_name_taken_is_one_error_line(server):
    """When the name is online, the client says so and exits non-zero."""
    alice = join(server.address, "alice")
    result, took_s = run_client("--name", "alice", "--address", server.address)
    assert_one_clean_error(result, took_s, "alice is already online")
    alice.close()


@pytest.mark.parametrize("name", ["al ice", "a" * 33, "bob!"])
def test_invalid_name_is_one_error_line(name):
    """When the name breaks the rule, the client says so before connecting."""
    result, took_s = run_client("--name", name, "--address", "127.0.0.1:1")
    assert_one_clean_error(result, took_s, "invalid name")


def test_piped_without_a_name_is_one_error_line():
    """When input is piped and no name is given, the client says so instead of asking."""
    result, took_s = run_client("--address", "127.0.0.1:1", stdin="hello\n")
    assert_one_clean_error(result, took_s, "no name")
