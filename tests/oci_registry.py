"""A real OCI registry for tests: Debian's docker-registry (the CNCF distribution registry) on a free loopback
port, with its own config file and storage in a temporary directory."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from conftest import wait_until
from servers import free_port

PROGRAM = "docker-registry"


def available() -> bool:
    return shutil.which(PROGRAM) is not None


class Registry:
    """`start()` then `stop()`; `address` is HOST:PORT, `storage` the blob store on disk."""

    def __init__(self, workdir: Path, htpasswd: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.storage = workdir / "storage"
        self.htpasswd = htpasswd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Registry:
        self.storage.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.htpasswd:
            import bcrypt

            lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}"
                     for user, pw in self.htpasswd.items()]
            (self.workdir / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: modelpack-tests\n    path: {self.workdir / 'htpasswd'}\n"
        config = self.workdir / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: "
                          f"{self.storage}\n  delete:\n    enabled: true\nhttp:\n  addr: {self.address}\n{auth}")
        log = (self.workdir / "registry.log").open("ab")
        self.proc = subprocess.Popen([PROGRAM, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._answers, 30, "the registry to answer /v2/")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {(self.workdir / 'registry.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2).close()
            return True
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # up, and asking for credentials
        except OSError:
            return False

    def blob_file(self, digest: str) -> Path:
        hexdigest = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
