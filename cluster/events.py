"""Live events between servers: typing out, everyone's joins, rooms, leaves and dms in.

Part of the cluster (cluster/presence.py keeps names, rooms and liveness). Every
change of presence is appended to `chat:events` by the Lua script that
makes it (cluster/keys.py); typing and direct messages are appended here. The
stream is capped, and every server follows it from the last id it has seen
(cluster/follow.py), skipping the events about its own users:

- **joined / rooms / left** (with every room the user is in, as Redis
  keeps them: `rooms_field`) -> `hub.remote_event`, which announces only
  changes, so an event seen twice is shown once;
- **typing** (with the room typed in) -> `hub.remote_event("typing", ...)`;
- **dm** (sender, to, text, timestamp, action, key, token) ->
  `hub.remote_direct`, on every server, our own included: only the one that
  holds `to` delivers, so a recipient who moved here since the message was
  sent still gets it once. That server first takes it in Redis (TAKE_DM):
  once per sender and key (a line sent again after a lost echo is not
  delivered twice), only while fresh, and with a `dm_ack` event back;
- **dm_ack** -> the sender's server: the echo of a direct message means its
  recipient's server took it. Without an ack within DM_ACK_WAIT_S (that
  server is dead or frozen, or Redis stalls) the sender gets NOT_SENT and
  sends it again, never an echo for a message that is lost.

A server that was cut off catches up from its last id when Redis answers;
if it missed too much (the cap trimmed it), or at start or after any error,
it *resyncs*: one script returns every name with its rooms and the stream's
position at the same instant, the hub announces the difference
(`hub.resync_remote`), and reading goes on from there.

Why a stream and not Pub/Sub: Pub/Sub keeps nothing, so every reconnect
needs a reconciliation, and an event sent in the second before it is lost
for good (a join shown to no one). The stream costs one XADD of ~60 bytes
per event (10,000 kept, under 1 MB) and gives the same one order on every
server; a resync is needed only when the cap is overrun.

These methods are part of `Cluster`, kept in this file so each reads in one
sitting: they use its link, hub, `_outbox` and `_stopped`. Threads: the
*publisher* (`_publish_loop`) is the only taker from `_outbox`; the
*follower* calls `_on_events` and `_resync`; `direct` runs on the sender's
reader thread.
"""

import queue
import threading
import uuid

import redis

from cluster.keys import (
    EVENTS_KEY,
    EVENTS_MAX,
    FOLLOWED_KEYS,
    NOT_SENT_TEXT,
    PRESENCE_KEYS,
    QUICK_TIMEOUT_S,
    taken_key,
)  # fmt: skip
from cluster.order import after_ids
from sanitize import LOBBY, room_name
from store import KEY_TTL_S, NotSent

PUBLISH_BATCH_MAX = 200  # typing events per round trip
# A direct message's sender waits this long for its recipient's server to take it
# (a round trip to Redis each way, and that server's follower); then NOT_SENT.
DM_ACK_WAIT_S = 5.0
# A recipient's server takes a direct message only this fresh (Redis' clock), so
# one whose sender was answered NOT_SENT is never delivered late (a frozen server
# woken, a stalled Redis): the sender sends it again instead.
DM_MAX_AGE_MS = 4_000
NOT_TAKEN_TEXT = "the recipient's server did not answer"


