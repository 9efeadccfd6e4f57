"""Live events between servers: typing out, everyone's joins, moves, leaves and dms in.

Part of the cluster (cluster/presence.py keeps names, rooms and liveness). Every
change of presence is appended to `chat:events` by the Lua script that
makes it (cluster/keys.py); typing and direct messages are appended here. The
stream is capped, and every server follows it from the last id it has seen
(cluster/follow.py), skipping the events about its own users:

- **joined / moved / left** (with the room) -> `hub.remote_event`, which
  announces only changes, so an event seen twice is shown once;
- **typing** -> `hub.remote_event("typing", ...)`: the hub knows the
  typer's room;
- **dm** (sender, to, text, timestamp, action) -> `hub.remote_direct`, on
  every server, our own included: only the one that holds `to` delivers, so
  a recipient who moved here since the message was sent still gets it once.

A server that was cut off catches up from its last id when Redis answers;
if it missed too much (the cap trimmed it), or at start or after any error,
it *resyncs*: one script returns every name with its room and the stream's
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

import redis

from cluster.keys import EVENTS_KEY, EVENTS_MAX, NOT_SENT_TEXT, PRESENCE_KEYS, QUICK_TIMEOUT_S
from sanitize import LOBBY, room_name
from store import NotSent

PUBLISH_BATCH_MAX = 200  # typing events per round trip


class LiveEvents:
    """The cluster's live events; see the module docstring."""

    def publish_typing(self, name: str, kind: int) -> None:
        """Hand a local typing change to the other servers. Never blocks."""
        try:
            self._outbox.put_nowait((name, int(kind)))
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
        for name, kind in batch:
            fields = {"kind": "typing", "name": name, "server": self.server_id, "typing": kind}
            pipe.xadd(EVENTS_KEY, fields, maxlen=EVENTS_MAX, approximate=True)
        try:
            pipe.execute()
            return True
        except redis.RedisError:
            self._link.mark_down()
            self._stopped.wait(QUICK_TIMEOUT_S)
            return False

    def direct(self, sender, to, text, timestamp: int, action: bool, key: str = "") -> None:
        """Hand a direct message for another server's user to Redis, or raise NotSent.

        Every server reads it; the one that holds `to` delivers it. Never stored.
        """
        if not self._link.reachable:
            raise NotSent(NOT_SENT_TEXT)
        fields = {"kind": "dm", "server": self.server_id, "sender": sender, "to": to,
                  "text": text, "timestamp": timestamp, "action": int(action)}  # fmt: skip
        try:
            self._link.quick.xadd(EVENTS_KEY, fields, maxlen=EVENTS_MAX, approximate=True)
        except redis.RedisError as error:
            self._link.mark_down()
            raise NotSent(NOT_SENT_TEXT) from error

    def _on_events(self, entries: list) -> None:
        """Follower thread: other servers' joins, moves, leaves, typing and dms, in order."""
        for _, fields in entries:
            kind, name = fields.get("kind"), fields.get("name")
            if kind == "dm":  # ours too: its recipient may have come here meanwhile
                self._on_direct(fields)
            elif fields.get("server") == self.server_id or not name:
                continue  # ours (the hub showed it already), or not an event of ours
            elif kind in ("joined", "moved", "left"):
                self._hub.remote_event(kind, name, room=_room(fields.get("room")))
            elif kind == "typing" and fields.get("typing", "").isdigit():
                self._hub.remote_event(kind, name, int(fields["typing"]))

    def _on_direct(self, fields: dict) -> None:
        sender, to, text = fields.get("sender"), fields.get("to"), fields.get("text")
        if sender and to and text:
            timestamp = fields.get("timestamp", "")
            timestamp = int(timestamp) if timestamp.isdigit() else 0
            self._hub.remote_direct(sender, to, text, timestamp, fields.get("action") == "1")

    def _resync(self) -> tuple[str, int]:
        """Follower thread: who is online elsewhere (and where), and the events' position."""
        names, where, (position, added) = self._link.run("resync", PRESENCE_KEYS, [])
        claims = dict(zip(names[::2], names[1::2], strict=False))
        rooms = dict(zip(where[::2], where[1::2], strict=False))
        others = {
            n: _room(rooms.get(n)) for n, t in claims.items() if _server_of(t) != self.server_id
        }
        self._hub.resync_remote(others)
        return position, added


def _server_of(token: str) -> str:
    """The server id in a claim token "<server id>:<session>"."""
    return token.split(":", 1)[0]


def _room(raw: str | None) -> str:
    """A room as Redis gave it; missing or not a room name: the lobby."""
    return room_name(raw or LOBBY) or LOBBY
