"""The Redis store's writer thread: what the hub accepted, written to the streams in order.

Part of `RedisStore` (cluster/store.py), kept in this file so each reads
in one sitting; its state and its locks are the store's (see there).
The writer is the only thread that removes from `_pending`. It writes in
pipelined batches, each message once (cluster/lua_messages.py WRITE remembers the
last seq each server wrote, so a batch sent again after a lost reply adds
nothing), and, with `--redis-replicas N`, waits until N replicas hold the
batch. When Redis is lost it decides what happens to the messages that
wait (`_go_offline`): delivered with our own ids if we are alone on Redis,
refused (NotSent) if other servers share it; and it writes them, in order,
as soon as Redis answers again.

Redis can also lose what it answered (restarted empty, FLUSHALL, a replica
promoted without our last writes): each WRITE tells the seq this server wrote
last, and Redis's "written up to" below it means what came after is gone.
Then the writer writes those messages again, first, under the ids they had
(`_restore_locked`): a server that delivered one already skips it (by server and
seq), one that had not delivers it now, ours included. While a server
restores, every server's new lines wait (RESTORING_MS), so what is written
again keeps its place before them; a server back from an outage that finds
a stream ending below what it read (others' writes lost) makes them wait
too (`_check_gone_back`). A quiet writer asks Redis every VERIFY_S
while its last writes are recent (`_check_written`).

The writer thread alone owns `_acked_seq` and `_written_log`.
"""

import dataclasses
import itertools
import logging
import time
from collections import deque

import redis

from cluster.entries import Pending
from cluster.keys import (
    FOLLOWED_KEYS,
    LAST_PRESENCE_KEY,
    RESTORING_KEY,
    check_replicas,
    followed_key,
    history_key,
    sent_key,
    written_key,
)
from store import KEY_TTL_S, Message, id_key

log = logging.getLogger("cluster.store")

WRITE_BATCH_MAX = 200  # messages per pipelined XADD round trip
RETRY_S = 0.5  # how often the writer retries a lost Redis
WRITTEN_TTL_S = 86_400  # how long Redis remembers our last written seq (retries take seconds)
RESTORE_WINDOW_S = 10.0  # written this recently, a message Redis lost is written again
RESTORING_MS = 500  # new lines of every server wait this long while one restores (a burst after)
VERIFY_S = 0.5  # a quiet writer checks this often that Redis kept its recent writes
WAIT_S = 0.1  # a new line refused while another server restores is tried again after this
LOST = "lost"  # how a batch may end (`_took`): Redis lost writes of ours
WAIT = "wait"  # or: a server is restoring, new lines wait


