"""Tab on the input line: a command, a room, or the name of anyone online.

terminal/prompt.py gives its input line a `Completions`; prompt_toolkit
asks it on the main thread when the user presses Tab, and inserts the
answer at once if there is one (else shows a menu).

    /jo<Tab>        /join        a command or an alias, any case
    /join ru<Tab>   /join rust   after /join, /part, /who: a room; #ru<Tab> anywhere
    /msg ca<Tab>    /msg carol   after /msg, or @: anyone online, in any room
    ca<Tab>         carol        any other word: someone in one of our rooms

Rooms and people come from what the client has seen (terminal/roster.py)
and from the server: ListRooms, and ListUsers with no room (everyone
online), asked on the open Chat call's channel and kept for FRESH_S, so
pressing Tab again does not ask again. NOTE: the input line waits for that
answer (a few ms on a live call), so the deadline is short: a server that
does not answer within LOOKUP_TIMEOUT_S costs one slow Tab, and the names
the client has seen are offered instead.

NOTE: `_lock` guards `_answers` only; the calls are made outside it.
"""

import threading
import time

import grpc
from prompt_toolkit.completion import Completer, Completion

import chat_pb2 as pb
import chat_pb2_grpc
from sanitize import clean_text, is_valid_name
from terminal.commands import WORDS, command_of

LOOKUP_TIMEOUT_S = 0.5  # Tab waits this long for the server at most, then uses what it knows
FRESH_S = 2.0  # an answer is used again for this long: Tab, Tab does not ask twice
ROOM_COMMANDS = ("/join", "/part", "/who")  # their argument is a room


class Lookups:
    """Who is online anywhere, and which rooms exist: the server's answers, kept briefly."""

    def __init__(self, chat):
        self._chat = chat  # a client.Chat: its current call's channel
        self._lock = threading.Lock()
        self._answers: dict[str, tuple[float, list[str]]] = {}  # method -> (monotonic, names)

    def everyone(self) -> list[str]:
        users = self._ask("ListUsers", pb.ListUsersRequest(room=""))
        return [clean_text(u.username) for u in users.users] if users else []

    def rooms(self) -> list[str]:
        rooms = self._ask("ListRooms", pb.ListRoomsRequest())
        return [clean_text(r.name) for r in rooms.rooms] if rooms else []

    def _ask(self, method: str, request):
        """The server's answer, or None (no call up, an error, too slow)."""
        with self._lock:
            at, answer = self._answers.get(method, (0.0, None))
        if answer is not None and time.monotonic() - at < FRESH_S:
            return answer
        link = self._chat.link
        if link is None or link.ended.is_set():
            return None
        stub = chat_pb2_grpc.ChatServiceStub(link.channel)
        try:
            answer = getattr(stub, method)(request, timeout=LOOKUP_TIMEOUT_S)
        except (grpc.RpcError, ValueError):  # ValueError: the channel closed under us
            return None
        with self._lock:
            self._answers[method] = (time.monotonic(), answer)
        return answer


class Completions(Completer):
    """What Tab offers for the word before the cursor."""

    def __init__(self, chat):
        self._roster = chat.roster  # our rooms, and who is in them
        self._me = chat.name
        self._lookups = Lookups(chat)

    def get_completions(self, document, complete_event):
        words = document.text_before_cursor.split(" ")
        word, first = words[-1], command_of(words[0]) if len(words) > 1 else None
        second = len(words) == 2  # the word is the command's first argument
        if len(words) == 1 and word.startswith("/"):
            options, prefix = WORDS, ""
        elif word.startswith("#") or (second and first in ROOM_COMMANDS):
            options, prefix = self._rooms(), "#" if word.startswith("#") else ""
        elif word.startswith("@") or (second and first == "/msg"):
            options, prefix = self._everyone(), "@" if word.startswith("@") else ""
        elif word:
            options, prefix = self._roster.names(), ""
        else:
            return  # Tab on nothing: no list of everyone
        typed = word.removeprefix(prefix).lower()
        for option in options:
            if option.lower().startswith(typed):
                yield Completion(prefix + option, start_position=-len(word))

    def _rooms(self) -> list[str]:
        return sorted({*self._roster.rooms(), *self._lookups.rooms()})

    def _everyone(self) -> list[str]:
        online = {*self._roster.names(), *self._lookups.everyone()}
        return sorted((n for n in online if n != self._me and is_valid_name(n)), key=str.lower)
