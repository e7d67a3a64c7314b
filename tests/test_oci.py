"""`modelpack push` and `pull` against a real registry (Debian's docker-registry), with the CNCF ModelPack
client from PyPI (`modelpack-client`) on the other end, both ways."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path, PurePosixPath

import jsonschema
import oci_registry
import pytest
from conftest import run_cli

from modelpack.package import sha256_file

if not oci_registry.available():
    if os.environ.get("MODELPACK_CI") == "1":  # .ci/run installs docker-registry: never skip there
        raise RuntimeError("docker-registry is missing, but .ci/run should have installed it")
    pytest.skip("the registry (Debian docker-registry) is not installed", allow_module_level=True)

CLIENT = "modelpack-client==0.1.0"  # installs a `modelpack` command too, so it lives in its own directory
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    server = oci_registry.Registry(tmp_path_factory.mktemp("registry")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signed(mlp_package: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The MLP package, signed: (package, public key)."""
    base = tmp_path_factory.mktemp("signed")
    pkg = base / "pkg"
    shutil.copytree(mlp_package, pkg)
    report = pkg / "README.md"  # a file that is neither model nor manifest: a doc layer
    report.write_text("# mlp\nA handmade MLP.\n")
    assert run_cli("keygen", "-o", base / "keys").exit_code == 0
    assert run_cli("sign", pkg, "--key", base / "keys" / "private.pem").exit_code == 0
    return pkg, base / "keys" / "public.pem"


@pytest.fixture(scope="module")
def client_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """modelpack-client and its dependencies (oras, zstandard), installed by pip into their own directory."""
    site = tmp_path_factory.mktemp("modelpack-client")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--target", str(site), CLIENT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return site


def run_client(site: Path, code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def get(url: str, accept: str = MANIFEST_TYPES) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=30) as response:
        return bytes(response.read())


def files_of(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in root.rglob("*") if p.is_file()}


def signed_files(root: Path) -> dict[str, str]:
    """What `pull --pubkey` writes of the `signed` package: all but the README its manifest does not list."""
    return {name: digest for name, digest in files_of(root).items() if name != "README.md"}


def test_push_pull_roundtrip_follows_the_model_spec(registry, signed, tmp_path: Path) -> None:
    pkg, public = signed
    ref = f"oci://{registry.address}/models/mlp:1"
    pushed = run_cli("push", pkg, ref, "--json")
    assert pushed.exit_code == 0, pushed.output
    result = json.loads(pushed.stdout)
    assert result["reference"] == ref and result["digest"].startswith("sha256:") and result["uploaded"] > 0

    raw = get(f"http://{registry.address}/v2/models/mlp/manifests/1")
    manifest = json.loads(raw)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == result["digest"]
    assert manifest["mediaType"] == MANIFEST_TYPES
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    kinds = {layer["annotations"]["org.cncf.model.filepath"]: layer["mediaType"] for layer in manifest["layers"]}
    assert kinds == {"model.onnx": "application/vnd.cncf.model.weight.v1.raw",
                     "modelpack.json": "application/vnd.cncf.model.weight.config.v1.raw",
                     "modelpack.sig": "application/vnd.cncf.model.weight.config.v1.raw",
                     "README.md": "application/vnd.cncf.model.doc.v1.raw"}
    config = json.loads(get(f"http://{registry.address}/v2/models/mlp/blobs/{manifest['config']['digest']}"))
    from modelpack.oci.artifact import config_schema

    jsonschema.Draft202012Validator(config_schema()).validate(config)  # the spec's own schema, vendored unmodified
    assert config["descriptor"]["name"] == "mlp" and config["config"]["format"] == "onnx"
    assert config["modelfs"]["diffIds"] == [layer["digest"] for layer in manifest["layers"]]

    out = tmp_path / "pulled"
    pulled = run_cli("pull", ref, "-o", out, "--pubkey", public)
    assert pulled.exit_code == 0, pulled.output
    assert "checksums ok" in pulled.output and "signature ok" in pulled.output
    # With --pubkey only what the signature covers is written: the README, which the package's manifest does
    # not list, is left out (and said so); without --pubkey everything arrives.
    assert "1 unsigned documents left out: README.md" in pulled.output
    assert files_of(out) == signed_files(pkg)
    assert run_cli("verify", out, "--pubkey", public).exit_code == 0
    everything = run_cli("pull", ref, "-o", tmp_path / "all")
    assert everything.exit_code == 0, everything.output
    assert files_of(tmp_path / "all") == files_of(pkg)

    # The same package again: the same digest (reproducible layers and config), and nothing re-sent.
    again = json.loads(run_cli("push", pkg, ref, "--json").stdout)
    assert again["digest"] == result["digest"] and again["uploaded"] == 0
    # By digest, and the tag defaults to the package's version.
    by_digest = run_cli("pull", f"oci://{registry.address}/models/mlp@{result['digest']}", "-o", tmp_path / "d")
    assert by_digest.exit_code == 0, by_digest.output
    version = json.loads((pkg / "modelpack.json").read_text())["version"]
    untagged = json.loads(run_cli("push", pkg, f"oci://{registry.address}/models/mlp", "--json").stdout)
    assert untagged["reference"] == f"oci://{registry.address}/models/mlp:{version}"


