"""History from Redis for joins of rooms: a room's last N, or all after an id, in pages.

The Chat handler (session.py) asks `store.history(limit, after_id, room)`
when a client joins a room (its first, or another). These methods are part of `RedisStore`
(cluster/store.py), kept in this file so each reads in one sitting: they use
its link, its lock and what it holds in memory.

Each room's history is a stream of its own (`cluster.keys.history_key`: the
lobby's is `chat:messages`), so a quiet room's last 50 is one short
XREVRANGE however busy the other rooms are. A resume reads a page at a time
(`XRANGE ... COUNT`) and holds only that page. Messages delivered but not
yet written (an outage while alone on Redis) are merged in by origin, so
each comes once; while Redis is known to be away, joins are answered from
what this server has: a small cache of recent messages and the unwritten ones.
"""

import dataclasses
import logging
from collections.abc import Iterator

import redis

from cluster.entries import origin, to_message
from cluster.keys import history_key
from store import HISTORY_PAGE, HistoryUnavailable, Message, id_key, messages_after, pages

log = logging.getLogger(__name__)


class History:
    """RedisStore's history reads; see the module docstring."""

    def history(
        self, limit: int, after_id: str | None = None, room: str = "lobby"
    ) -> Iterator[list[Message]]:
        """Pages of `room`'s stored messages, plus those delivered but not yet written.

        The last `limit`, or every kept message after `after_id` (a ValueError
        now if it is malformed). NOTE: the unwritten snapshot is taken *before*
        reading Redis: an entry leaves `_pending` only once written, so each
        message is in one or both, and the copies are merged by origin.
        """
        if after_id:
            id_key(after_id)  # refuse a malformed id before anything is read
        with self._lock:
            unwritten = {
                (self.server_id, p.seq): p.message()
                for p in self._pending
                if p.id and p.room == room
            }
        if not self.redis.reachable:  # known lost: do not wait on Redis during a join
            if after_id and not self.can_resume(after_id):
                raise HistoryUnavailable(after_id)
            return pages(self._cached(room, unwritten, limit, after_id))
        if after_id:
            return self._pages_after(room, after_id, unwritten)
        return pages(self._last(room, limit, unwritten))

    def can_resume(self, after_id: str) -> bool:
        """Can a resume after `after_id` be answered whole right now?

        Yes while Redis answers. While it is away, only if this server has
        seen every message since `after_id`: its cache of recent deliveries
        reaches back that far (a server that restarted since, or whose cache
        has moved on, would hand out a gap).
        """
        if self.redis.reachable:
            return True
        try:
            cut = id_key(after_id)
        except ValueError:
            return True  # a malformed id gets its notice and the last N
        with self._lock:
            oldest = self._recent[0].id if self._recent else None
        return oldest is not None and id_key(oldest) <= cut

    def _last(self, room: str, limit: int, unwritten: dict) -> list[Message]:
        if limit <= 0:
            return []
        try:
            entries = self.redis.quick.xrevrange(history_key(room), count=limit)[::-1]
        except redis.RedisError as error:
            return self._history_failed(error, room, unwritten, limit, None)
        stored = {origin(i, fields): _in_room(i, fields, room) for i, fields in entries}
        return _merge(unwritten, stored)[-limit:]

    def _pages_after(self, room: str, after_id: str, unwritten: dict) -> Iterator[list[Message]]:
        """Read on a page at a time: only one page is ever held here."""
        position = after_id
        while True:
            try:
                entries = self.redis.quick.xrange(
                    history_key(room), min=f"({position}", count=HISTORY_PAGE
                )
            except redis.RedisError as error:
                yield from pages(self._history_failed(error, room, unwritten, 0, position))
                return
            for entry_id, fields in entries:
                unwritten.pop(origin(entry_id, fields), None)  # written meanwhile: once
            if entries:
                yield [_in_room(entry_id, fields, room) for entry_id, fields in entries]
                position = entries[-1][0]
            if len(entries) < HISTORY_PAGE:
                break
        yield from pages(messages_after(_merge(unwritten, {}), position, 0))

    def _history_failed(self, error, room, unwritten, limit, after_id) -> list[Message]:
        self.redis.mark_down()
        if after_id and not self.can_resume(after_id):
            log.warning("history from Redis failed (%s): cannot resume this join", error)
            raise HistoryUnavailable(after_id)
        log.warning("history from Redis failed (%s): replaying what this server has", error)
        return self._cached(room, unwritten, limit, after_id)

    def _cached(self, room: str, unwritten: dict, limit: int, after_id) -> list[Message]:
        """`room`'s history from memory: recent deliveries and unwritten messages."""
        with self._lock:
            by_id = {m.id: m for m in self._recent if m.room == room}
        by_id.update((m.id, m) for m in unwritten.values())  # stranded ones are in both
        return messages_after(sorted(by_id.values(), key=lambda m: id_key(m.id)), after_id, limit)


def _in_room(entry_id: str, fields: dict, room: str) -> Message:
    """An entry of `room`'s history stream: in that room, whatever its fields say."""
    message = to_message(entry_id, fields)
    return message if message.room == room else dataclasses.replace(message, room=room)


def _merge(unwritten: dict, stored: dict) -> list[Message]:
    """Both sets of messages, keyed by origin (the stored copy wins), oldest first."""
    return sorted({**unwritten, **stored}.values(), key=lambda m: id_key(m.id))
