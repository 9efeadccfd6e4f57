"""The client's commands: what a line the user entered does, in IRC's words.

terminal/prompt.py (a terminal) and terminal/piped.py (piped input) hand every line to
`Commands.enter` on the main thread. A line whose first word is a known
command (any case, IRC's aliases too: `/J`, `/j`, `/leave`, `/names`)
runs it; any other line is text for the current room. Commands that say
something (`/msg`, `/me`), joins and leaves (`/join`, `/part`) become lines
of terminal/lines.py, kept until the server confirms them and sent in the
order typed; the queries (`/rooms`, `/who`) are unary calls, answered here.
The rooms we are in, and the current one, are terminal/rooms.py's
`RoomState` (`chat.rooms`).

    /join #rust   JOIN     a UserEvent USER_JOINED with the room; it becomes current
                           (a room we are in: only made current)
    /part [#rust] PART     a UserEvent USER_LEFT with the room (the current one)
    /rooms        LIST     ListRooms
    /who          NAMES    ListUsers of our room
    /msg bob hi   PRIVMSG  a ChatMessageEvent with `to`
    /me waves     ACTION   a ChatMessageEvent with `action`, in the current room
    text                   a ChatMessageEvent with `room`, the current one

A query waits first (QUERY_TIMEOUT_S at most) for the lines typed before it
to be confirmed, so `/join #ops` then `/who` lists #ops. It uses the open
Chat call's channel: same server, same TLS and credentials (terminal/dial.py), and a
deadline, so it never blocks for good.
"""

import grpc

import chat_pb2 as pb
import chat_pb2_grpc
from sanitize import NAME_RULE, ROOM_RULE, clean_text, is_valid_name, room_name
from terminal.lines import join_line, message_line, part_line, refusal
from terminal.link import describe

QUERY_TIMEOUT_S = 5.0  # deadline of /rooms and /who, and their wait for earlier lines
ESCAPE = "//"  # a line starting with it is text starting with "/"
QUIT = object()  # a command's answer: leave
# name: (arguments, what it does), in the order /help lists them. An argument
# in [brackets] may be left out; "" takes none.
COMMANDS = {
    "/join": ("#room", "join a room (anyone may open one) and talk there; yours: go to it"),
    "/part": ("[#room]", "leave this room, or the one named"),
    "/rooms": ("", "list the rooms and how many are in each, yours marked"),
    "/who": ("[#room]", "list who is in this room, or in the one named"),
    "/msg": ("name text", "send text to one person, wherever they are"),
    "/me": ("text", "an action: /me waves shows * you waves"),
    "/help": ("", "list these commands"),
    "/quit": ("", "leave the chat (Ctrl-D does too)"),
}
# IRC's other words for them (irssi, weechat): alias -> command.
ALIASES = {"/j": "/join", "/leave": "/part", "/list": "/rooms", "/names": "/who", "/exit": "/quit"}
WORDS = sorted([*COMMANDS, *ALIASES])  # every command word, for Tab


def command_of(word: str) -> str | None:
    """The command a word names, in any case ("/J" -> "/join"), or None."""
    word = word.lower()
    return word if word in COMMANDS else ALIASES.get(word)


def takes(command: str, rest: str) -> bool:
    """Do the arguments fit the command's form? (A missing required one is a usage error.)"""
    arguments = COMMANDS[command][0]
    if not arguments:
        return rest == ""
    if arguments.lstrip("[").startswith("#room"):
        return " " not in rest  # one room name
    return True  # the rest of the line


def parse(line: str) -> tuple[str, str, str]:
    """What a line is: ("command", "/join", "#rust"), ("unknown", "/x", line) or
    ("text", "", what to send).

    A known command with arguments it does not take ("/who is there?") is
    not that command; "//x" sends "/x". Piped input sends an "unknown"
    line as text ("/var/lib/db is 91% full"); a terminal asks first.
    """
    stripped = line.strip()
    word, _, rest = stripped.partition(" ")
    rest = rest.strip()
    if (command := command_of(word)) is not None and takes(command, rest):
        return "command", command, rest
    if stripped.startswith(ESCAPE):
        return "text", "", stripped[1:]
    if word.startswith("/"):
        return "unknown", word, line
    return "text", "", line


