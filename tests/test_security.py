"""Signed and encrypted packages, and the server's access control: scopes, per-key metrics, rate limits, SIGHUP."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import threading
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import EXAMPLE, run_cli, run_subprocess, wait_until
from servers import InProcess, Process

X = np.load(EXAMPLE / "eval.npz")["x"][:2]
INFER = {"inputs": [{"name": "image", "shape": [2, 8, 8, 1], "datatype": "FP32", "data": X.ravel().tolist()}]}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    assert run_cli("keygen", "-o", out, "--symmetric").exit_code == 0
    return out


@pytest.fixture
def signed(digits_package: Path, copy_of, keys: Path) -> Path:
    pkg = copy_of(digits_package)
    assert run_cli("sign", pkg, "--key", keys / "private.pem").exit_code == 0
    return pkg


def _flip_member(archive: Path, member: str, out: Path) -> None:
    """Copy an archive, flipping one byte in the middle of `member`."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = bytearray(src.read(info))
            if info.filename == member:
                data[len(data) // 2] ^= 0x01
            dst.writestr(info, bytes(data))


# --- signing ----------------------------------------------------------------------------------------------

def test_keygen(keys: Path) -> None:
    assert stat.S_IMODE((keys / "private.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((keys / "model.key").stat().st_mode) == 0o600
    assert b"BEGIN PUBLIC KEY" in (keys / "public.pem").read_bytes()
    again = run_cli("keygen", "-o", keys)
    assert again.exit_code == 2 and "--force" in again.output


def test_sign_and_verify(signed: Path, keys: Path, tmp_path: Path) -> None:
    result = run_cli("verify", signed, "--pubkey", keys / "public.pem", "--json")
    assert result.exit_code == 0
    body = json.loads(result.stdout)
    assert body["signature"]["algorithm"] == "ed25519" and body["artifacts"][0]["checksum"] == "ok"
    mpk = tmp_path / "signed.mpk"
    assert run_cli("pack", signed, "-o", mpk).exit_code == 0
    assert run_cli("verify", mpk, "--pubkey", keys / "public.pem").exit_code == 0  # the signature travels along
    assert run_cli("sign", mpk, "--key", keys / "private.pem").exit_code == 2


def test_tampering_breaks_verification(signed: Path, keys: Path, tmp_path: Path) -> None:
    manifest = signed / "modelpack.json"
    original = manifest.read_text()
    manifest.write_text(original.replace('"version": "1"', '"version": "2"'))
    result = run_cli("verify", signed, "--pubkey", keys / "public.pem")
    assert result.exit_code == 1 and "modified after signing" in result.output
    manifest.write_text(original)
    with (signed / "model.onnx").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02")
    result = run_cli("verify", signed, "--pubkey", keys / "public.pem")
    assert result.exit_code == 1 and "model.onnx" in result.output and "does not match the manifest" in result.output
    other = tmp_path / "other"
    assert run_cli("keygen", "-o", other).exit_code == 0
    result = run_cli("verify", signed, "--pubkey", other / "public.pem", "--no-load")
    assert result.exit_code == 1 and "not by the given public key" in result.output


def test_serve_require_signature(signed: Path, digits_package: Path, keys: Path) -> None:
    pub = keys / "public.pem"
    ok = run_subprocess("serve", signed, "--require-signature", pub, "--get", "/v2/health/ready")
    assert ok.returncode == 0, ok.stderr
    unsigned = run_subprocess("serve", digits_package, "--require-signature", pub, "--get", "/v2/health/ready")
    assert unsigned.returncode == 1 and "refusing to serve" in unsigned.stderr and "not signed" in unsigned.stderr
    (signed / "modelpack.json").write_text((signed / "modelpack.json").read_text().replace('"1"', '"7"', 1))
    tampered = run_subprocess("serve", signed, "--require-signature", pub, "--get", "/v2/health/ready")
    assert tampered.returncode == 1 and "modified after signing" in tampered.stderr
    assert "Traceback" not in tampered.stderr


# --- encryption at rest -------------------------------------------------------------------------------------

@pytest.fixture
def encrypted(digits_package: Path, keys: Path, tmp_path: Path) -> Path:
    out = tmp_path / "enc.mpk"
    result = run_cli("pack", digits_package, "-o", out, "--encrypt", "--key-file", keys / "model.key")
    assert result.exit_code == 0, result.output
    return out


def test_encrypted_archive_hides_artifacts_not_the_manifest(encrypted: Path, digits_package: Path) -> None:
    plain = (digits_package / "model.onnx").read_bytes()
    with zipfile.ZipFile(encrypted) as zf:
        names = set(zf.namelist())
        assert zf.read("modelpack.json") == (digits_package / "modelpack.json").read_bytes()  # readable, as signed
        assert "model.onnx" not in names and "model.onnx.enc" in names
        cipher = zf.read("model.onnx.enc")
    assert plain[:64] not in cipher and b"onnx" not in cipher[:4096]
    inspect = run_cli("inspect", encrypted, "--json")
    assert inspect.exit_code == 0 and json.loads(inspect.stdout)["name"] == "model"


def test_key_sources_and_errors(digits_package: Path, keys: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MODELPACK_KEY", raising=False)
    missing = run_cli("pack", digits_package, "-o", tmp_path / "x.mpk", "--encrypt")
    assert missing.exit_code == 2 and "MODELPACK_KEY" in missing.output and not (tmp_path / "x.mpk").exists()
    assert run_cli("pack", digits_package, "-o", tmp_path / "x.mpk", "--key-file", keys / "model.key").exit_code == 2
    monkeypatch.setenv("MODELPACK_KEY", (keys / "model.key").read_text().strip())
    assert run_cli("pack", digits_package, "-o", tmp_path / "env.mpk", "--encrypt").exit_code == 0
    assert run_cli("verify", tmp_path / "env.mpk").exit_code == 0
    monkeypatch.setenv("MODELPACK_KEY", "too-short")
    bad = run_cli("verify", tmp_path / "env.mpk")
    assert bad.exit_code == 2 and "32-byte key" in bad.output


def test_wrong_key_and_tampered_ciphertext(encrypted: Path, keys: Path, tmp_path: Path) -> None:
    assert run_cli("verify", encrypted, "--key-file", keys / "model.key").exit_code == 0
    other = tmp_path / "other"
    assert run_cli("keygen", "-o", other, "--symmetric").exit_code == 0
    wrong = run_cli("verify", encrypted, "--key-file", other / "model.key")
    assert wrong.exit_code == 1 and "wrong key" in wrong.output
    tampered = tmp_path / "tampered.mpk"
    _flip_member(encrypted, "model.onnx.enc", tampered)
    result = run_cli("verify", tampered, "--key-file", keys / "model.key")
    assert result.exit_code == 1 and "tampered" in result.output
    served = run_subprocess("serve", tampered, "--key-file", keys / "model.key", "--get", "/v2/health/ready")
    assert served.returncode == 1 and "refusing to serve" in served.stderr and "Traceback" not in served.stderr
    assert [p.name for p in tmp_path.iterdir() if p.suffix != ".mpk"] == ["other"]  # no partial output anywhere
    refused = run_cli("predict", encrypted, "--input", "x.npy")
    assert refused.exit_code == 2 and "is encrypted" in refused.output


def test_encrypted_package_is_served_from_memory(encrypted: Path, keys: Path, tmp_path: Path,
                                                 digits_package: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = Process(encrypted, env={"MODELPACK_KEY": (keys / "model.key").read_text().strip(),
                                     "TMPDIR": str(scratch)})
    try:
        response = httpx.post(f"{server.url}/v2/models/model/infer", json=INFER)
        assert response.status_code == 200
        probs = np.asarray(response.json()["outputs"][0]["data"]).reshape(2, 10)
        assert probs.argmax(axis=1).tolist() == [int(v) for v in np.load(EXAMPLE / "eval.npz")["y"][:2]]
        # Nothing was extracted: no file under TMPDIR holds any part of the model (onnxruntime leaves only a
        # 51-byte session id there).
        plain = (digits_package / "model.onnx").read_bytes()
        chunks = [plain[i:i + 64] for i in range(0, len(plain), len(plain) // 16)]
        for file in (p for p in scratch.rglob("*") if p.is_file()):
            data = file.read_bytes()
            assert not any(chunk in data for chunk in chunks), file
    finally:
        server.stop()


# --- access control ------------------------------------------------------------------------------------------

def _h(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_scopes_and_per_key_metrics(digits_package: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("app:app-key-0001:infer\nviewer:viewer-key-02:metadata\nops:ops-key-00003:admin\n")
    server = InProcess(digits_package, api_keys_file=keys)
    try:
        assert server.post("/v2/models/model/infer", json=INFER, headers=_h("app-key-0001")).status_code == 200
        # An infer key may ask about the model it calls (clients check readiness first), nothing more.
        assert server.get("/v2/models/model", headers=_h("app-key-0001")).status_code == 200
        denied = server.get("/openapi.json", headers=_h("app-key-0001"))
        assert denied.status_code == 403 and "lacks the 'metadata' scope" in denied.json()["error"]
        assert server.get("/v2/models/model", headers=_h("viewer-key-02")).status_code == 200
        assert server.post("/predict", json={"input_data": X.tolist()}, headers=_h("viewer-key-02")).status_code == 403
        assert server.get("/metrics", headers=_h("viewer-key-02")).status_code == 403
        assert server.post("/v2/models/model/infer", json=INFER, headers=_h("ops-key-00003")).status_code == 200
        metrics = server.get("/metrics", headers=_h("ops-key-00003")).text
        counts = dict(m.groups() for m in re.finditer(r'modelpack_key_requests_total\{[^}]*key="(\w+)"\} (\d+)',
                                                      metrics))
        assert counts == {"app": "3", "viewer": "3", "ops": "1"}  # the scrape itself is counted after it answers
    finally:
        server.close()


def test_rate_limit(digits_package: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("slow:slow-key-001:infer,metadata:2/m\nfast:fast-key-001:all\n")
    server = InProcess(digits_package, api_keys_file=keys, rate_limit="1000/s")
    try:
        codes = [server.get("/v2/models/model", headers=_h("slow-key-001")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = server.get("/v2/models/model", headers=_h("slow-key-001"))
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 30
        assert "rate limit" in limited.json()["error"]
        assert all(server.get("/v2", headers=_h("fast-key-001")).status_code == 200 for _ in range(20))
    finally:
        server.close()
    bad = tmp_path / "bad"
    bad.write_text("x:long-enough-key:infer:fast\n")
    with pytest.raises(Exception, match="should look like 50/s"):
        InProcess(digits_package, api_keys_file=bad)


def test_sighup_reloads_keys_without_dropping_requests(digits_package: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("steady:steady-key-01\nold:old-key-00001\n")
    server = Process(digits_package, "--api-keys-file", str(keys))
    failures: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, headers=_h("steady-key-01")) as client:
            while not stop.is_set():
                status = client.post("/v2/models/model/infer", json=INFER).status_code
                if status != 200:
                    failures.append(status)

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for w in workers:
            w.start()
        wait_until(lambda: server.metric("modelpack_requests_total", _h("steady-key-01")) >= 20, 30, "the load to flow")
        keys.write_text("steady:steady-key-01\nnew:new-key-000001\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: httpx.get(f"{server.url}/v2", headers=_h("new-key-000001")).status_code == 200, 10,
                   "the new key to work")
        assert httpx.get(f"{server.url}/v2", headers=_h("old-key-00001")).status_code == 401
        keys.write_text("broken line without a usable key: x\n")
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: server.logged("keys file not reloaded"), 10, "the broken reload to be refused")
        assert httpx.get(f"{server.url}/v2", headers=_h("new-key-000001")).status_code == 200  # old ring kept
        served = server.metric("modelpack_requests_total", _h("steady-key-01"))
        wait_until(lambda: server.metric("modelpack_requests_total", _h("steady-key-01")) >= served + 20, 30, "more load after reloads")
    finally:
        stop.set()
        for w in workers:
            w.join()
        code, err = server.stop()
    assert failures == [] and server.proc.returncode == 0
    assert "reloaded 2 API key(s)" in err and "keys file not reloaded" in err


def test_an_infer_key_may_ask_for_readiness_and_metadata_and_bearer_is_case_insensitive(digits_package,
                                                                                         tmp_path) -> None:
    import tritonclient.http as triton

    keys = tmp_path / "keys"
    keys.write_text("app:app-secret-123:infer\n")
    server = Process(digits_package, "--api-keys-file", keys)
    try:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        auth = {"Authorization": "Bearer app-secret-123"}
        assert client.is_model_ready("model", headers=auth)
        assert client.get_model_metadata("model", headers=auth)["name"] == "model"
        lower = httpx.get(f"{server.url}/v2/models/model/ready", headers={"Authorization": "bearer app-secret-123"})
        assert lower.status_code == 200
        assert httpx.get(f"{server.url}/openapi.json", headers=auth).status_code == 403
    finally:
        server.stop()


def test_require_signature_errors_name_the_option(digits_package, tmp_path) -> None:
    missing = tmp_path / "nope.pem"
    missing.write_text("not a key")
    result = run_cli("serve", digits_package, "--require-signature", missing, "--get", "/v2/health/ready")
    assert result.exit_code == 2 and "--require-signature" in result.output and "--pubkey" not in result.output


def test_an_mpk_member_the_manifest_does_not_list_is_refused_before_extraction(digits_package, tmp_path) -> None:
    assert run_cli("pack", digits_package, "-o", tmp_path / "ok.mpk").exit_code == 0
    bomb = tmp_path / "bomb.mpk"
    bomb.write_bytes((tmp_path / "ok.mpk").read_bytes())
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("extra/payload.bin", b"\0" * (256 << 20))  # 256 MiB that deflate packs into ~250 KB
    assert bomb.stat().st_size - (tmp_path / "ok.mpk").stat().st_size < 1 << 20  # 256 MiB in under 1 MiB
    result = run_cli("verify", bomb)
    assert result.exit_code == 1 and "not listed in the manifest" in result.output
    resized = tmp_path / "resized.mpk"
    with zipfile.ZipFile(tmp_path / "ok.mpk") as src, zipfile.ZipFile(resized, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data + (b"\0" * (64 << 20) if info.filename == "model.onnx" else b""))
    result = run_cli("verify", resized)
    assert result.exit_code == 1 and "the manifest says" in result.output


def test_extractions_left_by_a_killed_process_are_swept(digits_package, tmp_path) -> None:
    import subprocess
    import sys
    import tempfile

    assert run_cli("pack", digits_package, "-o", tmp_path / "pkg.mpk").exit_code == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = Path(tempfile.gettempdir()) / f"modelpack-x{int(dead.stdout)}-leftover"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"plaintext model")
    assert run_cli("verify", tmp_path / "pkg.mpk").exit_code == 0
    assert not stale.exists()


def test_one_reader_opens_a_directory_an_archive_and_an_encrypted_archive(digits_package: Path, encrypted: Path,
                                                                        keys: Path, tmp_path: Path) -> None:
    from modelpack.errors import InputError, IntegrityError
    from modelpack.package import open_any, verify

    plain = tmp_path / "plain.mpk"
    assert run_cli("pack", digits_package, "-o", plain).exit_code == 0
    onnx_bytes = (digits_package / "model.onnx").read_bytes()
    key_file = keys / "model.key"
    for path in (digits_package, plain, encrypted):
        with open_any(path, need="manifest") as pkg:  # no key, nothing extracted or decrypted
            assert pkg.name == "model" and pkg.manifest_bytes == (digits_package / "modelpack.json").read_bytes()
        with open_any(path, key_file=key_file, need="memory") as pkg:
            assert pkg.read(pkg.artifact("onnx")) == onnx_bytes
            assert pkg.artifact()["format"] == "onnx"
            assert [row["checksum"] for row in pkg.check_checksums()] == ["ok"] * len(pkg.artifacts)
        report = verify(path, key_file=key_file)
        assert report["encrypted"] is (path == encrypted) and all(r["load"].startswith("ok") for r in report["artifacts"]
                                                                  if r["format"] in ("onnx", "tflite"))
    with open_any(plain) as pkg:
        extracted = pkg.root
        assert (extracted / "model.onnx").read_bytes() == onnx_bytes
    assert not extracted.exists()  # the extraction goes when the reader closes
    with pytest.raises(InputError, match="is encrypted"), open_any(encrypted):
        pass
    with open_any(encrypted, need="manifest") as pkg, pytest.raises(InputError, match="encrypted"):
        pkg.root  # noqa: B018
    with pytest.raises(IntegrityError, match="not signed"):
        verify(plain, pubkey=keys / "public.pem")
