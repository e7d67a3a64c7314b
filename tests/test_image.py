"""The `docker` target's image, really built and run without a Docker daemon.

`deploy --target docker --build --builder buildah` builds the generated context, unchanged, on a
python:3.11-slim made here from Debian packages (mmdebstrap), so nothing comes from Docker Hub. The test then
runs the image's own CMD (buildah's chroot isolation: this sandbox refuses `podman run`), infers over HTTP and
gRPC against onnxruntime, checks the user, the package's permissions and that no wheel stayed in the image,
and pulls the pushed image back by digest. Each test has its own containers/storage (CONTAINERS_STORAGE_CONF,
vfs driver), removed at the end; the machine's default storage is never touched.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import oci_registry
import pytest
from conftest import EXAMPLE, run_cli, wait_until
from servers import free_port

TOOLS = ("buildah", "mmdebstrap")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
if MISSING or not oci_registry.available():
    if os.environ.get("MODELPACK_CI") == "1":  # .ci/run installs them: never skip there
        raise RuntimeError(f"{', '.join(MISSING) or 'docker-registry'} missing, but .ci/run should have installed it")
    pytest.skip(f"needs {', '.join(MISSING) or 'docker-registry'} (Debian packages)", allow_module_level=True)

pytestmark = pytest.mark.timeout(1200)
BASE = "docker.io/library/python:3.11-slim"  # what the generated Dockerfile's FROM resolves to
PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"  # the official image's, with the venv first
KEY = "k3y-image"


@pytest.fixture(scope="session")
def base_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian 12 (Python 3.11, as the context's cp311 wheels need) with a venv at /usr/local: pip, and
    `python`/`modelpack` on the official image's PATH. Made once per session (about 20 s)."""
    out = tmp_path_factory.mktemp("base") / "rootfs.tar"
    proc = subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                           "--customize-hook=chroot \"$1\" python3 -m venv /usr/local", "bookworm", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