class Commands:
    """Runs the user's lines against a client.Chat, on the main thread."""

    def __init__(self, chat):
        self.chat = chat
        self.renderer = chat.renderer

    def enter(self, line: str, interactive: bool) -> bool:
        """A line the user pressed Enter on: run it or send it. False for /quit."""
        kind, word, rest = parse(line)
        if kind == "command":
            return getattr(self, f"do_{word[1:]}")(rest) is not QUIT
        if kind == "unknown" and interactive:
            command = command_of(word)
            usage = (
                f"{command} takes {COMMANDS[command][0] or 'no arguments'}"
                if command
                else "try /help"
            )
            self._refused(f"unknown command {word}: {usage} ({ESCAPE}x sends /x)")
        else:
            self._say_here(rest)
        return True

    # -- one method per command (dispatch by name, as http.server's do_GET) ------

    def do_join(self, rest: str):
        room = room_name(rest)
        if not rest or " " in rest or room is None:
            return self._usage("/join", f"a room is {ROOM_RULE}" if rest else "")
        if self.chat.rooms.join(room):  # new to us: current once the server confirms it
            self.chat.lines.add(join_line(room, f"/join {rest}"))
        else:
            self.switch(room)

    def do_part(self, rest: str):
        room = room_name(rest) if rest else self.chat.rooms.current
        if room is None:
            return self._usage("/part", f"a room is {ROOM_RULE}")
        if not room or not self.chat.rooms.part(room):
            return self._refused(f"not in #{room}" if room else "not in any room")
        self.chat.lines.add(part_line(room, f"/part {rest}".strip()))

    def do_rooms(self, rest: str):
        if (link := self._settled("/rooms")) is None:
            return
        if (answer := self._call(link, "/rooms", "ListRooms", pb.ListRoomsRequest())) is None:
            return
        mine = set(self.chat.rooms.joined())
        rooms = [self._listed(clean_text(r.name), r.members, mine) for r in answer.rooms]
        self.renderer.notice(f"rooms ({len(rooms)}): {', '.join(rooms)}")

    def do_who(self, rest: str):
        if rest and (named := room_name(rest)) is None:
            return self._usage("/who", f"a room is {ROOM_RULE}")
        if (link := self._settled("/who")) is None:
            return
        room = named if rest else self.chat.room  # after the wait: where the lines before led
        request = pb.ListUsersRequest(room=room)
        if (answer := self._call(link, "/who", "ListUsers", request)) is None:
            return
        names = sorted((clean_text(u.username) for u in answer.users), key=str.lower)
        self.chat.roster.reset(room, names)
        self.renderer.notice(f"in #{room} ({len(names)}): {', '.join(names)}")

    def do_msg(self, rest: str):
        to, _, text = rest.partition(" ")
        if not to or not clean_text(text):
            return self._usage("/msg")
        if not is_valid_name(to):
            return self._refused(f"no one can be called {to!r}: a name is {NAME_RULE}")
        self._say(message_line(text, to=to))

    def do_me(self, rest: str):
        if not clean_text(rest):
            return self._usage("/me")
        self._say_here(rest, action=True)

    def do_help(self, rest: str):
        for name, (arguments, what) in COMMANDS.items():  # "/part [#room] (or /leave): ..."
            also = [alias for alias, command in ALIASES.items() if command == name]
            usage = " ".join([name, arguments] if arguments else [name])
            usage += f" (or {', '.join(also)})" if also else ""
            self.renderer.notice(f"{usage}: {what}")
        self.renderer.notice(f"{ESCAPE}text: send a line that starts with /")
        self.renderer.notice("Alt-A: go to the next room with unread lines")
        self.renderer.notice("Tab: complete a command, a #room, or a name (after /msg, @)")

    def do_quit(self, rest: str):
        return QUIT

    def switch(self, room: str) -> None:
        """Make `room`, one we are in, current: what was missed there, then its lines."""
        if self.chat.rooms.switch(room):
            self.renderer.enter_room(room)

    # -- what they share -----------------------------------------------------------

    def _say_here(self, text: str, action: bool = False) -> None:
        """Say `text` in the current room."""
        if not (room := self.chat.rooms.current):
            if clean_text(text):
                self._refused("not sent: you are in no room (/join one)")
            return
        self._say(message_line(text, action=action, room=room))

    def _say(self, line) -> None:
        """Send a line, kept until it comes back; refuse it here if the server would."""
        if not clean_text(line.event.chat_message.message):
            return  # nothing to send
        if reason := refusal(line, self.chat.max_chars):
            self.chat.lines.fail()
            return self.renderer.refuse(reason)
        self.chat.lines.add(line)

    def _listed(self, room: str, members: int, mine: set[str]) -> str:
        """ "#rust (3)"; "(3, here)" for the current room, "(3, yours)" for another of ours."""
        here = ", here" if room == self.chat.room else ", yours" if room in mine else ""
        return f"#{room} ({members}{here})"

    def _refused(self, text: str) -> None:
        """A line that cannot run or go: say why (the exit status says it too)."""
        self.chat.lines.fail()
        self.renderer.problem(text)

    def _usage(self, name: str, why: str = "") -> None:
        arguments = COMMANDS[name][0]
        self._refused(f"usage: {name} {arguments}" + (f" ({why})" if why else ""))

    def _settled(self, what: str):
        """Wait for the lines before a query to be confirmed; the call to ask on, or None."""
        chat = self.chat
        if chat.link is not None and not chat.link.ended.is_set():
            chat.lines.wait_settled(QUERY_TIMEOUT_S)
        link = chat.link
        if link is None or link.ended.is_set():
            return self._refused(f"{what}: not connected, try again in a moment")
        return link

    def _call(self, link, what: str, method: str, request):
        """One unary call on the Chat call's channel, with a deadline; None after an error."""
        stub = chat_pb2_grpc.ChatServiceStub(link.channel)
        try:
            return getattr(stub, method)(request, timeout=QUERY_TIMEOUT_S)
        except grpc.RpcError as error:
            return self._refused(f"{what} failed: {describe(error)}")
        except ValueError:  # the channel closed under us: the call just dropped
            return self._refused(f"{what}: not connected, try again in a moment")