def test_pull_checks_every_digest_and_leaves_nothing(registry, signed, tmp_path: Path) -> None:
    pkg, _ = signed
    ref = f"oci://{registry.address}/models/tampered:1"
    assert run_cli("push", pkg, ref).exit_code == 0
    manifest = json.loads(get(f"http://{registry.address}/v2/models/tampered/manifests/1"))
    (weights,) = [layer for layer in manifest["layers"] if layer["annotations"]["org.cncf.model.filepath"]
                  == "model.onnx"]
    blob = registry.blob_file(weights["digest"])
    original = blob.read_bytes()
    try:
        blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped in the registry's storage
        out = tmp_path / "out"
        result = run_cli("pull", ref, "-o", out)
        assert result.exit_code == 1, result.output
        assert weights["digest"] in result.output and "refusing" in result.output
        assert not out.exists() and os.listdir(tmp_path) == []  # no output, no temporary files
    finally:
        blob.write_bytes(original)
    wrong = "sha256:" + "0" * 64
    result = run_cli("pull", f"oci://{registry.address}/models/tampered@{wrong}", "-o", tmp_path / "x")
    assert result.exit_code == 2 and "not found" in result.output


@pytest.mark.slow  # seconds: left out of make test-fast
def test_a_download_that_breaks_off_resumes_and_else_fails_cleanly(registry, signed, tmp_path: Path) -> None:
    pkg, public = signed
    assert run_cli("push", pkg, f"oci://{registry.address}/models/flaky:1").exit_code == 0
    manifest = json.loads(get(f"http://{registry.address}/v2/models/flaky/manifests/1"))
    (weights,) = [layer for layer in manifest["layers"] if layer["annotations"]["org.cncf.model.filepath"]
                  == "model.onnx"]
    blob = f"blobs/{weights['digest']}"

    # Cut once, 100 bytes into the body: the pull resumes with a range request and succeeds.
    flaky = oci_registry.CuttingProxy(registry.address, cut=blob, keep=100, times=1)
    try:
        pulled = run_cli("pull", f"oci://{flaky.address}/models/flaky:1", "-o", tmp_path / "ok", "--pubkey", public)
        assert pulled.exit_code == 0, pulled.output
        assert files_of(tmp_path / "ok") == signed_files(pkg)
        ranges = [h for h in flaky.heads if blob in h.split("\r\n", 1)[0]]
        assert len(ranges) == 2 and "range: bytes=100-" in ranges[1].lower()
    finally:
        flaky.stop()
    # A registry that ignores the range sends the whole blob again: the download starts over.
    whole = oci_registry.CuttingProxy(registry.address, cut=blob, keep=100, times=1, strip_range=True)
    try:
        again = run_cli("pull", f"oci://{whole.address}/models/flaky:1", "-o", tmp_path / "again")
        assert again.exit_code == 0, again.output
        assert files_of(tmp_path / "again") == files_of(pkg)
    finally:
        whole.stop()

    # Cut every time (each resume gains 100 bytes): after three resumes, a one-line error naming the blob and
    # how far it got, and nothing left behind.
    dead = oci_registry.CuttingProxy(registry.address, cut=blob, keep=100)
    try:
        out = tmp_path / "out"
        result = run_cli("pull", f"oci://{dead.address}/models/flaky:1", "-o", out)
        assert result.exit_code == 1, result.output
        assert f"the download of blob {weights['digest']} broke off after 400 of {weights['size']} bytes, 3 times" \
               " resumed; try again later" in result.output
        assert not out.exists() and sorted(os.listdir(tmp_path)) == ["again", "ok"]
    finally:
        dead.stop()


