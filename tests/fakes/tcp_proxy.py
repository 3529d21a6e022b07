"""A loopback TCP proxy that can cut the line: a database outage without touching the server.

with TcpProxy("127.0.0.1", 5432) as proxy:      # clients connect to proxy.port
    proxy.cut()       # open connections are reset, new ones refused
    proxy.restore()   # accepting and forwarding again
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`; `cut()` / `restore()` simulate an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.refused = 0
        self.upstream_ports: list[int] = []  # local ports of the proxy's server connections

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def __enter__(self) -> TcpProxy:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._reset_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def cut(self) -> None:
        """The database is gone: reset every open connection and refuse new ones."""
        self._up.clear()
        self._reset_all()

    def restore(self) -> None:
        self._up.set()

    def _reset_all(self) -> None:
        with self._lock:
            pairs = list(self._pairs)
            self._pairs.clear()
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            self.accepted += 1
            self.upstream_ports.append(upstream.getsockname()[1])
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            thread = threading.Thread(target=self._pump, args=(pair,), daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in pair:
                sock.settimeout(None)  # select says when to read; sendall may block
                selector.register(sock, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    with self._lock:
                        if pair not in self._pairs:
                            return
                    for key, _ in selector.select(timeout=0.1):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        peer[key.fileobj].sendall(data)  # type: ignore[index]
            except OSError:
                return
            finally:
                with self._lock:
                    self._pairs.discard(pair)
                for sock in pair:
                    _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close with RST, as a dead network path or a crashed host looks to both ends."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