class LiveEvents:
    """The cluster's live events; see the module docstring."""

    def publish_typing(self, name: str, kind: int, room: str) -> None:
        """Hand a local typing change in `room` to the other servers. Never blocks."""
        try:
            self._outbox.put_nowait((name, int(kind), room))
        except queue.Full:
            pass  # Redis has been away long: typing is not worth keeping

    def _publish_loop(self) -> None:
        batch = []  # kept across a failed write: a STOP must not be lost for good
        while not self._stopped.is_set():
            if not batch:
                try:
                    batch.append(self._outbox.get(timeout=1.0))  # wakes to see close()
                except queue.Empty:
                    continue
            while len(batch) < PUBLISH_BATCH_MAX and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())  # we are the only taker
            if self._write_typing(batch):
                batch = []

    def _write_typing(self, batch: list) -> bool:
        pipe = self._link.quick.pipeline(transaction=False)
        for name, kind, room in batch:
            fields = {"kind": "typing", "name": name, "server": self.server_id, "typing": kind,
                      "room": room}  # fmt: skip
            pipe.xadd(EVENTS_KEY, fields, maxlen=EVENTS_MAX, approximate=True)
        try:
            pipe.execute()
            return True
        except redis.RedisError:
            self._link.mark_down()
            self._stopped.wait(QUICK_TIMEOUT_S)
            return False

    def direct(self, sender, to, text, timestamp: int, action: bool, key: str = "") -> None:
        """Hand a direct message to another server's user; return once their server took it.

        Every server reads it; the one that holds `to` delivers it. Never
        stored. Raises NotSent if Redis or that server does not answer in
        DM_ACK_WAIT_S. Runs on the sender's reader thread.
        """
        if not self._link.reachable:
            raise NotSent(NOT_SENT_TEXT)
        token = uuid.uuid4().hex[:16]
        taken = threading.Event()
        with self._acks_lock:
            self._acks[token] = taken
        fields = {"kind": "dm", "server": self.server_id, "sender": sender, "to": to,
                  "text": text, "timestamp": timestamp, "action": int(action), "key": key,
                  "token": token}  # fmt: skip
        try:
            self._link.quick.xadd(EVENTS_KEY, fields, maxlen=EVENTS_MAX, approximate=True)
            if not taken.wait(DM_ACK_WAIT_S):
                raise NotSent(NOT_TAKEN_TEXT)
        except redis.RedisError as error:
            self._link.mark_down()
            raise NotSent(NOT_SENT_TEXT) from error
        finally:
            with self._acks_lock:
                del self._acks[token]

    def _on_events(self, batches: dict[str, list]) -> None:
        """Follower thread: other servers' joins, rooms, leaves, typing and dms, in order.

        A join, rooms or leave is shown after the messages written before it
        (the leaver's last words): the events before it are marked handed on,
        then it waits for the message follower (cluster/order.py).
        """
        [(stream, entries)] = batches.items()  # the one stream we follow
        self._hub.make_room(len(entries))  # a burst (a dead server's users) is paced
        previous = None
        for entry_id, fields in entries:
            kind, name = fields.get("kind"), fields.get("name")
            if kind == "dm":  # ours too: its recipient may have come here meanwhile
                self._on_direct(entry_id, fields)
            elif kind == "dm_ack":
                self._on_taken(fields)
            elif fields.get("server") == self.server_id or not name:
                pass  # ours (the hub showed it already), or not an event of ours
            elif kind in ("joined", "rooms", "left"):
                self._after_messages(stream, previous, fields.get("after"))
                self._hub.remote_event(kind, name, rooms=parse_rooms(fields.get("room")))
            elif kind == "typing" and fields.get("typing", "").isdigit():
                room = {_room(fields.get("room"))}
                self._hub.remote_event(kind, name, int(fields["typing"]), rooms=room)
            previous = entry_id

    def _after_messages(self, stream: str, previous: str | None, after: str | None) -> None:
        """Wait until the messages an event names (its `after`) are handed on."""
        waits = [
            (key, entry_id)
            for key, entry_id in zip(FOLLOWED_KEYS, after_ids(after), strict=False)
            if not self._progress.reached(key, entry_id)
        ]
        if waits and previous is not None:
            self._progress.passed(stream, previous)  # what the message follower may wait for
        for key, entry_id in waits:
            self._progress.wait(key, entry_id)

    def first_direct(self, sender: str, key: str) -> bool:
        """A direct message for one of ours, taken here: False if a server took it before.

        True too if Redis does not answer: this server's own memory of keys decides.
        """
        try:
            return bool(
                self._link.quick.set(taken_key(sender, key), "here", nx=True, ex=int(KEY_TTL_S))
            )
        except redis.RedisError:
            self._link.mark_down()
            return True

    def _on_direct(self, entry_id: str, fields: dict) -> None:
        """A direct message: if its recipient is ours, take it (once, if fresh) and deliver it."""
        sender, to, text = fields.get("sender"), fields.get("to"), fields.get("text")
        if not (sender and to and text and self._hub.holds(to)):
            return
        token, key = fields.get("token", ""), fields.get("key", "")
        taken = taken_key(sender, key) if key else taken_key("", token or entry_id)
        args = [EVENTS_MAX, entry_id, DM_MAX_AGE_MS, int(KEY_TTL_S), self.server_id]
        try:
            first = self._link.run(
                "take_dm", [taken, EVENTS_KEY], [*args, fields.get("server", ""), token]
            )
        except redis.RedisError:
            self._link.mark_down()
            return  # not taken: its sender is answered NOT_SENT and sends it again
        if first == 1:
            timestamp = fields.get("timestamp", "")
            timestamp = int(timestamp) if timestamp.isdigit() else 0
            self._hub.remote_direct(sender, to, text, timestamp, fields.get("action") == "1")

    def _on_taken(self, fields: dict) -> None:
        """A `dm_ack`: if it is for one of ours, its sender's echo may go."""
        if fields.get("for") == self.server_id:
            with self._acks_lock:
                taken = self._acks.get(fields.get("token", ""))
            if taken is not None:
                taken.set()

    def _resync(self) -> tuple[str, int]:
        """Follower thread: who is online elsewhere (in which rooms), and the events' position."""
        names, where, (position, added) = self._link.run("resync", PRESENCE_KEYS, [])
        claims = dict(zip(names[::2], names[1::2], strict=False))
        rooms = dict(zip(where[::2], where[1::2], strict=False))
        others = {
            n: parse_rooms(rooms.get(n))
            for n, t in claims.items()
            if _server_of(t) != self.server_id
        }
        self._hub.resync_remote(others)
        return position, added


def _server_of(token: str) -> str:
    """The server id in a claim token "<server id>:<session>"."""
    return token.split(":", 1)[0]


def rooms_field(rooms) -> str:
    """A set of rooms as Redis keeps it (`chat:where`, the events' `room`): sorted, by commas."""
    return ",".join(sorted(rooms))


def parse_rooms(raw: str | None) -> set[str]:
    """The rooms in a `rooms_field` ("" is none); missing: the lobby; bad names dropped."""
    if raw is None:
        return {LOBBY}
    rooms = {room_name(part) for part in raw.split(",") if part}
    return rooms - {None}


def _room(raw: str | None) -> str:
    """A room as Redis gave it; missing or not a room name: the lobby."""
    return room_name(raw or LOBBY) or LOBBY