class Storage:
    """A private containers/storage: its own storage.conf, vfs driver, root and run root under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        self.conf = root / "storage.conf"
        self.conf.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "graph"}"\n'
                             f'runroot = "{root / "run"}"\n')
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(self.conf)}

    def buildah(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run(["buildah", *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr[-3000:]}"
        return proc.stdout.strip()

    def inspect(self, image: str) -> dict:
        return json.loads(self.buildah("inspect", "--type", "image", image))

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", "--all"], capture_output=True, env=self.env, timeout=120)
        subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=self.env, timeout=300)
        if os.geteuid() == 0:
            shutil.rmtree(self.root)
        else:  # rootless vfs layers hold files of mapped users: remove them inside buildah's user namespace
            subprocess.run(["buildah", "unshare", "rm", "-rf", str(self.root)], check=True, timeout=300)


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Storage]:
    store = Storage(tmp_path / "storage")
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(store.conf))  # for the CLI, in this process
    yield store
    store.remove()


def _import_base(storage: Storage, rootfs: Path) -> None:
    """The rootfs as python:3.11-slim in this storage: what `FROM python:3.11-slim` finds, with no pull."""
    ctr = storage.buildah("from", "scratch")
    storage.buildah("add", ctr, str(rootfs), "/")
    storage.buildah("config", "--env", f"PATH={PATH}", ctr)
    storage.buildah("commit", "--quiet", "--rm", ctr, BASE)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _wheels(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*.whl") if not p.is_symlink()}


@pytest.mark.slow
def test_image_builds_serves_and_round_trips(digits_package: Path, base_rootfs: Path, storage: Storage,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort
    import tritonclient.grpc as triton_grpc
    import tritonclient.http as triton_http

    registry = oci_registry.Registry(tmp_path / "registry", htpasswd={"builder": "s3cret"}).start()
    server: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    try:
        _import_base(storage, base_rootfs)
        # push's own login: the environment's, scoped to this registry
        monkeypatch.setenv("MODELPACK_REGISTRY_USERNAME", "builder")
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", "s3cret")
        monkeypatch.setenv("MODELPACK_REGISTRY_HOST", registry.address)
        ctx = tmp_path / "ctx"
        started = time.monotonic()
        result = run_cli("deploy", digits_package, "--target", "docker", "-o", ctx, "--image", "digits-test:1",
                         "--builder", "buildah", "--push", f"oci://{registry.address}/models/digits", "--json")
        build_s = time.monotonic() - started
        assert result.exit_code == 0, result.output
        built = json.loads(result.stdout)["image"]
        assert built["builder"] == "buildah" and built["name"] == "digits-test:1"
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", built["digest"]) and built["size"] > 0

        # The image's config: what the Dockerfile said, HEALTHCHECK included (the docker format keeps it).
        image = storage.inspect("digits-test:1")
        assert f"sha256:{image['FromImageID']}" == built["id"] and image["FromImageDigest"] == built["digest"]
        config = image["Docker"]["config"]
        assert config["User"] == "10001:10001" and set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp"}
        assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
        base = storage.inspect(BASE)
        base_size = sum(layer["size"] for layer in json.loads(base["Manifest"])["layers"])

        # What is in the image: no wheel from the context (its RUN bind-mounted them), only the base's own.
        ctr = storage.buildah("from", "--pull-never", "digits-test:1")
        base_ctr = storage.buildah("from", "--pull-never", BASE)
        root, base_root = Path(storage.buildah("mount", ctr)), Path(storage.buildah("mount", base_ctr))
        assert _wheels(root) == _wheels(base_root), "the image holds wheels its base does not"
        assert not (root / "wheels").exists() or not any((root / "wheels").iterdir())
        model_dir = root / "models" / "model"
        assert (model_dir / "model.onnx").read_bytes() == (digits_package / "model.onnx").read_bytes()
        storage.buildah("umount", ctr)
        storage.buildah("umount", base_ctr)

        # The image's user cannot change the package: every write is refused by the kernel, as that user.
        probe = ("import json, os, pathlib\n"
                 "refused = []\n"
                 "for p in [pathlib.Path('/models/model'), *pathlib.Path('/models/model').rglob('*')]:\n"
                 "    try:\n"
                 "        (open(p / 'x', 'x') if p.is_dir() else open(p, 'a')).close()\n"
                 "    except PermissionError:\n"
                 "        refused.append(str(p))\n"
                 "print(json.dumps([os.getuid(), refused]))")
        uid, refused = json.loads(storage.buildah("run", "--isolation", "chroot", "--user", config["User"], ctr,
                                                  "--", "python", "-c", probe))
        files = {str(p.relative_to(root)) for p in [model_dir, *model_dir.rglob("*")]}
        assert uid == 10001 and {p.lstrip("/") for p in refused} == files

        # Run the image's CMD, as the image's user, on free ports (host network: the image's own are taken).
        cmd = list(config["Cmd"])
        port, grpc_port = free_port(), free_port()
        cmd[cmd.index("--port") + 1], cmd[cmd.index("--grpc-port") + 1] = str(port), str(grpc_port)
        log_path = tmp_path / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(["buildah", "run", "--isolation", "chroot", "--network", "host", "--user",
                                       config["User"], "-e", f"MODELPACK_API_KEY={KEY}", ctr, "--", *cmd],
                                      stdout=log, stderr=subprocess.STDOUT, env=storage.env)
        auth = {"Authorization": f"Bearer {KEY}"}

        def ready() -> bool:
            assert server is not None and server.poll() is None, log_path.read_text()[-3000:]
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        started = time.monotonic()
        wait_until(ready, 120, "the image's CMD to become ready")
        ready_s = time.monotonic() - started
        match = re.search(r"Started server process \[(\d+)\]", log_path.read_text())
        assert match, log_path.read_text()[-2000:]
        pid = int(match.group(1))  # chroot isolation shares the host's PID namespace
        status = Path(f"/proc/{pid}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M)
        assert uids and set(uids.group(1).split()) == {"10001"}, status
        seen = Path(f"/proc/{pid}/root/models/model/model.onnx")  # the filesystem the server sees: the image's
        assert seen.read_bytes() == (digits_package / "model.onnx").read_bytes()
        assert not Path(f"/proc/{pid}/root/wheels/").exists() or not any(Path(f"/proc/{pid}/root/wheels").iterdir())
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/model").status_code == 401  # the key from run time

        x = np.load(EXAMPLE / "eval.npz")["x"][:8]
        session = ort.InferenceSession(str(digits_package / "model.onnx"), providers=["CPUExecutionProvider"])
        (want,) = session.run(["probs"], {session.get_inputs()[0].name: x})
        http = triton_http.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton_http.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = http.infer("model", [tensor], headers=auth).as_numpy("probs")
        np.testing.assert_allclose(got, want, atol=1e-6)
        grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        tensor = triton_grpc.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        got = grpc.infer("model", [tensor], headers={"authorization": f"Bearer {KEY}"}).as_numpy("probs")
        np.testing.assert_allclose(got, want, atol=1e-6)

        os.kill(pid, signal.SIGTERM)
        server.wait(timeout=60)
        pid = None
        assert "Finished server process" in log_path.read_text()

        # The push: the registry holds the digest the CLI printed, and a fresh storage pulls it back by digest.
        pushed = built["pushed"]
        assert pushed["reference"] == f"{registry.address}/models/digits:1"
        login = base64.b64encode(b"builder:s3cret").decode()
        request = urllib.request.Request(f"http://{registry.address}/v2/models/digits/manifests/1", method="GET",
                                         headers={"Authorization": f"Basic {login}", "Accept":
                                                  "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.headers["Docker-Content-Digest"] == pushed["digest"]
            compressed = sum(layer["size"] for layer in json.loads(answer.read())["layers"])
        other = Storage(tmp_path / "pulled")
        try:
            other.buildah("pull", "--quiet", "--tls-verify=false", "--creds", "builder:s3cret",
                          f"{registry.address}/models/digits@{pushed['digest']}")
            (pulled,) = json.loads(other.buildah("images", "--json"))
            assert pulled["digest"] == pushed["digest"]
            assert f"sha256:{other.inspect(pulled['names'][0])['FromImageID']}" == built['id']  # the same config
        finally:
            other.remove()

        wheels_size = _tree_size(ctx / "wheels")
        package_size = _tree_size(digits_package)
        print(f"\nimage {built['size']:,} B (base {base_size:,} B + {built['size'] - base_size:,} B added), pushed "
              f"compressed {compressed:,} B; context wheels {wheels_size:,} B, package {package_size:,} B; "
              f"build+push {build_s:.0f} s, ready in {ready_s:.1f} s")
        added = built["size"] - base_size
        assert added > package_size + wheels_size // 2  # the installed wheels and the package, unpacked
        assert compressed < built["size"]
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        if server is not None:  # buildah run ends with its command, removing its run directory
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=60)
        registry.stop()


@pytest.mark.slow
def test_podman_builds_the_same_context(digits_package: Path, base_rootfs: Path, storage: Storage,
                                         tmp_path: Path) -> None:
    """`--builder podman`: the same Dockerfile, daemonless; size, ID and digest read from podman's own inspect."""
    if shutil.which("podman") is None:
        if os.environ.get("MODELPACK_CI") == "1":
            raise RuntimeError("podman is missing, but .ci/run should have installed it")
        pytest.skip("needs podman (Debian package)")
    _import_base(storage, base_rootfs)
    result = run_cli("deploy", digits_package, "--target", "docker", "-o", tmp_path / "ctx", "--image", "digits-pd:2",
                     "--builder", "podman", "--json")
    assert result.exit_code == 0, result.output
    built = json.loads(result.stdout)["image"]
    assert built["builder"] == "podman" and built["pushed"] is None
    image = storage.inspect("digits-pd:2")  # buildah reads what podman wrote: one containers/storage
    assert f"sha256:{image['FromImageID']}" == built["id"] and image["FromImageDigest"] == built["digest"]
    assert "/v2/health/ready" in " ".join(image["Docker"]["config"]["Healthcheck"]["Test"])
    base_size = sum(layer["size"] for layer in json.loads(storage.inspect(BASE)["Manifest"])["layers"])
    assert built["size"] > base_size + _tree_size(digits_package)


