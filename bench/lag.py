"""A replica far away: a TCP relay that delays what the master sends it.

bench/failover.py puts it between the Redis master and its replica
(`--replica-delay-ms`) to measure the loss window when replication lags, as
it does across a network. What the master sent is handed to the replica
`delay_ms` later; when the master's side ends (it was killed), whatever
the relay still holds is dropped, as a host that dies takes its unsent
bytes with it. The replica's side (its acknowledgements) passes at once.
"""

import collections
import socket
import threading
import time

CHUNK_BYTES = 65536


class DelayedLink:
    """Listens on `port`; each connection is relayed to `target_port`, delayed one way."""

    def __init__(self, target_port: int, delay_ms: float):
        self._target = ("127.0.0.1", target_port)
        self._delay_s = delay_ms / 1000
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="lag-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()  # the replica
            except OSError:
                return  # closed
            try:
                far = socket.create_connection(self._target)  # the master
            except OSError:  # it is dead: so is this link, as the replica will see
                near.close()
                continue
            held: collections.deque = collections.deque()  # (due time, bytes), oldest first
            ready = threading.Condition()
            threading.Thread(target=_pump, args=(near, far), daemon=True).start()
            threading.Thread(target=self._hold, args=(far, held, ready), daemon=True).start()
            threading.Thread(target=_release, args=(near, held, ready), daemon=True).start()

    def _hold(self, far, held, ready) -> None:
        """Master -> relay: keep each chunk until it is due; the master gone: drop them all."""
        while True:
            try:
                data = far.recv(CHUNK_BYTES)
            except OSError:
                data = b""
            with ready:
                if not data:
                    held.clear()
                    held.append((0.0, b""))  # the end, to _release
                else:
                    held.append((time.monotonic() + self._delay_s, data))
                ready.notify()
            if not data:
                return

    def close(self) -> None:
        self._listener.close()


def _release(near, held, ready) -> None:
    """Relay -> replica: each chunk when it is due, in order; stop at the end mark."""
    while True:
        with ready:
            while not held:
                ready.wait()
            due, data = held[0]
            wait_s = due - time.monotonic()
            if wait_s > 0 and data:
                ready.wait(wait_s)
                continue
            held.popleft()
        if not data:
            near.close()
            return
        try:
            near.sendall(data)
        except OSError:
            return


def _pump(source, sink) -> None:
    """Replica -> master, at once, until either side ends."""
    while True:
        try:
            data = source.recv(CHUNK_BYTES)
            if not data:
                break
            sink.sendall(data)
        except OSError:
            break
    for s in (source, sink):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
