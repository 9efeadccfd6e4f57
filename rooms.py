"""Who is where: each room's members on this server, and the other servers' users.

A user is in exactly one room at a time; every stream starts in `lobby`.
The hub (hub.py) keeps one `Directory` and changes it only under its own
lock, so the directory has no lock of its own. It answers the hub's one
hot question, "whose queues get this room's event?", with the room's own
member dict: a room of ten costs ten puts, however many rooms there are.

Users of other servers (known from cluster/presence.py's events) are kept apart as
`Remote` entries: the hub never puts into their queues, but they count in
"who is in #rust", `ListRooms` and `ListUsers`.
"""

from dataclasses import dataclass

from member import Client
from sanitize import LOBBY


@dataclass(slots=True)
class Remote:
    """A user of another server, as far as this one knows."""

    room: str
    typing: bool = False


class Directory:
    """Rooms and their members; guarded by the hub's lock."""

    def __init__(self):
        self.clients: dict[str, Client] = {}  # our joined users, by name
        self.remote: dict[str, Remote] = {}  # other servers' users, by name
        self._rooms: dict[str, dict[str, Client]] = {}  # room -> our members, by name

    def add(self, client: Client) -> None:
        self.clients[client.name] = client
        self._rooms.setdefault(client.room, {})[client.name] = client

    def remove(self, client: Client) -> None:
        del self.clients[client.name]
        self._leave_room(client)

    def move(self, client: Client, room: str) -> None:
        self._leave_room(client)
        client.room = room
        self._rooms.setdefault(room, {})[client.name] = client

    def members(self, room: str):
        """Our clients in `room` (a view: copy it before changing the directory)."""
        return self._rooms.get(room, {}).values()

    def names_in(self, room: str) -> list[str]:
        """Everyone in `room`, here and elsewhere, sorted."""
        remote = [name for name, user in self.remote.items() if user.room == room]
        return sorted([*self._rooms.get(room, {}), *remote])

    def rooms(self) -> dict[str, int]:
        """Every room with a member anywhere (and the lobby), with its member count."""
        counts = {LOBBY: 0}
        for room, members in self._rooms.items():
            counts[room] = counts.get(room, 0) + len(members)
        for user in self.remote.values():
            counts[user.room] = counts.get(user.room, 0) + 1
        return counts

    def users(self, room: str | None = None) -> list[tuple[str, str]]:
        """(name, room) of everyone online, or of everyone in `room`, sorted by name."""
        everyone = [(c.name, c.room) for c in self.clients.values()]
        everyone += [(name, user.room) for name, user in self.remote.items()]
        return sorted(u for u in everyone if room is None or u[1] == room)

    def _leave_room(self, client: Client) -> None:
        members = self._rooms[client.room]
        del members[client.name]
        if not members and client.room != LOBBY:
            del self._rooms[client.room]  # an empty room is forgotten
