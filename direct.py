"""Direct messages: the hub's methods for a line to one user, wherever they are.

Part of the Hub (hub.py), kept in this file so each reads in one sitting:
these methods take the hub's `_lock` and use its directory and queues.
A direct message goes to its recipient alone (in any room, or none, on
any server) and is echoed to its sender. It is never stored.

The echo means the recipient's server has taken it: here, at once; on
another server, once that server took it through Redis (`cluster.direct`,
which raises NotSent when it cannot say so, and the client sends it again).
A line sent again with its `key` reaches its recipient once: the first
echo is kept (`_directs`) and given again.
"""

import metrics
from events import direct_event, now_s
from member import Client
from sanitize import name_skeleton
from store import NotSent


class NotOnline(Exception):
    """A direct message's recipient is not online anywhere."""


class DirectMessages:
    """Mixed into the Hub: direct messages, and finding a user by any case."""

    def direct(
        self, client: Client, to: str, text: str, action: bool = False, key: str = ""
    ) -> None:
        """Send `text` to `to` alone, wherever they are, and echo it to the sender.

        Raises NotOnline if `to` is online nowhere we know of. Never stored.
        A line whose `key` was taken already only gets its echo again.
        """
        timestamp = now_s()
        with self._lock:
            first = self._directs.get(client.name, key) if key else None
            if first is not None:
                self._put_or_evict_locked(client, first)
                return
            found = self._online_as_locked(to)  # "Bob" finds bob, as he typed his name
            if found is None:
                raise NotOnline(to)
            to = found
            event = direct_event(client.name, to, text, timestamp, action, key)
            recipient = self._dir.clients.get(to)
        if recipient is not None and recipient is not client:
            # Here, unless another server took this line before (sent again after a lost echo).
            if not key or self.cluster.first_direct(client.name, key):
                with self._lock:
                    self._put_or_evict_locked(recipient, event)
        if recipient is None:  # on another server: through Redis, once it took it
            try:
                self.cluster.direct(client.name, to, text, timestamp, action, key)
            except NotSent:
                with self._lock:  # gone meanwhile (their server was reaped): not online
                    if self._online_as_locked(to) is None:
                        raise NotOnline(to) from None
                raise
        with self._lock:
            self._directs.remember(client.name, key, event)
            self._put_or_evict_locked(client, event)
        metrics.DIRECT.inc()

    def _online_as_locked(self, name: str, here_only: bool = False) -> str | None:
        """The online name that `name` reads as (sanitize.name_skeleton: any case,
        look-alikes), as its owner typed it; None if nobody. Here and elsewhere,
        or here only."""
        if name in self._dir.clients or not here_only and name in self._dir.remote:
            return name
        skeleton = name_skeleton(name)
        names = self._dir.clients if here_only else [*self._dir.clients, *self._dir.remote]
        return next((other for other in names if name_skeleton(other) == skeleton), None)
