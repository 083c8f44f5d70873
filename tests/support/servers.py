"""A real uvicorn server on a free localhost port, in a thread, for the length of a block."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

START_TIMEOUT_S = 10.0


@contextmanager
def serve_in_thread(app: Any, *, lifespan: str = "off") -> Iterator[str]:
    """Yield the base URL of ``app`` served by uvicorn; stop it on exit.

    With ``lifespan="on"`` the app's start-up runs first and a failing
    start-up raises here instead of serving.
    """
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan=lifespan,
        ws="none",  # no websockets: nothing to import, nothing to warn about
        http="h11",
    )
    server = uvicorn.Server(config)
    # Bound here, not by uvicorn: port 0 gets a free port with no window for another
    # process to take it between choosing and binding.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT_S)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("uvicorn did not stop")
