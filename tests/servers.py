"""Running the real server for tests: in-process (ASGI, no socket) and as a process on a loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcess:
    """The app on its own event loop thread, with its lifespan run; requests go through httpx's ASGI transport."""

    def __init__(self, package: Path, **options: Any) -> None:
        from modelpack.serve.app import build_app
        from modelpack.serve.config import ServeConfig

        self.app = build_app(ServeConfig(package_dir=package, **options))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._run(self.app.startup())
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://modelpack")

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self._run(self.client.request(method, path, **kwargs))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def gather(self, requests: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
        """Send requests concurrently (one event loop, as a busy server sees them)."""
        async def all_of() -> list[httpx.Response]:
            return list(await asyncio.gather(*(self.client.request(m, p, **kw) for m, p, kw in requests)))

        return self._run(all_of())

    def close(self) -> None:
        self._run(self.client.aclose())
        self._run(self.app.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


class Process:
    """`modelpack serve` as a real process on a loopback port."""

    def __init__(self, package: Path, *args: str, env: dict[str, str] | None = None, scheme: str = "http",
                 wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "modelpack"), "serve", str(package), "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1, verify=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err