def test_bad_references_and_artifacts_are_one_line_errors(registry, mlp_package: Path, tmp_path: Path) -> None:
    for ref in ("registry.example.com", "oci://host/UPPER:1", "oci://host/repo:bad tag", "oci://host/r@sha256:12"):
        result = run_cli("push", mlp_package, ref)
        assert result.exit_code == 2 and "REFERENCE" in result.output and "Traceback" not in result.output, ref
    # An OCI artifact that is not a model: refused before anything is written.
    empty = b"{}"
    digest = "sha256:" + hashlib.sha256(empty).hexdigest()
    from modelpack.oci.registry import Reference, Registry

    other = Registry(Reference.parse(f"oci://{registry.address}/other/image:v1"), push=True)
    other.upload_blob(digest, empty)
    image = {"schemaVersion": 2, "mediaType": MANIFEST_TYPES, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest, "size": 2}, "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": 2}]}
    other.put_manifest("v1", MANIFEST_TYPES, json.dumps(image).encode())
    result = run_cli("pull", f"oci://{registry.address}/other/image:v1", "-o", tmp_path / "o")
    assert result.exit_code == 2 and "not a CNCF ModelPack artifact" in result.output
    assert not (tmp_path / "o").exists()
    missing = run_cli("pull", f"oci://{registry.address}/models/nothing:1", "-o", tmp_path / "n")
    assert missing.exit_code == 2 and "not found" in missing.output
    unreachable = run_cli("pull", "oci://127.0.0.1:1/models/x:1", "-o", tmp_path / "u")
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.output


