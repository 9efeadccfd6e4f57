"""The ServerEvents the server builds, each in one place.

The hub (hub.py) and the session (session.py) send these; the server sets
every `timestamp` itself, in Unix seconds.
"""

import time

import chat_pb2 as pb
from store import Message


def now_s() -> int:
    return int(time.time())


def user_event(kind, name: str, room: str) -> pb.ServerEvent:
    return pb.ServerEvent(
        user_event=pb.UserEvent(type=kind, username=name, timestamp=now_s(), room=room)
    )


def system_event(text: str, code=pb.SYSTEM_INFO) -> pb.ServerEvent:
    return pb.ServerEvent(system_event=pb.SystemEvent(message=text, timestamp=now_s(), code=code))


def typing_event(name: str, kind, room: str) -> pb.ServerEvent:
    return pb.ServerEvent(
        typing_event=pb.TypingEvent(username=name, timestamp=now_s(), type=kind, room=room)
    )


def message_event(m: Message, replay: bool = False) -> pb.ServerEvent:
    return pb.ServerEvent(
        chat_message=pb.ChatMessageEvent(
            message=m.text,
            username=m.username,
            timestamp=m.timestamp,
            id=m.id,
            replay=replay,
            room=m.room,
            action=m.action,
            key=m.key,
        )
    )


def direct_event(
    sender: str, to: str, text: str, timestamp: int, action: bool, key: str = ""
) -> pb.ServerEvent:
    """A direct message: no room, no id (it is never stored), `to` set."""
    return pb.ServerEvent(
        chat_message=pb.ChatMessageEvent(
            message=text, username=sender, timestamp=timestamp, to=to, action=action, key=key
        )
    )
