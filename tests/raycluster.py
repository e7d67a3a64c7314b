"""A real Ray cluster for tests: a head node and worker nodes on this machine, each a child process of the test.

Every node is `ray start --block` in a session of its own (start_new_session), so it is stopped by its PID: SIGTERM
to every process in that session (Ray's actors move to process groups of their own, not to sessions of their own),
then SIGKILL to whatever is left. Never `ray stop`, which kills every Ray process on the machine. Every
port is a free one and the temp dir is private, so two clusters (or another user's) never meet.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
SERVE = BIN / "serve"


# Run argv[1:] so that Linux SIGKILLs it when the test process dies (PR_SET_PDEATHSIG survives exec): a test run
# killed outright leaves no node behind, as `ray start --block` takes its own processes down when it dies
# (checked: SIGKILL to the test's process, and both nodes' sessions were empty within about a minute).
DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


def available() -> bool:
    """Whether ray[serve] is installed beside this Python (the `ray` extra)."""
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        return False
    return RAY.is_file() and SERVE.is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session is `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


class Node:
    """One `ray start --block` process; its output is kept so a test can wait for a line and show it on failure."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", DIE_WITH_PARENT, str(RAY), "start", "--block", *args],
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.log[-4000:]}")
        return "Ray runtime started" in self.log

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to every process of the node's session (its actors too), SIGKILL to any left after `timeout`.

        Serve's controller and proxy actors and the GCS outlive a SIGTERM by more than 15 s; nothing of a test
        cluster needs a graceful end (its temp dir is removed next), so the wait is short.
        """
        sid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            for pid in session_pids(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            _wait_gone(sid, time.monotonic() + wait)
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


def _wait_gone(sid: int, deadline: float) -> None:
    """Until no process of session `sid` is left, or `deadline`: each exit is waited for on a pidfd, which the
    kernel makes readable when that process ends (they are not our children, so waitpid cannot)."""
    while (pids := session_pids(sid)) and time.monotonic() < deadline:
        fds = []
        for pid in pids:
            try:
                fds.append(os.pidfd_open(pid))
            except ProcessLookupError:
                pass
        try:
            for fd in fds:
                select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            for fd in fds:
                os.close(fd)


def process_named(sid: int, comm: str) -> int | None:
    """The PID of the process called `comm` (as /proc/PID/comm has it) in session `sid`, if there is one."""
    for pid in session_pids(sid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                return pid
        except OSError:
            continue
    return None


class Cluster:
    """A head and `workers` worker nodes, each with `cpus` CPUs; `dashboard` is the address `serve deploy` takes."""

    def __init__(self, env: dict[str, str] | None = None, cpus: int = 1) -> None:
        # A short private temp dir: Ray's Unix sockets live under it, and their paths must stay under 108 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp"))
        self._taken: set[int] = set()
        self.port = self.free_port()
        self.dashboard_port = self.free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.cpus = cpus
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        self.nodes: list[Node] = []

    def free_port(self) -> int:
        """A free port this cluster has not been given yet: a node takes six, and two draws may meet."""
        port = free_port()
        while port in self._taken:
            port = free_port()
        self._taken.add(port)
        return port

    def _common(self) -> list[str]:
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus), "--temp-dir", str(self.temp_dir),
                "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                "--node-manager-port", str(self.free_port()), "--object-manager-port", str(self.free_port()),
                "--metrics-export-port", str(self.free_port()), "--dashboard-agent-listen-port", str(self.free_port()),
                "--dashboard-agent-grpc-port", str(self.free_port()), "--runtime-env-agent-port", str(self.free_port())]

    def start(self, workers: int = 1, timeout: float = 120.0) -> Cluster:
        from conftest import wait_until

        try:
            self._start_node(["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1",
                              "--dashboard-port", str(self.dashboard_port),
                              "--ray-client-server-port", str(self.free_port())], "the Ray head node", timeout)
            for _ in range(workers):
                self.add_worker(timeout)
            wait_until(lambda: len(self.alive_nodes()) == 1 + workers, timeout, f"{1 + workers} alive Ray nodes")
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, timeout: float = 120.0) -> Node:
        """Start one more worker node (also: the replacement of one that was killed) and wait until it runs."""
        return self._start_node(["--address", f"127.0.0.1:{self.port}"], "a Ray worker node", timeout)

    def _start_node(self, args: list[str], what: str, timeout: float, attempts: int = 3) -> Node:
        """Start a node and wait until it runs. `ray start` gives a raylet a fixed 30 s to register with the GCS
        (ray/_private/node.py) and exits 1 after that; a machine shared with busy jobs has exceeded it, so a node
        that exits for that reason alone is started again, with fresh ports, up to `attempts` times."""
        from conftest import wait_until

        for attempt in range(attempts):
            node = Node([*args, *self._common()], self.env)
            self.nodes.append(node)
            try:
                wait_until(node.started, timeout, f"{what} to start")
                return node
            except RuntimeError:
                if "timed out during startup" not in node.log or attempt == attempts - 1:
                    raise
                node.stop()
                self.nodes.remove(node)
        raise AssertionError("unreachable")

    def get(self, path: str) -> Any:
        """GET a dashboard endpoint as JSON; None while the dashboard does not answer."""
        try:
            response = httpx.get(f"{self.dashboard}{path}", timeout=10)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def alive_nodes(self) -> list[dict[str, Any]]:
        listing = self.get("/api/v0/nodes?detail=1")
        if listing is None:
            return []
        return [n for n in listing["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def applications(self) -> dict[str, Any]:
        """Serve's view of its applications (`serve status` as JSON); {} before Serve runs."""
        status = self.get("/api/serve/applications/")
        return (status or {}).get("applications") or {}

    def serve(self, *args: str | Path, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        """Run the `serve` CLI against this cluster's dashboard."""
        return subprocess.run([str(SERVE), *map(str, args), "--address", self.dashboard], capture_output=True,
                              text=True, env=self.env, timeout=timeout)

    def stop(self) -> None:
        for node in reversed(self.nodes):  # workers first, then the head
            node.stop()
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
