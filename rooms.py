"""Who is where: each room's members on this server, and the other servers' users.

A user is in a set of rooms at once (at most `--max-rooms`), possibly none;
every stream starts in one room (`lobby` unless it names another). The hub
(hub.py) keeps one `Directory` and changes it only under its own lock, so
the directory has no lock of its own. It answers the hub's one hot
question, "whose queues get this room's event?", with the room's own
member dict: a room of ten costs ten puts, however many rooms there are,
and a member of several rooms is in each room's dict once, so each event
of a room reaches it once.

Users of other servers (known from cluster/presence.py's events) are kept apart as
`Remote` entries: the hub never puts into their queues, but they count in
"who is in #rust", `ListRooms` and `ListUsers`.
"""

from dataclasses import dataclass, field

from member import Client
from sanitize import LOBBY


@dataclass(slots=True)
class Remote:
    """A user of another server, as far as this one knows."""

    rooms: set[str] = field(default_factory=set)
    typing: str = ""  # the room they are typing in, "" when not typing


class Directory:
    """Rooms and their members; guarded by the hub's lock."""

    def __init__(self):
        self.clients: dict[str, Client] = {}  # our joined users, by name
        self.remote: dict[str, Remote] = {}  # other servers' users, by name
        self._rooms: dict[str, dict[str, Client]] = {}  # room -> our members, by name

    def add(self, client: Client) -> None:
        """Register `client` in the rooms it already names (its first room)."""
        self.clients[client.name] = client
        for room in client.rooms:
            self._rooms.setdefault(room, {})[client.name] = client

    def remove(self, client: Client) -> None:
        del self.clients[client.name]
        for room in client.rooms:
            self._forget_member(client, room)

    def enter(self, client: Client, room: str) -> None:
        client.rooms.add(room)
        self._rooms.setdefault(room, {})[client.name] = client

    def part(self, client: Client, room: str) -> None:
        client.rooms.discard(room)
        self._forget_member(client, room)

    def members(self, room: str):
        """Our clients in `room` (a view: copy it before changing the directory)."""
        return self._rooms.get(room, {}).values()

    def names_in(self, room: str) -> list[str]:
        """Everyone in `room`, here and elsewhere, sorted."""
        remote = [name for name, user in self.remote.items() if room in user.rooms]
        return sorted([*self._rooms.get(room, {}), *remote])

    def rooms(self) -> dict[str, int]:
        """Every room with a member anywhere (and the lobby), with its member count."""
        counts = {LOBBY: 0}
        for room, members in self._rooms.items():
            counts[room] = counts.get(room, 0) + len(members)
        for user in self.remote.values():
            for room in user.rooms:
                counts[room] = counts.get(room, 0) + 1
        return counts

    def users(self, room: str | None = None) -> list[tuple[str, list[str]]]:
        """(name, its rooms sorted) of everyone online, or of everyone in `room`, by name."""
        everyone = [(c.name, c.rooms) for c in self.clients.values()]
        everyone += [(name, user.rooms) for name, user in self.remote.items()]
        return sorted((n, sorted(r)) for n, r in everyone if room is None or room in r)

    def _forget_member(self, client: Client, room: str) -> None:
        members = self._rooms.get(room)
        if members is None or members.pop(client.name, None) is None:
            return
        if not members and room != LOBBY:
            del self._rooms[room]  # an empty room is forgotten
