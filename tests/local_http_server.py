"""A tiny HTTP server on 127.0.0.1 for download tests: serves in-memory files, honours Range, and
can misbehave on purpose (ignore Range, drop the connection midway).

    with LocalServer({"/a.bin": data}) as server:
        download(server.url("/a.bin"), dest)
"""
from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    """Serves `files` (path -> bytes). `ignore_range` paths answer 200 with the whole body;
    `drop_after[path] = n` sends only n body bytes of the next response, then closes the connection."""

    def __init__(self, files: dict[str, bytes], ignore_range: set[str] | None = None,
                 drop_after: dict[str, int] | None = None):
        self.files = dict(files)
        self.ignore_range = set(ignore_range or ())
        self.drop_after = dict(drop_after or {})
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) per GET
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)  # quick shutdown

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def closed_port_url(path: str = "/missing") -> str:
    """A URL on a local port where nothing listens, so connecting fails at once (like being offline)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def _handler_for(server: LocalServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            return None

        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            server.requests.append((self.path, range_header))
            body = server.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and self.path not in server.ignore_range:
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            cut = server.drop_after.pop(self.path, None)
            if cut is not None:
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(payload)

    return Handler
