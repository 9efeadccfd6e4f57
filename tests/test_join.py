"""Join rules (docs/PROTOCOL.md: Join): the first event, the name rule, names online, history."""

import grpc
import pytest
from wire import Conn, health, join, join_event

import chat_pb2 as pb


def test_join_announces_to_everyone_then_lists_who_is_online(server):
    """When bob joins, alice and bob both get USER_JOINED, then bob gets who is online."""
    alice = join(server.address, "alice")
    bob = Conn(server.address, join_event("bob"))
    joined = bob.next_event()
    assert joined.user_event.type == pb.USER_JOINED and joined.user_event.username == "bob"
    online = bob.next_event()
    assert online.system_event.code == pb.SYSTEM_INFO
    assert "alice" in online.system_event.message and "bob" in online.system_event.message
    alice.next_event("user_event", where=lambda e: e.username == "bob")
    assert health(server.address).active_clients == 2
    alice.close()
    bob.close()


@pytest.mark.parametrize(
    "first",
    [
        pb.ClientEvent(chat_message=pb.ChatMessageEvent(message="hi")),
        pb.ClientEvent(typing_event=pb.TypingEvent(type=pb.TYPING_START)),
        pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_LEFT, username="alice")),
        pb.ClientEvent(),
    ],
    ids=["message", "typing", "user-left", "empty"],
)
def test_first_event_not_a_join_is_invalid_argument(server, first):
    """When the first event is not USER_JOINED, the call ends with INVALID_ARGUMENT."""
    conn = Conn(server.address, first)
    assert conn.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
    assert health(server.address).active_clients == 0


def test_half_close_before_join_is_invalid_argument(server):
    """When a client ends its stream without joining, the call ends with INVALID_ARGUMENT."""
    conn = Conn(server.address, None)
    conn.half_close()
    assert conn.wait_end() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "name", ["", "a" * 33, "al ice", "alice\n", "ali\x1bce", "élise", "a/b", "bob!"]
)
def test_bad_username_is_invalid_argument(server, name):
    """When a username breaks the rule, the call ends with INVALID_ARGUMENT."""
    conn = Conn(server.address, join_event(name))
    assert conn.wait_end() == grpc.StatusCode.INVALID_ARGUMENT
    assert conn.error.details()


@pytest.mark.parametrize("name", ["a", "a" * 32, "Bob_the-2nd.x"])
def test_good_username_joins(server, name):
    """When a username follows the rule, the join succeeds."""
    join(server.address, name).close()


def test_name_online_is_already_exists_and_online_user_untouched(server):
    """When a name is online, a second join gets ALREADY_EXISTS and the first keeps chatting."""
    alice = join(server.address, "alice")
    impostor = Conn(server.address, join_event("alice"))
    assert impostor.wait_end() == grpc.StatusCode.ALREADY_EXISTS
    alice.say("still here")
    assert alice.next_event("chat_message").chat_message.message == "still here"
    assert health(server.address).active_clients == 1
    alice.close()
