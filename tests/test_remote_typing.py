"""Typing is soft state on every server: another server's typer stops after 5 s without news."""

import signal
import time

from wire import join

import chat_pb2 as pb

SILENCE_S = 5.0  # hub.TYPING_SILENCE_S: a typer silent this long is shown as stopped


def typing_of(name: str, kind):
    return lambda e: e.username == name and e.type == kind


def test_remote_typer_whose_server_goes_silent_is_stopped_after_the_silence_time(
    server_process, redis_proc
):
    """When bob keeps typing on A, carol on B sees no stop; when A freezes, she sees one in ~5 s."""
    a, b = (server_process("--redis-url", redis_proc.url) for _ in range(2))
    carol = join(b.address, "carol")
    bob = join(a.address, "bob")
    bob.typing(pb.TYPING_START)
    carol.next_event("typing_event", where=typing_of("bob", pb.TYPING_START))
    typing_until = time.monotonic() + SILENCE_S + 2
    while time.monotonic() < typing_until:  # as a client does while its user types
        time.sleep(1.0)
        bob.typing(pb.TYPING_START)
    assert not [e for e in carol.drain() if e.WhichOneof("event") == "typing_event"]
    a.signal(signal.SIGSTOP)  # bob's STOP (by A's silence timer) can never come now
    try:
        frozen_at = time.monotonic()
        carol.next_event("typing_event", SILENCE_S + 3, where=typing_of("bob", pb.TYPING_STOP))
        assert time.monotonic() - frozen_at < SILENCE_S + 3
        assert not [e for e in carol.drain() if e.WhichOneof("event") == "user_event"]
    finally:
        a.signal(signal.SIGCONT)
    carol.close()
    bob.close()