class Writer:
    """Mixed into RedisStore: the writer thread and what it does when Redis goes."""

    def _write_loop(self) -> None:
        outage_since = None  # monotonic time Redis was lost; None while it answers
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    if not self._wake.wait(VERIFY_S) and self._written_log:
                        break  # quiet: check that Redis still holds what we wrote
                if self._closing and not self._pending:
                    return  # closing, and everything is written
                batch = list(itertools.islice(self._pending, WRITE_BATCH_MAX))
                waiting, dropped, self._dropped = len(self._pending), self._dropped, 0
            if dropped:
                log.error("history buffer full: %d messages dropped unwritten", dropped)
            try:
                if outage_since is not None:
                    self._check_gone_back()
                replies = self._write(batch) if batch else self._check_written()
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
            outcome = self._took(batch, replies)
            if outage_since is not None:
                lost_s, outage_since = time.monotonic() - outage_since, None
                log.warning("Redis back after %.1f s: writing %d waiting messages", lost_s, waiting)
            if outcome == WAIT and self._sleep_unless_closing(WAIT_S):
                log.error("store closed while another server restored lost messages")
                return

    def _took(self, batch: list[Pending], replies: list):
        """Settle what Redis answered for `batch`: LOST, WAIT, or None if all was written.

        The replies are in the batch's order; the first that is not a write
        ends what was written (WRITE keeps our lines in order). A number is
        not a write (cluster/lua_messages.py WRITE, or `_check_written`): -1,
        wait; else the seq Redis holds our writes up to, having lost the rest.
        """
        echoes = []  # lines sent again: their senders get the first
        done, outcome = [], None
        for i, reply in enumerate(replies):
            if isinstance(reply, int):
                outcome = WAIT if reply < 0 else LOST
                break
            done.append((batch[i], reply))
        now = time.monotonic()
        with self._lock:
            last = done[-1][0].seq if done else 0  # by seq: an overflow may have dropped some
            while self._pending and self._pending[0].seq <= last:
                self._pending.popleft()
            was_online, self._online = self._online, True
            for p, entry_id in done:
                self._acked_seq = p.seq
                if isinstance(entry_id, list):  # its key was held: sent before
                    first = dataclasses.replace(p, id=entry_id[0]).message()
                    self._keys.remember(p.username, p.key, first)
                    echoes.append(first)
                    continue
                written = dataclasses.replace(p, id=entry_id or p.id)
                self._written_log.append((now, written))
                if entry_id and p.id is None and not self._read_back_locked(p):  # the follower will
                    self._ids.advance_past(entry_id)
                    self._unfollowed.append((p.seq, written))
            self._forget_old_writes(now)
            if outcome == LOST:
                self._restore_locked(replies[len(done)])
        for first in echoes:
            self._echo(first)
        if not was_online:
            self.redis.changed()
        return outcome

    def _restore_locked(self, kept: int) -> None:
        """Redis holds our writes only up to seq `kept`: write the rest again, first.

        One we had not delivered is delivered when read back, under the id it
        had if the stream is not past it by then. One we delivered (read back,
        or ours in an outage) is written again only under the id it had, or
        not at all: under another, a client resuming would see it twice.
        """
        lost = {p.seq: p for _, p in self._written_log if p.seq > kept}
        lost.update((seq, p) for seq, p in self._unfollowed if seq > kept)
        self._unfollowed = deque(w for w in self._unfollowed if w[0] <= kept)
        self._written_log = deque(w for w in self._written_log if w[1].seq <= kept)
        again = []
        for seq in sorted(lost):
            p = lost[seq]
            ours = self._read_back_locked(p) or seq <= self._delivered_seq
            if ours and not p.id:
                continue  # its id is unknown (a lost reply): history loses it
            again.append(dataclasses.replace(p, id=p.id if ours else None, written=p.id or ""))
        self._pending.extendleft(reversed(again))
        self._acked_seq = kept
        log.warning("Redis lost %d messages written here: writing them again", len(again))

    def _check_gone_back(self) -> None:
        """After an outage: Redis lost entries of any server if a stream ends below what we read.

        A replica promoted without the last writes of another server: our
        own writes may all be there, so our WRITE would not notice. New
        lines (ours first) wait, while the servers whose writes were lost
        write them again under their ids. Raises RedisError if Redis is
        still away.
        """
        for key in FOLLOWED_KEYS:
            last, _ = self.redis.run("tail", [key], [], self.redis.client)
            if id_key(last) < self.progress.handed_on(key):
                self.redis.client.set(RESTORING_KEY, "1", px=RESTORING_MS, nx=True)
                log.warning("Redis lost entries of %s it had given: new lines wait", key)
                return

    def _check_written(self) -> list:
        """A quiet writer's check: [] if Redis holds our writes, else [the seq it holds them to]."""
        kept = int(self.redis.client.get(written_key(self.server_id)) or 0)
        if kept >= self._acked_seq:  # nothing lost; what is older than the window is safe
            self._forget_old_writes(time.monotonic())
            return []
        self.redis.client.set(RESTORING_KEY, "1", px=RESTORING_MS)
        return [kept]

    def _forget_old_writes(self, now: float) -> None:
        """Writer thread: what was written before the window (or past the cap) is kept for good."""
        while self._written_log and (
            now - self._written_log[0][0] > RESTORE_WINDOW_S
            or len(self._written_log) > self._max_messages
        ):
            self._written_log.popleft()

    def _read_back_locked(self, p: Pending) -> bool:
        """Has our follower read `p` back (and so delivered it)? Our seqs come back in order."""
        return p.seq <= self._followed_own.get(followed_key(p.room), 0)

    def _write(self, batch: list[Pending]) -> list:
        """Write a batch in one round trip: each one's new id, or None if written before.

        Ids already delivered (an outage, alone) are kept if the stream allows.
        """
        pipe = self.redis.client.pipeline(transaction=False)
        after = self._acked_seq
        for p in batch:
            self._xadd(pipe, p, after)
            after = p.seq
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

    def _xadd(self, pipe, p: Pending, after: int) -> None:
        """Write one message once (cluster.lua_messages.WRITE), if the one before it (`after`) was.

        A retry after a lost reply is a no-op.
        """
        fields = p.fields(self.server_id)
        keys = [followed_key(p.room), history_key(p.room), written_key(self.server_id)]
        keys += [RESTORING_KEY, LAST_PRESENCE_KEY]
        if p.key:
            keys.append(sent_key(p.username, p.key))
        again = "0" if p.written is None else "2" if p.id else "1"  # see WRITE
        args = [self._max_messages, p.id or p.written or "*", p.seq, WRITTEN_TTL_S, int(KEY_TTL_S)]
        args += [self._acked_seq, after, RESTORING_MS, again]
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
        # Not a written one the follower read back (a lost reply): it was delivered.
        stranded = [p for p in self._pending if p.id is None and not self._read_back_locked(p)]
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
