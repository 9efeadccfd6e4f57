"""Wire compatibility (PROTOCOL: Wire contract): an original-contract client still works."""

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from conftest import ROOT
from wire import enter_event, join, part_event

import chat_pb2 as pb

# Runs in a subprocess with only the original stubs on its path: two copies
# of package `chat` cannot live in one process's descriptor pool.
OLD_CLIENT = textwrap.dedent(
    """
    import queue, sys, grpc
    import chat_pb2 as pb, chat_pb2_grpc as rpc

    def stream(name, outbox):
        yield pb.ClientEvent(user_event=pb.UserEvent(type=pb.USER_JOINED, username=name))
        while (event := outbox.get()) is not None:
            yield event

    stub = rpc.ChatServiceStub(grpc.insecure_channel(sys.argv[1]))
    a_out, b_out = queue.Queue(), queue.Queue()
    alice = stub.Chat(stream("alice", a_out), timeout=20)
    next(e for e in alice if e.WhichOneof("event") == "system_event")  # joined
    bob = stub.Chat(stream("bob", b_out), timeout=20)
    next(e for e in alice if e.user_event.username == "bob")
    b_out.put(pb.ClientEvent(typing_event=pb.TypingEvent(type=pb.TYPING_START)))
    typing = next(e for e in alice if e.WhichOneof("event") == "typing_event")
    b_out.put(pb.ClientEvent(chat_message=pb.ChatMessageEvent(message="hi from bob")))
    said = next(e for e in alice if e.WhichOneof("event") == "chat_message")
    b_out.put(None)
    left = next(e for e in alice if e.user_event.type == pb.USER_LEFT)
    a_out.put(None)
    print(typing.typing_event.username, pb.TypingEventType.Name(typing.typing_event.type))
    print(said.chat_message.username, said.chat_message.message)
    print(left.user_event.username, "left")
    print(stub.HealthCheck(pb.HealthCheckRequest(), timeout=5).status)
    """
)


def test_original_contract_client_joins_chats_and_sees_typing(server, tmp_path: Path):
    """When a client knows only the original chat.proto, it joins, chats and sees typing,
    and lives in the lobby: the rooms chatting around it never reach it."""
    proto = ROOT / "tests" / "original_chat.proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto.parent}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            proto.name,
        ],  # fmt: skip
        check=True,
        timeout=30,
    )
    (tmp_path / "chat_pb2.py").write_text((tmp_path / "original_chat_pb2.py").read_text())
    grpc_stub = (tmp_path / "original_chat_pb2_grpc.py").read_text()
    (tmp_path / "chat_pb2_grpc.py").write_text(grpc_stub.replace("original_chat_pb2", "chat_pb2"))
    (tmp_path / "old_client.py").write_text(OLD_CLIENT)
    rust = [join(server.address, name, room="rust") for name in ("ann", "ben")]
    quiet = threading.Event()
    chatter = threading.Thread(target=chat_in_rust, args=(rust, quiet))
    chatter.start()
    try:
        result = subprocess.run(
            [sys.executable, "old_client.py", server.address],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        quiet.set()
        chatter.join(10)
    for conn in rust:
        conn.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "bob TYPING_START",
        "bob hi from bob",
        "bob left",
        "SERVING",
    ]


def chat_in_rust(conns, quiet: threading.Event) -> None:
    """Keep #rust busy: messages, typing and a join of #go and back out, until `quiet`."""
    while not quiet.wait(0.02):
        conns[0].say("rust talk")
        conns[1].typing(pb.TYPING_START)
        conns[1].send(enter_event("go"))
        conns[1].send(part_event("go"))


def test_committed_stubs_are_what_make_gen_produces(tmp_path: Path):
    """When chat.proto is compiled again, the committed stubs come out byte for byte."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "chat.proto",
        ],  # fmt: skip
        check=True,
        timeout=30,
        cwd=ROOT,
    )
    for name in ("chat_pb2.py", "chat_pb2.pyi", "chat_pb2_grpc.py"):
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), name


def test_standard_health_and_reflection_are_served(server):
    """When stock gRPC tools ask, grpc.health.v1 says SERVING and reflection lists the services."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        checker = health_pb2_grpc.HealthStub(channel)
        for service in ("", "chat.ChatService"):
            reply = checker.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflector = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(reflector.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {"chat.ChatService", "grpc.health.v1.Health"} <= names
