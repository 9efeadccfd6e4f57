"""A loopback TCP relay that a test can cut or turn into a black hole.

A client that connects through `Proxy` reaches its target as usual. The
test then breaks the path in one of two ways:

- `black_hole()`: every connection stays open but every byte is dropped,
  in both directions, on old and new connections alike. To the peers this
  is a network that vanished without a FIN or a RST, which only a timeout
  or keepalive can detect (a partition).
- `cut()`: every connection is reset (RST) at once, and new ones are
  accepted and reset, until `restore()`. To the peers this is a refusal
  they notice at once.

`slow(rtt_s)`: every byte is held `rtt_s / 2` in each direction, in order
(a slow link, not a dead one); `slow(0)` ends it.

`restore()` forwards again. Connections that were black-holed are reset
then: a TCP stream with bytes missing from its middle is corrupt, and a
peer must reconnect rather than read garbage.

    peer --> [listener] --> Link(downstream <-> upstream) --> target
                              one pump thread per direction
"""

import queue
import socket
import struct
import threading
import time

CHUNK_BYTES = 65536  # one recv at a time
FORWARD, BLACK_HOLE, CUT = "forward", "black hole", "cut"
_RST_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def _reset(sock: socket.socket) -> None:
    """Close `sock` with a RST, waking a thread blocked in its recv."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_LINGER)
        sock.shutdown(socket.SHUT_RD)  # wakes our pump; sends nothing to the peer
    except OSError:
        pass
    sock.close()


class Link:
    """One relayed connection: the accepted socket and the one to the target."""

    def __init__(self, downstream: socket.socket, upstream: socket.socket | None, mode: str):
        self.downstream = downstream
        self.upstream = upstream
        self.black_holed = mode == BLACK_HOLE  # set once: the stream is corrupt from then on
        self.closed = False
        self.pumps_left = 2  # the second pump to finish closes both sockets

    def reset(self) -> None:
        self.closed = True
        for sock in (self.downstream, self.upstream):
            if sock is not None:
                _reset(sock)


class Proxy:
    """Relay 127.0.0.1:`port` to 127.0.0.1:`target_port`; see the module docstring."""

    def __init__(self, target_port: int):
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._lock = threading.Lock()  # guards _mode, _links and _threads
        self._mode = FORWARD
        self._delay_s = 0.0  # one way, for every byte from now on (a plain float: no lock)
        self._links: list[Link] = []
        self._threads = [self._start(self._accept)]

    @property
    def mode(self) -> str:
        return self._mode

    def black_hole(self) -> None:
        """From now on, drop everything silently; close nothing."""
        with self._lock:
            self._mode = BLACK_HOLE
            for link in self._links:
                link.black_holed = True

    def slow(self, rtt_s: float) -> None:
        """From now on every byte takes `rtt_s / 2` longer each way (0: as fast as it can)."""
        self._delay_s = rtt_s / 2

    def cut(self) -> None:
        """Reset every connection now, and every new one until `restore()`."""
        with self._lock:
            self._mode = CUT
            links, self._links = self._links, []
        for link in links:
            link.reset()

    def restore(self) -> None:
        """Forward again; reset the connections that lost bytes while black-holed."""
        with self._lock:
            self._mode = FORWARD
            corrupt = [link for link in self._links if link.black_holed]
            self._links = [link for link in self._links if not link.black_holed]
        for link in corrupt:
            link.reset()

    def close(self) -> None:
        with self._lock:
            self._mode = CUT
            links, threads = self._links, list(self._threads)
            self._links = []
        _reset(self._listener)
        for link in links:
            link.reset()
        for thread in threads:
            thread.join(timeout=5)

    def _start(self, target, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name="proxy", daemon=True)
        thread.start()
        return thread

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._mode == CUT:
                _reset(downstream)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(downstream)  # the target is down: refuse, as it would
                continue
            self._open(Link(downstream, upstream, self._mode))

    def _open(self, link: Link) -> None:
        with self._lock:
            if self._mode == CUT:  # cut while we connected
                link.reset()
                return
            link.black_holed = link.black_holed or self._mode == BLACK_HOLE
            self._links.append(link)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads += [
                self._start(self._pump, link, link.downstream, link.upstream),
                self._start(self._pump, link, link.upstream, link.downstream),
            ]

    def _pump(self, link: Link, source: socket.socket, sink: socket.socket) -> None:
        outbox: queue.Queue = queue.Queue()  # (when to send, bytes); None: a clean close
        sender = self._start(self._send_later, link, sink, outbox)
        try:
            while data := source.recv(CHUNK_BYTES):
                if not link.black_holed:
                    outbox.put((time.monotonic() + self._delay_s, data))
            outbox.put(None)
        except OSError:
            outbox.put(None)
            if not link.closed:
                link.reset()  # the peer reset: so do we, to the other side
        sender.join()
        self._finished(link)

    def _send_later(self, link: Link, sink: socket.socket, outbox: queue.Queue) -> None:
        """Send what the pump read, each piece when it is due (at once, unless slowed)."""
        try:
            while (item := outbox.get()) is not None:
                due, data = item
                if (wait_s := due - time.monotonic()) > 0:
                    time.sleep(wait_s)
                if not link.black_holed:
                    sink.sendall(data)
            if not link.black_holed and not link.closed:
                sink.shutdown(socket.SHUT_WR)  # pass a clean close on
        except OSError:
            if not link.closed:
                link.reset()

    def _finished(self, link: Link) -> None:
        """A pump ended; once both have, the link is over."""
        with self._lock:
            link.pumps_left -= 1
            if link.pumps_left or link.black_holed:
                return  # a black-holed link stays open until restore()
            if link in self._links:
                self._links.remove(link)
        if not link.closed:
            link.closed = True
            link.downstream.close()
            link.upstream.close()
