"""The Redis store's writer thread: what the hub accepted, written to the streams in order.

Part of `RedisStore` (cluster/store.py), kept in this file so each reads
in one sitting; its state and its locks are the store's (see there).
The writer is the only thread that removes from `_pending`. It writes in
pipelined batches, each message once (cluster/lua.py WRITE remembers the
last seq each server wrote, so a batch sent again after a lost reply adds
nothing), and, with `--redis-replicas N`, waits until N replicas hold the
batch. When Redis is lost it decides what happens to the messages that
wait (`_go_offline`): delivered with our own ids if we are alone on Redis,
refused (NotSent) if other servers share it; and it writes them, in order,
as soon as Redis answers again.
"""

import dataclasses
import itertools
import logging
import time

import redis

from cluster.entries import Pending
from cluster.keys import check_replicas, followed_key, history_key, sent_key, written_key
from store import KEY_TTL_S, Message

log = logging.getLogger("cluster.store")

WRITE_BATCH_MAX = 200  # messages per pipelined XADD round trip
RETRY_S = 0.5  # how often the writer retries a lost Redis
WRITTEN_TTL_S = 86_400  # how long Redis remembers our last written seq (retries take seconds)


class Writer:
    """Mixed into RedisStore: the writer thread and what it does when Redis goes."""

    def _write_loop(self) -> None:
        outage_since = None  # monotonic time Redis was lost; None while it answers
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return  # closing, and everything is written
                batch = list(itertools.islice(self._pending, WRITE_BATCH_MAX))
                waiting, dropped, self._dropped = len(self._pending), self._dropped, 0
            if dropped:
                log.error("history buffer full: %d messages dropped unwritten", dropped)
            try:
                written = self._write(batch)
            except redis.RedisError as error:
                self.redis.mark_down()
                if outage_since is None:
                    outage_since = time.monotonic()
                    self._go_offline(error, waiting)
                if self._sleep_unless_closing(RETRY_S):
                    log.error("store closed during a Redis outage")
                    return
                continue
            self.redis.mark_up()
            echoes = []  # lines sent again: their senders get the first
            with self._lock:
                while self._pending and self._pending[0].seq <= batch[-1].seq:
                    self._pending.popleft()
                was_online, self._online = self._online, True
                for p, entry_id in zip(batch, written, strict=True):
                    if isinstance(entry_id, list):  # its key was held: sent before
                        first = dataclasses.replace(p, id=entry_id[0]).message()
                        self._keys.remember(p.username, p.key, first)
                        echoes.append(first)
                        continue
                    read_back = p.seq <= self._followed_own.get(followed_key(p.room), 0)
                    if entry_id and p.id is None and not read_back:  # the follower will
                        self._ids.advance_past(entry_id)
                        self._unfollowed.append((p.seq, dataclasses.replace(p, id=entry_id)))
            for first in echoes:
                self._echo(first)
            if not was_online:
                self.redis.changed()
            if outage_since is not None:
                lost_s, outage_since = time.monotonic() - outage_since, None
                log.warning("Redis back after %.1f s: writing %d waiting messages", lost_s, waiting)

    def _write(self, batch: list[Pending]) -> list:
        """Write a batch in one round trip: each one's new id, or None if written before.

        Ids already delivered (an outage, alone) are kept if the stream allows.
        """
        pipe = self.redis.client.pipeline(transaction=False)
        for p in batch:
            self._xadd(pipe, p, p.id or "*")
        if not self._replicas:
            return pipe.execute()
        # Answered only once replicas hold the batch; if not in time, the batch
        # stays pending and is written again (a no-op where it was written).
        self.redis.wait_for_replicas(pipe, self._replicas)
        return check_replicas(pipe.execute(), self._replicas)

    def _await_replicas(self) -> None:
        """Follower thread: return once the replicas hold what was just read."""
        pipe = self.redis.client.pipeline(transaction=False)
        self.redis.wait_for_replicas(pipe, self._replicas)
        check_replicas(pipe.execute(), self._replicas)

    def _xadd(self, pipe, p: Pending, entry_id: str) -> None:
        """Write one message once (cluster.lua.WRITE): a retry after a lost reply is a no-op."""
        fields = p.fields(self.server_id)
        keys = [followed_key(p.room), history_key(p.room), written_key(self.server_id)]
        if p.key:
            keys.append(sent_key(p.username, p.key))
        args = [self._max_messages, entry_id, p.seq, WRITTEN_TTL_S, int(KEY_TTL_S)]
        args += [value for pair in fields.items() for value in pair]
        self.redis.run("write", keys, args, pipe)

    def _go_offline(self, error, waiting: int) -> None:
        """Redis is lost. Alone: deliver what waits, with our own ids. Shared: refuse."""
        with self._handing:
            with self._lock:
                shared = self._strict()
                self._online = False
                stranded = [] if shared else self._strand_locked()
            if stranded:
                self._deliver(stranded)
        self.redis.changed()
        if shared:
            log.error("Redis lost (%s): refusing messages, %d to write", error, waiting)
        else:
            log.error("Redis lost (%s): chat goes on, %d messages waiting", error, waiting)

    def _strand_locked(self) -> list[Message]:
        """Go offline: every undelivered message, written ones first; ours get our ids."""
        self._online = False
        messages = [p.message() for _, p in self._unfollowed]  # their ids are the stream's
        if self._unfollowed:
            self._delivered_seq = max(self._delivered_seq, self._unfollowed[-1][0])
            self._unfollowed.clear()
        stranded = [p for p in self._pending if p.id is None]
        for p in stranded:
            p.id = self._ids.next()
            self._delivered_seq = p.seq
        messages += [p.message() for p in stranded]
        self._recent.extend(messages)
        for message in messages:
            self._keys.remember(message.username, message.key, message)
        return messages

    def _sleep_unless_closing(self, wait_s: float) -> bool:
        """Sleep `wait_s`, True at once if closing.

        NOTE: append() notifies `_wake` for every message. Sleep to the
        deadline through those, or an outage retries Redis per message.
        """
        deadline = time.monotonic() + wait_s
        with self._lock:
            while not self._closing and (left := deadline - time.monotonic()) > 0:
                self._wake.wait(left)
            return self._closing
