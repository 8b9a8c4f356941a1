"""Real HTTP servers on loopback, in threads: fake buyers, fake peers, and a canary."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class ThreadedServer:
    def __init__(self, app: Any, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


CANARY_ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 22\r\n"
    b'connection: close\r\n\r\n{"status": "accepted"}'
)


class Canary:
    """A TCP listener that must never be reached: it counts every connection accepted on
    any of its sockets (before any HTTP is read) and answers like a buyer accepting the
    lead, so a leak shows as a sale as well as in ``hits``.

    ``listen`` takes ``(host, port)`` pairs; port 0 picks one. IPv6 sockets are
    IPv6-only, so ``("::", p)`` and ``("0.0.0.0", p)`` can share a port.
    """

    def __init__(self) -> None:
        self.hits: list[tuple[tuple[str, int], str]] = []  # (listener, first request line)
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def listen(self, host: str, port: int = 0) -> int:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.settimeout(0.1)
        bound: int = sock.getsockname()[1]
        self._sockets.append(sock)
        thread = threading.Thread(target=self._serve, args=(sock, (host, bound)), daemon=True)
        self._threads.append(thread)
        thread.start()
        return bound

    def _serve(self, sock: socket.socket, listener: tuple[str, int]) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                request = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in request and len(request) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                with self._lock:
                    self.hits.append(
                        (listener, request.split(b"\r\n", 1)[0].decode(errors="replace"))
                    )
                with contextlib.suppress(OSError):
                    conn.sendall(CANARY_ANSWER)

    def reset(self) -> None:
        with self._lock:
            self.hits.clear()

    def __enter__(self) -> Canary:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
