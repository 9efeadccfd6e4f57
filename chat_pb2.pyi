from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TypingEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TYPING_UNKNOWN: _ClassVar[TypingEventType]
    TYPING_START: _ClassVar[TypingEventType]
    TYPING_STOP: _ClassVar[TypingEventType]

class UserEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USER_UNKNOWN: _ClassVar[UserEventType]
    USER_JOINED: _ClassVar[UserEventType]
    USER_LEFT: _ClassVar[UserEventType]

class SystemCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYSTEM_INFO: _ClassVar[SystemCode]
    RATE_LIMITED: _ClassVar[SystemCode]
    INVALID_EVENT: _ClassVar[SystemCode]
    SHUTTING_DOWN: _ClassVar[SystemCode]
    NOT_ONLINE: _ClassVar[SystemCode]
    NOT_SENT: _ClassVar[SystemCode]
TYPING_UNKNOWN: TypingEventType
TYPING_START: TypingEventType
TYPING_STOP: TypingEventType
USER_UNKNOWN: UserEventType
USER_JOINED: UserEventType
USER_LEFT: UserEventType
SYSTEM_INFO: SystemCode
RATE_LIMITED: SystemCode
INVALID_EVENT: SystemCode
SHUTTING_DOWN: SystemCode
NOT_ONLINE: SystemCode
NOT_SENT: SystemCode

class ClientEvent(_message.Message):
    __slots__ = ("chat_message", "typing_event", "user_event")
    CHAT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPING_EVENT_FIELD_NUMBER: _ClassVar[int]
    USER_EVENT_FIELD_NUMBER: _ClassVar[int]
    chat_message: ChatMessageEvent
    typing_event: TypingEvent
    user_event: UserEvent
    def __init__(self, chat_message: _Optional[_Union[ChatMessageEvent, _Mapping]] = ..., typing_event: _Optional[_Union[TypingEvent, _Mapping]] = ..., user_event: _Optional[_Union[UserEvent, _Mapping]] = ...) -> None: ...

class ServerEvent(_message.Message):
    __slots__ = ("chat_message", "typing_event", "system_event", "user_event")
    CHAT_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TYPING_EVENT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_EVENT_FIELD_NUMBER: _ClassVar[int]
    USER_EVENT_FIELD_NUMBER: _ClassVar[int]
    chat_message: ChatMessageEvent
    typing_event: TypingEvent
    system_event: SystemEvent
    user_event: UserEvent
    def __init__(self, chat_message: _Optional[_Union[ChatMessageEvent, _Mapping]] = ..., typing_event: _Optional[_Union[TypingEvent, _Mapping]] = ..., system_event: _Optional[_Union[SystemEvent, _Mapping]] = ..., user_event: _Optional[_Union[UserEvent, _Mapping]] = ...) -> None: ...

class ChatMessageEvent(_message.Message):
    __slots__ = ("message", "username", "timestamp", "id", "replay", "room", "to", "action", "key")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REPLAY_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    message: str
    username: str
    timestamp: int
    id: str
    replay: bool
    room: str
    to: str
    action: bool
    key: str
    def __init__(self, message: _Optional[str] = ..., username: _Optional[str] = ..., timestamp: _Optional[int] = ..., id: _Optional[str] = ..., replay: _Optional[bool] = ..., room: _Optional[str] = ..., to: _Optional[str] = ..., action: _Optional[bool] = ..., key: _Optional[str] = ...) -> None: ...

class UserEvent(_message.Message):
    __slots__ = ("type", "username", "timestamp", "last_seen_id", "room")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_ID_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    type: UserEventType
    username: str
    timestamp: int
    last_seen_id: str
    room: str
    def __init__(self, type: _Optional[_Union[UserEventType, str]] = ..., username: _Optional[str] = ..., timestamp: _Optional[int] = ..., last_seen_id: _Optional[str] = ..., room: _Optional[str] = ...) -> None: ...

class TypingEvent(_message.Message):
    __slots__ = ("username", "timestamp", "type", "room")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    username: str
    timestamp: int
    type: TypingEventType
    room: str
    def __init__(self, username: _Optional[str] = ..., timestamp: _Optional[int] = ..., type: _Optional[_Union[TypingEventType, str]] = ..., room: _Optional[str] = ...) -> None: ...

class SystemEvent(_message.Message):
    __slots__ = ("message", "timestamp", "code")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    message: str
    timestamp: int
    code: SystemCode
    def __init__(self, message: _Optional[str] = ..., timestamp: _Optional[int] = ..., code: _Optional[_Union[SystemCode, str]] = ...) -> None: ...

class HealthCheckRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthCheckResponse(_message.Message):
    __slots__ = ("status", "active_clients", "uptime_seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    active_clients: int
    uptime_seconds: int
    def __init__(self, status: _Optional[str] = ..., active_clients: _Optional[int] = ..., uptime_seconds: _Optional[int] = ...) -> None: ...

class ListRoomsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Room(_message.Message):
    __slots__ = ("name", "members")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    members: int
    def __init__(self, name: _Optional[str] = ..., members: _Optional[int] = ...) -> None: ...

class ListRoomsResponse(_message.Message):
    __slots__ = ("rooms",)
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    rooms: _containers.RepeatedCompositeFieldContainer[Room]
    def __init__(self, rooms: _Optional[_Iterable[_Union[Room, _Mapping]]] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ("room",)
    ROOM_FIELD_NUMBER: _ClassVar[int]
    room: str
    def __init__(self, room: _Optional[str] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("username", "room", "rooms")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    ROOM_FIELD_NUMBER: _ClassVar[int]
    ROOMS_FIELD_NUMBER: _ClassVar[int]
    username: str
    room: str
    rooms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, username: _Optional[str] = ..., room: _Optional[str] = ..., rooms: _Optional[_Iterable[str]] = ...) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...
