"""What the Redis store's follower reads back: delivered once, in order, after what it names.

Part of `RedisStore` (cluster/store.py), kept in this file so each reads in
one sitting; its state and its locks are the store's (see there). The
follower thread (cluster/follow.py) calls `_deliver_new` with what each read
brought. An entry is handed to the hub unless it was delivered already:
written twice after a lost reply, or delivered by us during an outage
(dedupe by origin server and seq). Another server's message waits, at most
ORDER_WAIT_S, for the events written before it (cluster/order.py).
"""

from collections import deque

from cluster.entries import origin, to_message
from cluster.keys import EVENTS_KEY, followed_key
from cluster.order import after_ids
from sanitize import LOBBY
from store import Message, id_key


class Reading:
    """Mixed into RedisStore: the follower's side of the store."""

    def _deliver_new(self, batches: dict[str, list]) -> None:
        """Follower thread: deliver entries not delivered yet, each stream in its order.

        Another server's message waits for the events written before it (its
        sender's join, cluster/order.py). Each stream's entries are handed
        on up to the first that must wait; only when every stream is stuck
        does the follower wait (bounded), so an event that waits for one
        stream's messages is never held up by another's.
        """
        while batches:
            waits = {}
            for stream, entries in batches.items():
                stuck = next((i for i, entry in enumerate(entries) if self._early(entry)), None)
                self._hand_over(stream, entries[:stuck])
                if stuck is not None:
                    waits[stream] = entries[stuck:]
            targets = [t for entries in waits.values() if (t := self._early(entries[0]))]
            if targets:
                self.progress.wait(EVENTS_KEY, min(targets, key=id_key))
            batches = waits

    def _early(self, entry) -> str | None:
        """The event an entry of another server names, if it was not handed on yet."""
        _, fields = entry
        events = after_ids(fields.get("events"))
        if not events or fields.get("server") == self.server_id:
            return None
        return None if self.progress.reached(EVENTS_KEY, events[0]) else events[0]

    def _hand_over(self, stream: str, entries: list) -> None:
        """Deliver what of `entries` is fresh, and mark them handed on.

        NOTE: deciding what is fresh and handing it over is one step under
        `_handing`. Split, the writer could strand a message the follower
        had just read back (the follower's news not yet in `_unfollowed`)
        and both would deliver it: a message shown twice.
        """
        if not entries:
            return
        with self._handing:
            with self._lock:
                fresh = self._fresh_locked(entries)
            if fresh:
                self._deliver(fresh)
        self.progress.passed(stream, entries[-1][0])

    def _fresh_locked(self, entries: list) -> list[Message]:
        """The entries nobody delivered yet; what was ours is read back, so no longer ours."""
        self._ids.advance_past(entries[-1][0])  # outage ids stay above the stream
        fresh, ours, own_high = [], set(), {}
        for entry_id, fields in entries:
            source, seq = origin(entry_id, fields)
            if seq:  # one of our servers: dedupe by (stream, server, seq)
                stream = (followed_key(fields.get("room") or LOBBY), source)
                if seq <= self._seen.get(stream, 0):
                    continue  # written twice (a lost reply); delivered already
                self._seen[stream] = seq
                if source == self.server_id:
                    ours.add(seq)
                    own_high[stream[0]] = seq
                if source == self.server_id and seq <= self._delivered_seq:
                    continue  # we delivered it ourselves during an outage
            fresh.append(to_message(entry_id, fields))
        for message in fresh:
            self._keys.remember(message.username, message.key, message)
        self._followed_own.update(own_high)
        if ours and self._unfollowed:  # read back: no longer ours to deliver
            self._unfollowed = deque(w for w in self._unfollowed if w[0] not in ours)
        self._recent.extend(fresh)
        return fresh
