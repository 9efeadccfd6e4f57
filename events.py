"""The ServerEvents the server builds, each in one place.

The hub (hub.py) and the session (session.py) send these; the server sets
every `timestamp` itself, in Unix seconds.
"""

import time

import chat_pb2 as pb
from store import Message


def now_s() -> int:
    return int(time.time())


def user_event(kind, name: str) -> pb.ServerEvent:
    return pb.ServerEvent(user_event=pb.UserEvent(type=kind, username=name, timestamp=now_s()))


def system_event(text: str, code=pb.SYSTEM_INFO) -> pb.ServerEvent:
    return pb.ServerEvent(system_event=pb.SystemEvent(message=text, timestamp=now_s(), code=code))


def typing_event(name: str, kind) -> pb.ServerEvent:
    return pb.ServerEvent(typing_event=pb.TypingEvent(username=name, timestamp=now_s(), type=kind))


def message_event(m: Message, replay: bool = False) -> pb.ServerEvent:
    return pb.ServerEvent(
        chat_message=pb.ChatMessageEvent(
            message=m.text, username=m.username, timestamp=m.timestamp, id=m.id, replay=replay
        )
    )