def test_push_checks_the_login_as_push_does_before_the_builder_gets_it(storage: Storage, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`--push` first asks the registry for push access with push's own client: a wrong or unscoped login fails
    with push's message, and only then is the builder handed the login (here it finds no such image)."""
    from modelpack.deploy.image import Image, push
    from modelpack.errors import ModelpackError, StageFailed, UsageError

    registry = oci_registry.Registry(tmp_path / "registry", htpasswd={"builder": "s3cret"}).start()
    never_built = Image("buildah", "never-built:1", "sha256:" + "0" * 64, None, 0)
    target = f"oci://{registry.address}/models/digits"
    try:
        monkeypatch.setenv("MODELPACK_REGISTRY_USERNAME", "builder")
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", "s3cret")
        with pytest.raises(UsageError, match="MODELPACK_REGISTRY_HOST"):  # a login not scoped to any host
            push(never_built, target)
        monkeypatch.setenv("MODELPACK_REGISTRY_HOST", registry.address)
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(ModelpackError, match="not authorized") as wrong:
            push(never_built, target)
        assert not isinstance(wrong.value, StageFailed)  # refused by the registry, not by buildah
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", "s3cret")
        lines: list[str] = []
        with pytest.raises(StageFailed, match="buildah push failed"):
            push(never_built, target, log=lines.append)
        assert any("never-built" in line for line in lines)
        with pytest.raises(UsageError, match="a push names a tag"):
            push(never_built, f"{target}@sha256:{'1' * 64}")
    finally:
        registry.stop()