def test_credentials_from_docker_config_and_environment(tmp_path: Path, signed, monkeypatch) -> None:
    pkg, public = signed
    server = oci_registry.Registry(tmp_path / "auth-registry", htpasswd={"ci": "s3cret"})
    (tmp_path / "auth-registry").mkdir()
    server.start()
    try:
        ref = f"oci://{server.address}/models/mlp:1"
        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nothing"))
        monkeypatch.delenv("MODELPACK_REGISTRY_USERNAME", raising=False)
        monkeypatch.delenv("MODELPACK_REGISTRY_PASSWORD", raising=False)
        refused = run_cli("push", pkg, ref)
        assert refused.exit_code == 2 and "docker login" in refused.output

        docker = tmp_path / "docker"
        docker.mkdir()
        auth = base64.b64encode(b"ci:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {server.address: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        assert run_cli("push", pkg, ref).exit_code == 0

        monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nothing"))
        monkeypatch.setenv("MODELPACK_REGISTRY_HOST", server.address)
        monkeypatch.setenv("MODELPACK_REGISTRY_USERNAME", "ci")
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", "wrong")
        assert run_cli("pull", ref, "-o", tmp_path / "no").exit_code == 2
        monkeypatch.setenv("MODELPACK_REGISTRY_PASSWORD", "s3cret")
        pulled = run_cli("pull", ref, "-o", tmp_path / "yes", "--pubkey", public)
        assert pulled.exit_code == 0, pulled.output
    finally:
        server.stop()


def test_bearer_tokens_from_a_token_service(tmp_path: Path, signed, monkeypatch) -> None:
    """The registry challenges with Bearer and checks the signed tokens a token service grants: we fetch one
    token for everything a push needs, and say which failure is which."""
    pkg, public = signed
    (tmp_path / "reg").mkdir()
    tokens = oci_registry.TokenService(tmp_path / "reg", {"ci": ("s3cret", {"models/mlp": {"pull", "push"}}),
                                                          "reader": ("r3ad", {"models/mlp": {"pull"}})},
                                       anonymous={"models/mlp": {"pull"}}, refresh_tokens={"rt-123": "ci"}).start()
    server = oci_registry.Registry(tmp_path / "reg", tokens=tokens)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "nothing"))
    # The environment's login goes to the registry and to the token service it names, and nowhere else.
    monkeypatch.setenv("MODELPACK_REGISTRY_HOST", f"{server.address},127.0.0.1:{tokens.port}")

    def login(user: str | None, password: str = "") -> None:
        for name, value in (("MODELPACK_REGISTRY_USERNAME", user), ("MODELPACK_REGISTRY_PASSWORD", password)):
            if value:
                monkeypatch.setenv(name, value)
            else:
                monkeypatch.delenv(name, raising=False)

    try:
        server.start()
        ref = f"oci://{server.address}/models/mlp:1"
        login(None)
        anonymous = run_cli("push", pkg, ref)
        assert anonymous.exit_code == 2 and "docker login" in anonymous.output
        login("reader", "r3ad")
        reader = run_cli("push", pkg, ref)
        assert reader.exit_code == 2 and "user 'reader' may not push to this repository" in reader.output
        login("ci", "wrong")
        wrong = run_cli("push", pkg, ref)
        assert wrong.exit_code == 2 and "the token service refused (401)" in wrong.output

        tokens.requests.clear()
        login("ci", "s3cret")
        pushed = run_cli("push", pkg, ref)
        assert pushed.exit_code == 0, pushed.output
        assert tokens.requests == [("ci", ["repository:models/mlp:pull,push"])]  # one token for the whole push

        login(None)  # this repository is public to read
        anon_pull = run_cli("pull", ref, "-o", tmp_path / "anon")
        assert anon_pull.exit_code == 0, anon_pull.output
        login("reader", "r3ad")
        pulled = run_cli("pull", ref, "-o", tmp_path / "pulled", "--pubkey", public)
        assert pulled.exit_code == 0, pulled.output
        assert files_of(tmp_path / "pulled") == signed_files(pkg)
        assert tokens.requests[-1] == ("reader", ["repository:models/mlp:pull"])

        # `docker login` to some registries (Azure's) keeps an OAuth2 refresh token, not the password.
        login(None)
        docker = tmp_path / "docker"
        docker.mkdir()
        placeholder = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()
        config = {"auths": {server.address: {"auth": placeholder, "identitytoken": "rt-123"}}}
        (docker / "config.json").write_text(json.dumps(config))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker))
        tokens.requests.clear()
        again = run_cli("push", pkg, f"oci://{server.address}/models/mlp:2")
        assert again.exit_code == 0, again.output
        assert tokens.requests == [("ci", ["repository:models/mlp:pull,push"])]
        config["auths"][server.address]["identitytoken"] = "revoked"
        (docker / "config.json").write_text(json.dumps(config))
        revoked = run_cli("push", pkg, f"oci://{server.address}/models/mlp:3")
        assert revoked.exit_code == 2 and "the token service refused (401)" in revoked.output

        # A credential helper (docker-credential-NAME get: the registry on stdin, JSON on stdout) says
        # "<token>" for an identity token.
        helper = tmp_path / "bin" / "docker-credential-mptest"
        helper.parent.mkdir()
        helper.write_text("#!/bin/sh\nread registry\n[ \"$registry\" = \"$EXPECTED\" ] || exit 1\n"
                          'echo \'{"ServerURL": "x", "Username": "<token>", "Secret": "rt-123"}\'\n')
        helper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("EXPECTED", server.address)
        (docker / "config.json").write_text(json.dumps({"credHelpers": {server.address: "mptest"}}))
        helped = run_cli("push", pkg, f"oci://{server.address}/models/mlp:4")
        assert helped.exit_code == 0, helped.output
        assert tokens.requests[-1] == ("ci", ["repository:models/mlp:pull,push"])

        tokens.stop()  # the registry still names the token service, which no longer answers
        down = run_cli("pull", ref, "-o", tmp_path / "down")
        assert down.exit_code == 1 and "cannot get a token from http://127.0.0.1:" in down.output, down.output
        assert not (tmp_path / "down").exists()
    finally:
        server.stop()
        tokens.stop()


