"""One order across streams: a leave after the leaver's last message, a join before the first.

Messages (cluster/store.py) and joins, rooms and leaves (cluster/events.py)
travel on different streams, each read by its own follower thread. Left at
that, a server whose message follower lags shows "bob left" before bob's
"bye", and one whose events follower lags shows "[bob] hi" before "bob
joined". Redis runs one script at a time, so each write can say what the
other streams held at that instant (cluster/lua.py, cluster/lua_messages.py):

- a join, rooms or leave event carries `after`: the last ids of the lobby's
  stream and of the bus;
- a message carries `events`: the id of the last join, rooms or leave event
  (typing and direct messages are not waited for).

A follower hands such an entry on only once the other follower has handed
on the ids it names (`Progress.wait`), at most ORDER_WAIT_S: a follower held
up elsewhere costs the order, never the delivery, and once a wait gave up,
later waits for no more than it do not wait again. A follower that stops
(at shutdown) is waited for no more (`stop`).

No deadlock: an entry names only entries written before it, and a follower
marks what it handed on before it waits (`passed`). The message follower
reads two streams: it hands each on up to its first entry that must wait,
and waits only when all are stuck (cluster/reading.py). So the entries a
waiting follower holds are never the ones the other waits for.
"""

import logging
import threading

from store import id_key

log = logging.getLogger(__name__)

ORDER_WAIT_S = 2.0  # the longest a follower waits for the other before it goes on
END = (2**64, 0)  # past every id: what a stopped follower is taken to have handed on


class Progress:
    """How far each followed stream's entries were handed on; both followers share one.

    `_cond` guards `_at` and `_given_up`; each stream's follower alone moves
    its own stream's `_at`, and any follower may wait on another's.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._at: dict[str, tuple[int, ...]] = {}  # stream -> highest id handed on
        self._given_up: dict[str, tuple[int, ...]] = {}  # stream -> highest id waited for in vain

    def passed(self, stream: str, entry_id: str) -> None:
        """The follower of `stream` has handed on everything up to `entry_id`."""
        with self._cond:
            if id_key(entry_id) > self._at.get(stream, (0, 0)):
                self._at[stream] = id_key(entry_id)
                self._cond.notify_all()

    def stop(self, stream: str) -> None:
        """`stream`'s follower stops: nobody waits for it from now on."""
        with self._cond:
            self._given_up[stream] = END
            self._cond.notify_all()

    def handed_on(self, stream: str) -> tuple[int, ...]:
        """The id (as `id_key`) up to which `stream` was handed on."""
        with self._cond:
            return self._at.get(stream, (0, 0))

    def reached(self, stream: str, entry_id: str) -> bool:
        with self._cond:
            return self._reached_locked(stream, id_key(entry_id))

    def wait(self, stream: str, entry_id: str, timeout: float = ORDER_WAIT_S) -> None:
        """Return once `stream`'s follower has handed on `entry_id`, or after `timeout`."""
        target = id_key(entry_id)
        with self._cond:
            if self._cond.wait_for(lambda: self._reached_locked(stream, target), timeout):
                return
            self._given_up[stream] = target
        log.warning("%s is read %.0f s behind: showing its entries out of order", stream, timeout)

    def _reached_locked(self, stream: str, target: tuple[int, ...]) -> bool:
        return target <= max(self._at.get(stream, (0, 0)), self._given_up.get(stream, (0, 0)))


def after_ids(raw: str | None) -> list[str]:
    """The ids an event's `after` names (its message streams' last ids), checked."""
    parts = (raw or "").split()
    try:
        for part in parts:
            id_key(part)
    except ValueError:
        return []  # not one of ours: nothing to wait for
    return parts
