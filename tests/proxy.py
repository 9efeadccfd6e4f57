"""A loopback TCP proxy that can turn into a black hole, for dead-peer tests.

A client that connects through `Proxy` reaches the server as usual. After
`black_hole()`, the proxy keeps both connections open but drops every byte
in both directions: to the server, the client looks like a peer whose
network vanished without a FIN or a RST, which only keepalive can detect
(SPEC §3.5).
"""

import socket
import threading

CHUNK_BYTES = 65536  # one recv at a time


class Proxy:
    """Forward 127.0.0.1:`port` to 127.0.0.1:`target_port`, one thread per direction."""

    def __init__(self, target_port: int):
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._lock = threading.Lock()  # guards _sockets and _threads
        self._sockets: list[socket.socket] = [self._listener]
        self._threads = [self._start(self._accept)]

    def black_hole(self) -> None:
        """From now on, drop everything silently; close nothing."""
        self._forwarding.clear()

    def restore(self) -> None:
        """Forward again (bytes dropped meanwhile stay lost)."""
        self._forwarding.set()

    def close(self) -> None:
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept/recv
            except OSError:
                pass
            sock.close()
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
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            with self._lock:
                self._sockets += [downstream, upstream]
                self._threads += [
                    self._start(self._pump, downstream, upstream),
                    self._start(self._pump, upstream, downstream),
                ]

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK_BYTES):
                if self._forwarding.is_set():
                    sink.sendall(data)
            if self._forwarding.is_set():
                sink.shutdown(socket.SHUT_WR)  # pass a clean close on
        except OSError:
            pass  # closed by close() or by the other side