@pytest.mark.slow
def test_modelpack_client_pulls_what_we_push_and_we_pull_what_it_pushes(registry, signed, client_site: Path,
                                                                         tmp_path: Path) -> None:
    pkg, public = signed
    ours = f"oci://{registry.address}/interop/ours:1"
    assert run_cli("push", pkg, ours).exit_code == 0
    theirs_out = tmp_path / "by-client"
    run_client(client_site, f"""
        from modelpack_client import ModelPackClient
        ModelPackClient(insecure=True).pull("{registry.address}/interop/ours:1", "{theirs_out}")
    """)  # the client validates the manifest, the config against the spec's schema, and every DiffID
    assert files_of(theirs_out) == files_of(pkg)
    assert run_cli("verify", theirs_out, "--pubkey", public).exit_code == 0

    # The other way: the client pushes the package's files with its own config; we pull and verify.
    layers = {"model.onnx": "weight.v1.raw", "modelpack.json": "weight.config.v1.raw",
              "modelpack.sig": "weight.config.v1.raw", "README.md": "doc.v1.raw"}
    run_client(client_site, f"""
        from modelpack_client import ModelPackClient, ModelLayer, ModelPackConfig, ModelDescriptor
        from modelpack_client import ModelTechnicalConfig
        layers = [ModelLayer(path="{pkg}/" + name, media_type="application/vnd.cncf.model." + kind)
                  for name, kind in {layers!r}.items()]
        config = ModelPackConfig(descriptor=ModelDescriptor(name="mlp"), config=ModelTechnicalConfig(format="onnx"))
        ModelPackClient(insecure=True).push("{registry.address}/interop/theirs:1", layers, config)
    """)
    out = tmp_path / "by-us"
    pulled = run_cli("pull", f"oci://{registry.address}/interop/theirs:1", "-o", out, "--pubkey", public)
    assert pulled.exit_code == 0, pulled.output
    assert files_of(out) == signed_files(pkg)


def test_directory_layers_are_reproducible_and_stay_under_their_path(tmp_path: Path) -> None:
    """A SavedModel directory travels as one tar layer: the same bytes from the same tree, and on pull no member
    may land outside the layer's own path."""
    from modelpack.errors import IntegrityError
    from modelpack.oci.artifact import WEIGHT_TAR, _tar_directory
    from modelpack.oci.registry import Reference
    from modelpack.oci.unpack import Budget, PullLimits, extract

    tree = tmp_path / "pkg" / "savedmodel"
    (tree / "variables").mkdir(parents=True)
    (tree / "saved_model.pb").write_bytes(b"graph")
    (tree / "variables" / "variables.index").write_bytes(b"index")
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    _tar_directory(tmp_path / "pkg", "savedmodel", first)
    os.utime(tree / "saved_model.pb", (1, 1))  # times and owners on disk do not reach the layer
    _tar_directory(tmp_path / "pkg", "savedmodel", second)
    assert first.read_bytes() == second.read_bytes()

    ref = Reference.parse("oci://localhost/x:1")
    diff_id = f"sha256:{sha256_file(first)}"
    out = tmp_path / "out"
    out.mkdir()
    names = extract(ref, first, WEIGHT_TAR, PurePosixPath("savedmodel"), diff_id, out, Budget(ref, PullLimits()))
    assert sorted(names) == ["savedmodel/saved_model.pb", "savedmodel/variables/variables.index"]
    assert (out / "savedmodel" / "variables" / "variables.index").read_bytes() == b"index"
    with pytest.raises(IntegrityError, match="not a file or folder under 'model'"):
        extract(ref, first, WEIGHT_TAR, PurePosixPath("model"), diff_id, tmp_path / "out2", Budget(ref, PullLimits()))
    with pytest.raises(IntegrityError, match="DiffID"):
        extract(ref, first, WEIGHT_TAR, PurePosixPath("savedmodel"), "sha256:" + "1" * 64, tmp_path / "out3",
                Budget(ref, PullLimits()))
