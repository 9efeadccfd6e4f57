"""Typing indicators (docs/PROTOCOL.md: Typing): to others only, coalesced, stopped for you."""

from conftest import stored
from wire import join

import chat_pb2 as pb

START, STOP = pb.TYPING_START, pb.TYPING_STOP


def typing_pair(server_factory, **settings):
    server = server_factory(**settings)
    alice, bob = join(server.address, "alice"), join(server.address, "bob")
    alice.next_event("user_event", where=lambda e: e.username == "bob")
    bob.next_event("system_event")  # the online list: bob's join is complete
    return server, alice, bob


def starts_typing(typer, seen_by) -> None:
    typer.typing(START)
    seen_by.next_event("typing_event", where=lambda e: e.type == START)


def events_until_message(conn) -> list:
    """Every event up to and including the next chat message, in order."""
    seen = [conn.next_event()]
    while seen[-1].WhichOneof("event") != "chat_message":
        seen.append(conn.next_event())
    return seen


def test_typing_goes_to_others_only_and_repeats_are_dropped(server_factory):
    """When alice starts twice then stops twice, bob sees one start and one stop, alice none."""
    server, alice, bob = typing_pair(server_factory)
    for kind in (START, START, STOP, STOP):
        alice.typing(kind)
    alice.say("marker")  # one reader handles alice's events in order
    bob_saw = events_until_message(bob)
    assert [(e.typing_event.username, e.typing_event.type) for e in bob_saw[:-1]] == [
        ("alice", START),
        ("alice", STOP),
    ]
    assert [e.WhichOneof("event") for e in events_until_message(alice)] == ["chat_message"]
    alice.close()
    bob.close()


def test_message_stops_typing_on_the_typers_behalf(server_factory):
    """When a typer sends a message, the others get TYPING_STOP before the message."""
    server, alice, bob = typing_pair(server_factory)
    starts_typing(alice, seen_by=bob)
    alice.say("done typing")
    stop = bob.next_event()
    assert stop.WhichOneof("event") == "typing_event" and stop.typing_event.type == STOP
    assert bob.next_event().chat_message.message == "done typing"
    alice.close()
    bob.close()


def test_silent_typer_gets_stopped_after_the_timeout(server_factory):
    """When a typer falls silent past the timeout, the server sends TYPING_STOP for them."""
    server, alice, bob = typing_pair(server_factory, typing_silence_s=0.3)
    starts_typing(alice, seen_by=bob)
    stop = bob.next_event("typing_event", timeout=3)
    assert (stop.typing_event.username, stop.typing_event.type) == ("alice", STOP)
    alice.close()
    bob.close()


def test_typer_who_leaves_is_stopped_then_leaves(server_factory):
    """When a typer leaves, the others get TYPING_STOP, then USER_LEFT."""
    server, alice, bob = typing_pair(server_factory)
    starts_typing(alice, seen_by=bob)
    alice.close()
    assert bob.next_event().typing_event.type == STOP
    assert bob.next_event().user_event.type == pb.USER_LEFT
    bob.close()


def test_typing_is_not_stored(server_factory):
    """When people type, nothing reaches history."""
    server, alice, bob = typing_pair(server_factory)
    alice.typing(START)
    bob.next_event("typing_event")
    alice.typing(STOP)
    bob.next_event("typing_event")
    alice.say("only this")
    bob.next_event("chat_message")
    assert [m.text for m in stored(server.servicer.hub.store)] == ["only this"]
    alice.close()
    bob.close()
