"""Build the `docker` target's context into an image, with or without a Docker daemon, and push it.

Docker when an engine answers; otherwise buildah or `podman build`, daemonless and unprivileged (chroot
isolation), so a CI runner or a build pod without Docker builds the same Dockerfile. buildah and podman keep
their images where containers/storage says: `CONTAINERS_STORAGE_CONF` picks another store (driver, root).
A push uses the login `modelpack push` would use (the environment's or the docker config's), handed to the
builder in a private auth file for the push only.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import StageFailed, UsageError

BUILDERS = ("docker", "buildah", "podman")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Pushed:
    reference: str  # HOST/REPO:TAG, as the builder names it
    digest: str  # the manifest's digest in the registry: pull it back with HOST/REPO@DIGEST


@dataclass(frozen=True)
class Image:
    builder: str
    name: str
    id: str  # the image ID (its config's digest)
    digest: str | None  # the local manifest's digest (buildah, podman); Docker has none before a push
    size: int  # bytes, uncompressed layers
    pushed: Pushed | None = None


def hand_commands(context: Path, image: str) -> list[str]:
    """What to run by hand, one per builder."""
    ctx, tag = shlex.quote(str(context)), shlex.quote(image)
    return [f"docker build -t {tag} {ctx}", f"buildah bud --isolation chroot --format docker -t {tag} {ctx}",
            f"podman build --format docker -t {tag} {ctx}"]


def _docker_answers(docker: str) -> tuple[bool, str]:
    try:
        probe = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return False, "docker info did not answer in 30 s"
    reason = (probe.stderr.strip().splitlines() or ["no answer"])[-1][:200]
    return probe.returncode == 0, reason


def choose(builder: str, context: Path, image: str) -> tuple[str, str]:
    """(builder, its executable): `auto` is docker when an engine answers, else buildah, else podman."""
    commands = hand_commands(context, image)
    if builder == "docker" or builder == "auto":
        docker = shutil.which("docker")
        answers, reason = _docker_answers(docker) if docker else (False, "no docker command here")
        if answers and docker:
            return "docker", docker
        if builder == "docker":
            raise StageFailed("deploy", f"--builder docker: {reason if docker else 'no docker command here'}; the "
                                        f"build context is ready, run: {commands[0]}, or use --builder buildah.")
        for name in BUILDERS[1:]:
            if program := shutil.which(name):
                return name, program
        raise StageFailed("deploy", f"no image builder here (docker: {reason}; buildah and podman are not on PATH); "
                                    f"the build context is ready, run: {commands[0]}, or install buildah and run: "
                                    f"{commands[1]}, or: {commands[2]}.")
    program = shutil.which(builder)
    if program is None:
        raise StageFailed("deploy", f"--builder {builder}: {builder} is not on PATH; install it, or pick another "
                                    f"--builder; the build context is ready, run: {commands[BUILDERS.index(builder)]}")
    return builder, program


def _run(argv: list[str], log: Log, what: str, env: dict[str, str] | None = None) -> None:
    """Run a builder command, its output (stdout and stderr) passed line by line to `log`."""
    tail: deque[str] = deque(maxlen=3)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                          env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(line)
    if proc.returncode != 0:
        last = " | ".join(t.strip()[:200] for t in tail if t.strip())
        raise StageFailed("deploy", f"{what} failed (exit {proc.returncode}): {last}; the command was: "
                                    f"{shlex.join(argv)}")


def _json(argv: list[str], what: str) -> Any:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise StageFailed("deploy", f"{what} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout)


def build_argv(builder: str, program: str, context: Path, image: str) -> list[str]:
    if builder == "docker":
        return [program, "build", "-t", image, str(context)]
    # The docker format keeps the Dockerfile's HEALTHCHECK, which the OCI image config has no field for.
    # chroot isolation runs the RUN step without the namespaces and cgroups a nested or unprivileged build
    # lacks; BUILDAH_ISOLATION, when set, is the user's choice instead.
    isolation = [] if os.environ.get("BUILDAH_ISOLATION") else ["--isolation", "chroot"]
    verb = "bud" if builder == "buildah" else "build"
    return [program, verb, *isolation, "--format", "docker", "--pull=missing", "-t", image, str(context)]


def inspect(builder: str, program: str, image: str) -> Image:
    """The built image's ID, digest and size, as its builder's storage has it."""
    if builder == "buildah":
        data = _json([program, "inspect", "--type", "image", image], "buildah inspect")
        manifest = json.loads(data["Manifest"])
        size = sum(int(layer["size"]) for layer in manifest["layers"])
        return Image(builder, image, f"sha256:{data['FromImageID']}", data["FromImageDigest"], size)
    (data,) = _json([program, "image", "inspect", image], f"{builder} image inspect")
    if builder == "podman":
        return Image(builder, image, f"sha256:{data['Id']}", data.get("Digest"), int(data["Size"]))
    return Image(builder, image, data["Id"], None, int(data["Size"]))


def build(context: Path, image: str, builder: str = "auto", log: Log = lambda line: None) -> Image:
    """Build `context` into `image` with `builder` (auto, docker, buildah or podman)."""
    if builder not in ("auto", *BUILDERS):
        raise UsageError(f"--builder {builder}: expected auto, docker, buildah or podman.")
    name, program = choose(builder, context, image)
    log(f"building {image} with {name}")
    _run(build_argv(name, program, context, image), log, f"{name} build")
    return inspect(name, program, image)


def _auth_file(directory: Path, registry: str, base: str) -> Path | None:
    """A docker-config auth file holding the login `modelpack push` would send to `registry`, or None."""
    from ..oci.registry import credentials, host_allowed

    login = credentials(registry, base)
    if login is None or (login.hosts is not None and not host_allowed(login.hosts, base)):
        return None  # the environment's login goes only to the hosts MODELPACK_REGISTRY_HOST names
    entry = ({"identitytoken": login.secret} if login.identity
             else {"auth": base64.b64encode(f"{login.user}:{login.secret}".encode()).decode()})
    path = directory / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"auths": {registry: entry}}, out)
    return path


def push(built: Image, reference: str, log: Log = lambda line: None, plain_http: bool = False) -> Image:
    """Push a built image to `oci://HOST/REPO[:TAG]` (the tag defaults to the image's) with push's login."""
    from ..oci.registry import Reference, Registry, base_url

    ref = Reference.parse(reference, "--push")
    if ref.digest:
        raise UsageError(f"--push '{reference}': a push names a tag, not a digest; drop the @sha256:... part.")
    tag = ref.tag or (built.name.rsplit(":", 1)[1] if ":" in built.name.rsplit("/", 1)[-1] else "latest")
    target = f"{ref.registry}/{ref.repository}:{tag}"
    base = base_url(ref, plain_http)
    program = shutil.which(built.builder) or built.builder
    # First, push's own client asks the registry for push access to the repository: a missing or wrong login,
    # or a token service the environment's login is not for, fails here with push's message, before the
    # builder is handed any credentials.
    with Registry(ref, plain_http=plain_http, push=True) as registry:
        registry.has_blob(built.id)
    with tempfile.TemporaryDirectory(prefix="modelpack-push-") as tmp:
        auth = _auth_file(Path(tmp), ref.registry, base)
        log(f"pushing {built.name} to {target} with {built.builder}")
        if built.builder == "docker":
            env = {**os.environ, "DOCKER_CONFIG": tmp} if auth else None
            _run([program, "tag", built.name, target], log, "docker tag")
            _run([program, "push", target], log, "docker push", env=env)
            data = _json([program, "image", "inspect", target], "docker image inspect")[0]
            prefix = f"{ref.registry}/{ref.repository}@"
            digests = [d.split("@", 1)[1] for d in data.get("RepoDigests", []) if d.startswith(prefix)]
            if not digests:
                raise StageFailed("deploy", f"docker push {target} left no digest for {prefix[:-1]}; see its output.")
            digest = digests[0]
        else:
            digest_file = Path(tmp) / "digest"
            argv = [program, "push", "--digestfile", str(digest_file)]
            if base.startswith("http:"):
                argv.append("--tls-verify=false")  # plain HTTP: a loopback registry, or --plain-http
            if auth:
                argv += ["--authfile", str(auth)]
            _run([*argv, built.name, f"docker://{target}"], log, f"{built.builder} push")
            digest = digest_file.read_text(encoding="utf-8").strip()
    return Image(built.builder, built.name, built.id, built.digest, built.size, Pushed(target, digest))
