"""Shared fixtures: a scripted fake server on 127.0.0.1, and the agentsec
binary for the integration tests (skipped, saying why, without it)."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from agentsec_client import RetryPolicy

#: Retries as the client makes them, but without the waiting.
FAST_RETRY = RetryPolicy(base_delay=0.001, max_delay=0.002)


class Recorded:
    """A request the fake server received."""

    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeServer:
    """An HTTP server that answers from a script: each request takes the
    next (status, body) of the script (the last one repeats), and is
    recorded."""

    def __init__(self) -> None:
        self.script: List[Tuple[int, Any]] = []
        self.requests: List[Recorded] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 1 << 16  # headers and body in one write: no Nagle delays

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with fake._lock:
                    fake.requests.append(
                        Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    status, answer = fake.script.pop(0) if len(fake.script) > 1 else fake.script[0]
                extra_headers: Dict[str, str] = {}
                if isinstance(answer, (bytes, str)):
                    data = answer.encode() if isinstance(answer, str) else answer
                    ctype = "text/plain"
                else:
                    # A dict's "_headers", if any, are sent as headers.
                    answer = dict(answer)
                    extra_headers = answer.pop("_headers", {})
                    data = json.dumps(answer).encode()
                    ctype = "application/problem+json" if status >= 400 else "application/json"
                self.send_response(status)
                for k, v in extra_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.wfile.flush()

            do_GET = do_POST = do_DELETE = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def answer(self, *script: Tuple[int, Any]) -> None:
        """Sets the answers of the next requests."""
        self.script = list(script)
        self.requests = []

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def problem(code: str, status: int, **extra: Any) -> Tuple[int, Dict[str, Any]]:
    """A problem document, as the server writes one."""
    doc: Dict[str, Any] = {
        "type": "tag:agentsec.dev,2026:problem:" + code,
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
    }
    doc.update(extra)
    return status, doc


def agentsec_bin() -> Optional[str]:
    return os.environ.get("AGENTSEC_BIN") or None


@pytest.fixture
def binary() -> str:
    """The agentsec binary, from AGENTSEC_BIN; the test is skipped without it."""
    path = agentsec_bin()
    if not path:
        pytest.skip(
            "AGENTSEC_BIN is not set: integration tests need the agentsec binary "
            "(cd /path/to/agentsec && go build -o /tmp/agentsec ./cmd/agentsec; export AGENTSEC_BIN=/tmp/agentsec)"
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"AGENTSEC_BIN={path!r} is not an executable file")
    return path
