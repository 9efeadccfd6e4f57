"""The break-it lab (docs/LAB.md): every exercise, run as the lab writes it.

Each test runs the lab's own command blocks and checks each terminal's
quoted output (tests/lab.py reads both from LAB.md by their markers), so
the page and the code cannot drift apart. Real processes throughout: the
server, the client, the tools and a redis-server, on free ports.
"""

import shutil

import pytest
from lab import LAB_MD, Lab, blocks

# What one exercise may take; the frozen client waits for keepalive (~20 s).
pytestmark = pytest.mark.timeout(45)
KEEPALIVE_NOTICED_S = 30.0  # server: ping after 10 s idle, give up 10 s later
NAME_FREED_S = 30.0  # a crashed server's names are freed when its 10 s alive key expires
NEEDS_REDIS = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server and redis-cli are not installed (.ci/run installs them)",
)


@pytest.fixture
def lab():
    running = Lab()
    yield running
    running.close()


def test_every_exercise_has_commands_and_expected_output():
    """When LAB.md is parsed, each exercise has a command block and promises some output."""
    commands, expected = blocks(LAB_MD.read_text())
    exercises = {"flood", "lazy", "full", "redis", "frozen", "two", "sigterm", "inject", "token",
                 "rooms"}  # fmt: skip
    assert exercises <= commands.keys()
    assert set(expected) <= set(commands) | {"lazy-read"}
    assert all(expected.get(name) for name in exercises - {"redis"})


def test_flood_is_rate_limited(lab):
    """When a client sends 20 messages at once, 5 get through and it alone hears why."""
    lab.run("flood")
    lab.check("flood")


def test_client_that_never_reads_is_evicted(lab):
    """When a client never reads, it is evicted at 1024 events; the sender loses nothing."""
    lab.run("lazy")
    lab.check("lazy")
    lab.terminal(2).type("")  # "press Enter in terminal 2"
    lab.check("lazy-read")


def test_third_client_is_refused_by_max_clients_2(lab):
    """When two clients are in and --max-clients is 2, the third gets one error line."""
    lab.run("full")
    lab.check("full")


@NEEDS_REDIS
def test_redis_killed_and_restarted_buffers_then_flushes(lab):
    """When Redis stops, chat goes on; when it is back, the waiting message is history."""
    lab.run("redis")
    lab.check("redis")  # the server knows it is alone on this Redis
    lab.run("redis-down")
    lab.check("redis-down")
    lab.run("redis-back")
    lab.check("redis-back")
    lab.run("redis-history")
    lab.check("redis-history")


@pytest.mark.timeout(75)
def test_frozen_client_is_found_by_keepalive(lab):
    """When a client is stopped with SIGSTOP, keepalive drops it; woken, it rejoins."""
    lab.run("frozen")
    lab.check("frozen", timeout=KEEPALIVE_NOTICED_S)
    lab.run("thawed")
    lab.check("thawed")


@NEEDS_REDIS
def test_two_servers_on_one_redis_are_one_chat(lab):
    """When clients are on two servers sharing a Redis, they chat and share names."""
    lab.run("two")
    lab.check("two")


def test_sigterm_tells_the_client(lab):
    """When the server gets SIGTERM, the client shows the notice and one error line."""
    lab.run("sigterm")
    lab.check("sigterm")


def test_escape_sequences_are_cleaned(lab):
    """When a message carries escape sequences and a line break, they arrive harmless."""
    lab.run("inject")
    lab.check("inject")


def test_wrong_token_is_refused(lab):
    """When the server has --token, a wrong or missing token is one error line; the right chats."""
    lab.run("token")
    lab.check("token")


@NEEDS_REDIS
@pytest.mark.timeout(75)
def test_two_rooms_each_resume_after_a_server_crash(lab):
    """When alice is in two rooms and the server crashes, she comes back to each room with
    what it said meanwhile, and nothing of either room twice."""
    lab.run("rooms")
    lab.check("rooms")
    lab.run("rooms-restart")
    lab.check("rooms-restart", timeout=NAME_FREED_S)
    alice = lab.terminal(3).lines
    for text in ("anyone for lunch?", "borrow or clone?", "lunch at noon", "clone, always"):
        assert sum(text in line for line in alice) == 1, f"{text!r} not once: {alice}"
