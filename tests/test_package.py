"""The package: manifest schema, verify, .mpk archives and safe extraction, inspect, predict."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE, run_cli


@pytest.fixture
def pkg(digits_package: Path, tmp_path: Path) -> Path:
    """A private copy of the digits package that a test may damage."""
    dst = tmp_path / "pkg"
    shutil.copytree(digits_package, dst)
    return dst


def test_manifest_records_what_the_issue_names(digits_package: Path) -> None:
    from modelpack.package import manifest as mf

    data = json.loads((digits_package / "modelpack.json").read_text())
    mf.validate(data)
    assert data["schema_version"] == mf.SCHEMA_VERSION
    assert data["name"] == "model" and data["version"] == "1"
    for artifact in data["artifacts"]:
        assert {"format", "path", "size", "sha256"} <= set(artifact)
        assert artifact["size"] == (digits_package / artifact["path"]).stat().st_size
    source = data["lineage"]["source"]
    assert source["path"].endswith("model.keras") and len(source["sha256"]) == 64
    stage = data["lineage"]["stages"][0]
    assert {"name", "params", "started_at", "finished_at", "duration_s", "metrics"} <= set(stage)
    assert data["created_by"]["modelpack"] and "tensorflow" in data["created_by"]["frameworks"]


def test_verify_passes_then_fails_on_a_tampered_artifact(pkg: Path) -> None:
    result = run_cli("verify", pkg)
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    onnx_file = pkg / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    result = run_cli("verify", pkg)
    assert result.exit_code == 1
    assert "model.onnx" in result.output and "does not match the manifest" in result.output


def test_verify_fails_on_a_missing_artifact(pkg: Path) -> None:
    (pkg / "model.tflite").unlink()
    result = run_cli("verify", pkg)
    assert result.exit_code == 1 and "model.tflite" in result.output and "missing" in result.output


def test_verify_loads_artifacts(pkg: Path) -> None:
    """A file whose checksum matches a manifest but that does not load is caught by the load step."""
    garbage = b"not a model at all"
    (pkg / "model.onnx").write_bytes(garbage)
    manifest = json.loads((pkg / "modelpack.json").read_text())
    from modelpack.package import digest

    d = digest(pkg / "model.onnx")
    for a in manifest["artifacts"]:
        if a["path"] == "model.onnx":
            a["size"], a["sha256"] = d.size, d.sha256
    (pkg / "modelpack.json").write_text(json.dumps(manifest))
    assert run_cli("verify", pkg, "--no-load").exit_code == 0
    result = run_cli("verify", pkg)
    assert result.exit_code == 1 and "model.onnx" in result.output and "does not load" in result.output


@pytest.mark.parametrize("mutate,field", [
    (lambda m: m.pop("signature"), "signature"),
    (lambda m: m["artifacts"][0].update(sha256="xyz"), "artifacts/0/sha256"),
    (lambda m: m["artifacts"][0].update(path="../../etc/passwd"), "artifacts/0/path"),
    (lambda m: m.update(schema_version="one"), "schema_version"),
    (lambda m: m["signature"]["inputs"][0].update(shape=[-2, 8]), "signature/inputs/0/shape"),
])
def test_invalid_manifest_is_rejected_naming_the_field(pkg: Path, mutate, field: str) -> None:
    manifest = json.loads((pkg / "modelpack.json").read_text())
    mutate(manifest)
    (pkg / "modelpack.json").write_text(json.dumps(manifest))
    result = run_cli("verify", pkg)
    assert result.exit_code == 1
    assert f"'{field}" in result.output, result.output


def test_newer_schema_version_says_upgrade(pkg: Path) -> None:
    manifest = json.loads((pkg / "modelpack.json").read_text())
    manifest["schema_version"] = 99
    (pkg / "modelpack.json").write_text(json.dumps(manifest))
    result = run_cli("verify", pkg)
    assert result.exit_code == 1 and "upgrade modelpack" in result.output


def test_manifest_that_is_not_json(pkg: Path) -> None:
    (pkg / "modelpack.json").write_text("{not json")
    result = run_cli("inspect", pkg)
    assert result.exit_code == 1 and "not valid JSON" in result.output


@pytest.mark.parametrize("compression", ["deflate", "lzma"])
def test_pack_and_use_the_archive(digits_package: Path, tmp_path: Path, compression: str) -> None:
    mpk = tmp_path / "digits.mpk"
    result = run_cli("pack", digits_package, "-o", mpk, "--compression", compression, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["archive_size"] == mpk.stat().st_size and info["raw_size"] > 0
    with zipfile.ZipFile(mpk) as zf:
        assert zf.namelist()[0] == "modelpack.json"
    assert run_cli("verify", mpk).exit_code == 0
    assert "model.onnx" in run_cli("inspect", mpk).output
    x = tmp_path / "x.npy"
    np.save(x, np.load(EXAMPLE / "eval.npz")["x"][:4])
    result = run_cli("predict", mpk, "--input", x, "--json")
    assert result.exit_code == 0, result.output
    probs = np.array(json.loads(result.stdout)["outputs"]["probs"]["data"])
    assert probs.shape == (4, 10)
    # Existing archive is refused without --force.
    assert run_cli("pack", digits_package, "-o", mpk).exit_code == 2
    assert run_cli("pack", digits_package, "-o", mpk, "--force").exit_code == 0


def test_pack_refuses_a_tampered_package(pkg: Path, tmp_path: Path) -> None:
    (pkg / "model.tflite").write_bytes(b"tampered")
    result = run_cli("pack", pkg, "-o", tmp_path / "x.mpk")
    assert result.exit_code == 1 and "model.tflite" in result.output
    assert not (tmp_path / "x.mpk").exists()


def _evil_archive(path: Path, member: str, *, link: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("modelpack.json", "{}")
        info = zipfile.ZipInfo(member)
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if link else "owned")
    return path


@pytest.mark.parametrize("member,link,words", [
    ("../../escaped.txt", False, "escapes the archive"),
    ("/tmp/absolute.txt", False, "absolute path"),
    ("model.onnx", True, "is a link"),
])
def test_zip_slip_archives_are_refused(tmp_path: Path, member: str, link: bool, words: str) -> None:
    mpk = _evil_archive(tmp_path / "evil.mpk", member, link=link)
    result = run_cli("verify", mpk)
    assert result.exit_code == 1
    assert words in result.output and member in result.output
    assert not (tmp_path.parent / "escaped.txt").exists()
    assert not Path("/tmp/absolute.txt").exists()


def test_inspect_package_and_model(digits_package: Path) -> None:
    result = run_cli("inspect", digits_package)
    assert result.exit_code == 0
    for words in ("Signature", "image", "Artifacts", "model.onnx", "Lineage", "export"):
        assert words in result.output
    result = run_cli("inspect", EXAMPLE / "model.keras", "--json")
    info = json.loads(result.stdout)
    assert info["format"] == "Keras 3 keras model"
    assert info["summary"]["layers"]["DepthwiseConv2D"] == 1
    assert info["signature"]["inputs"][0]["shape"] == [-1, 8, 8, 1]
    result = run_cli("inspect", digits_package / "model.onnx", "--json")
    info = json.loads(result.stdout)
    assert info["format"] == "ONNX model" and info["summary"]["nodes"] > 0 and "Conv" in info["summary"]["ops"]


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".json"])
def test_predict_inputs_and_outputs(digits_package: Path, tmp_path: Path, suffix: str) -> None:
    data = np.load(EXAMPLE / "eval.npz")
    x, y = data["x"][:6], data["y"][:6]
    path = tmp_path / f"in{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, image=x)
    else:
        path.write_text(json.dumps({"input_data": x.tolist()}))
    out = tmp_path / "out.npy"
    for runtime in ("onnx", "tflite"):
        result = run_cli("predict", digits_package, "--input", path, "-o", out, "--runtime", runtime)
        assert result.exit_code == 0, result.output
        assert (np.load(out).argmax(axis=1) == y).mean() >= 5 / 6


def test_predict_bad_input_names_the_problem(digits_package: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((2, 64), np.float32))
    result = run_cli("predict", digits_package, "--input", path)
    assert result.exit_code == 2
    assert "bad.npy" in result.output and "'image'" in result.output and "[-1, 8, 8, 1]" in result.output
    result = run_cli("predict", digits_package, "--input", path, "--runtime", "savedmodel")
    assert result.exit_code == 2


def test_predict_missing_runtime_in_package(digits_package: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((1, 8, 8, 1), np.float32))
    result = run_cli("predict", digits_package, "--input", path, "--runtime", "savedmodel")
    assert result.exit_code == 2 and "no savedmodel artifact" in result.output and "onnx" in result.output
