"""Names are unique by skeleton: any case, and look-alike ASCII characters, are one name."""

import subprocess
import sys

import grpc
import pytest
import redis
from clients import CLIENT_ENV
from conftest import ROOT, wait_until
from wire import Conn, join, join_event

from access.users import add_user, read_users
from cluster.keys import NAMES_KEY
from cluster.lua import SCRIPTS
from sanitize import name_skeleton
from terminal.render import mentions

pytestmark = pytest.mark.timeout(60)

LOOK_ALIKES = ["Alice", "ALICE", "aIice", "a1ice", "al1ce", "AL1CE"]
NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"


def test_look_alike_names_share_a_skeleton():
    """When names differ only by case or by I l 1 | and O 0, their skeleton is one."""
    assert {name_skeleton(name) for name in ["alice", *LOOK_ALIKES, "a|ice"]} == {"allce"}
    assert name_skeleton("B0B") == name_skeleton("bob") != name_skeleton("bib")
    assert name_skeleton("alice") != name_skeleton("alicia")


def test_lua_skeleton_is_the_python_one(redis_proc):
    """When Redis decides a claim, it folds names with the same table as the server."""
    prelude = SCRIPTS["claim"].split("-- Another name")[0]  # events, SKELETONS, skeleton()
    script = prelude + "return skeleton(ARGV[1])"
    client = redis.Redis(port=redis_proc.port, decode_responses=True)
    folded = client.eval(script, 3, "chat:names", "chat:events", "chat:where", NAME_CHARS)
    assert folded == name_skeleton(NAME_CHARS)


def test_look_alike_of_an_online_name_is_already_exists(server):
    """When alice is online, Alice, ALICE, aIice, a1ice and al1ce are ALREADY_EXISTS."""
    alice = join(server.address, "alice")
    for name in LOOK_ALIKES:
        impostor = Conn(server.address, join_event(name))
        assert impostor.wait_end() == grpc.StatusCode.ALREADY_EXISTS, name
    alice.say("still me")
    assert alice.messages(1)[0].message == "still me"
    alice.close()


def test_look_alike_on_another_server_is_already_exists(server_process, redis_proc):
    """When alice is online on A, a1ice and ALICE are ALREADY_EXISTS on B; after, B takes one."""
    a, b = (server_process("--redis-url", redis_proc.url) for _ in range(2))
    alice = join(a.address, "alice")
    for name in ("a1ice", "ALICE"):
        impostor = Conn(b.address, join_event(name))
        assert impostor.wait_end() == grpc.StatusCode.ALREADY_EXISTS, name
    alice.close()
    names = redis.Redis(port=redis_proc.port, decode_responses=True)
    assert wait_until(lambda: not names.hexists(NAMES_KEY, "alice"), timeout=10)
    again = join(b.address, "ALICE")  # free once alice left, shown as typed
    assert "ALICE" in names.hkeys(NAMES_KEY)
    again.close()


def test_direct_message_finds_a_user_whatever_case_and_shows_the_name_as_typed(server):
    """When bob writes to ALICE, alice gets it, and both see it addressed to "alice"."""
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    bob.say("psst", to="ALICE")
    got = alice.next_event("chat_message").chat_message
    assert (got.username, got.to, got.message) == ("bob", "alice", "psst")
    assert bob.next_event("chat_message").chat_message.to == "alice"
    alice.close()
    bob.close()


@pytest.mark.parametrize("text", ["hi Alice", "@ALICE: look", "a1ice?", "ping al1ce."])
def test_mention_finds_the_name_whatever_case_and_look_alikes(text):
    """When a message names us in any case or with look-alike characters, it mentions us."""
    assert mentions("alice", text)
    assert not mentions("alice", "malice and alicia")


def test_add_user_refuses_a_look_alike_of_an_account(tmp_path):
    """When the users file has alice, add-user A1ice is refused with one line; alice stays."""
    path = tmp_path / "users.txt"
    add_user(path, "alice", "wonderland")
    result = subprocess.run(
        [sys.executable, str(ROOT / "server.py"), "add-user", "A1ice", "--users", str(path)],
        input="other\n", capture_output=True, text=True, timeout=30, env=CLIENT_ENV, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 1 and "looks like alice" in result.stderr
    assert list(read_users(path)) == ["alice"]
