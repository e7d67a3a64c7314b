"""A real ZooKeeper server for tests: Debian's zookeeperd jars, standalone, on a free loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

JARS = Path("/usr/share/java")
CLASSPATH = ["/etc/zookeeper/conf", str(JARS / "zookeeper.jar")]


def available() -> bool:
    return shutil.which("java") is not None and (JARS / "zookeeper.jar").is_file()


class ZooKeeper:
    """Start with `start()`, stop with `stop()`; `hosts` is HOST:PORT for clients."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.hosts = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> ZooKeeper:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "zoo.cfg"
        # tickTime 500 ms: sessions may be as short as 1 s, so a crashed server's entry goes quickly.
        cfg.write_text(f"tickTime=500\ndataDir={data}\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
                       "minSessionTimeout=1000\nmaxSessionTimeout=30000\nadmin.enableServer=false\n"
                       "4lw.commands.whitelist=ruok\n")
        log = (self.workdir / "zookeeper.log").open("ab")
        self.proc = subprocess.Popen(
            ["java", "-Xmx128m", "-Dzookeeper.admin.enableServer=false", "-cp", os.pathsep.join(CLASSPATH),
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited: {(self.workdir / 'zookeeper.log').read_text()[-2000:]}")
            if self._ruok():
                return self
            time.sleep(0.1)
        raise RuntimeError("ZooKeeper did not start")

    def _ruok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"ruok")
                return s.recv(4) == b"imok"
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
