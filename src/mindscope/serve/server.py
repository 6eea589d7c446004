"""Run the dashboard with uvicorn on a socket bound first, so the address is known before it serves.

`start` runs it in a thread (tests, benchmarks: port 0 picks a free port; stop it with
`Running.stop`). `serve_forever` runs it in the foreground until Ctrl-C.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one. IPv6 for an address with ':'."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(app: Starlette, host: str, port: int) -> str:
    """The URL to open, with the token."""
    shown = f"[{host}]" if ":" in host else host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else shown
    return f"http://{shown}:{port}/?token={app.state.dashboard.token}"


def _server(app: Starlette, sock: socket.socket) -> uvicorn.Server:
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    return uvicorn.Server(config)


@dataclass
class Running:
    """A dashboard served from a thread."""

    server: uvicorn.Server
    thread: threading.Thread
    port: int
    url: str  # with the token

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start(app: Starlette, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 20.0) -> Running:
    """Serve `app` from a background thread; return once it accepts connections."""
    sock = bind(host, port)
    server = _server(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="mindscope-serve")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the dashboard's server did not start; see the log above")
        time.sleep(0.02)
    port = sock.getsockname()[1]
    return Running(server, thread, port, address(app, host, port))


def serve_forever(app: Starlette, sock: socket.socket) -> None:
    """Serve `app` on `sock` in this thread until Ctrl-C."""
    _server(app, sock).run(sockets=[sock])
