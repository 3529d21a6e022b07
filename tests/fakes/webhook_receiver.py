"""A loopback HTTP server that records the JSON bodies POSTed to it (alert webhooks)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(ThreadingHTTPServer):
    """`received`: (path, body) of every POST; `answer`: the JSON it replies with."""

    received: list[tuple[str, dict]]
    answer: dict


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.path, json.loads(body)))
        data = json.dumps(self.server.answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def running_receiver() -> Iterator[Receiver]:
    """A receiver on a free loopback port, answering DingTalk/WeCom's `errcode: 0`."""
    server = Receiver(("127.0.0.1", 0), Handler)
    server.received, server.answer = [], {"errcode": 0, "errmsg": "ok"}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
