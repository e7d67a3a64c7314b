"""Running the real server for tests: in-process (ASGI, no socket) and as a process on a loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import httpx
from conftest import BIN, wait_until

from modelpack.testing import InProcessClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The in-process server is what plugin authors get too (modelpack.testing), so it lives there.
InProcess = InProcessClient


class Process:
    """`modelpack serve` as a real process on a loopback port."""

    def __init__(self, package: Path, *args: str, env: dict[str, str] | None = None, scheme: str = "http",
                 wait: bool = True) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN / "modelpack"), "serve", str(package), "--port", str(self.port), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        # The log, read as it comes, so a test can wait for a line the server writes (see `logged`).
        self._log: list[str] = []
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if wait:
            self.wait_ready()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._log.append(line)

    @property
    def log(self) -> str:
        return "".join(self._log)

    def logged(self, text: str) -> bool:
        """Whether the server's log holds `text` yet (a predicate for wait_until)."""
        return text in self.log

    def wait_ready(self, timeout: float = 90.0) -> None:
        wait_until(self.ready, timeout, f"the server on port {self.port} to become ready")

    def ready(self) -> bool:
        """True once the readiness probe answers 200; an exited server is a failure, not a wait."""
        if self.proc.poll() is not None:
            self._reader.join(timeout=10)
            raise AssertionError(f"server exited {self.proc.returncode}: {self.log}")
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=1, verify=False).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, headers: dict[str, str] | None = None) -> float:
        """The value of a gauge or counter on /metrics (summed over its label sets), 0 when absent."""
        import re

        response = httpx.get(f"{self.url}/metrics", timeout=5, verify=False, headers=headers)
        assert response.status_code == 200, response.text
        text = response.text
        return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=30)
        return self.proc.returncode, self.log
