"""A real `redis-server` for the tests, on 127.0.0.1 with a free port and no persistence.

Missing binary: the tests that need it skip, unless `PIPELINE_REQUIRE_REDIS=1` (CI sets it),
where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


FALLBACKS: tuple[str, ...] = ("/usr/bin/redis-server",)
"""Where Debian puts the binary, for a PATH without /usr/bin."""


def redis_server_binary() -> str:
    """The `redis-server` path, or skip (fail when `PIPELINE_REQUIRE_REDIS=1`)."""
    found = shutil.which("redis-server") or next(
        (path for path in FALLBACKS if os.path.exists(path)), None
    )
    if found is None:
        reason = (
            "redis-server is not installed (apt-get install redis-server, brew install redis); "
            "the Redis store tests need a real server"
        )
        if os.environ.get("PIPELINE_REQUIRE_REDIS") == "1":
            pytest.fail(f"PIPELINE_REQUIRE_REDIS=1 but {reason}")
        pytest.skip(reason)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One `redis-server` process; `stop()` and `start()` again keep the same port."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir
        )
        deadline = time.monotonic() + 15
        while not answers_ping(self.port):  # polling a server's start-up, not timing a test
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not answer PING within 15 s")
            threading.Event().wait(0.01)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
