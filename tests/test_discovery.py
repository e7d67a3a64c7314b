"""Registration, discovery and failover against a real ZooKeeper server (Debian's zookeeperd)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import zookeeper
from conftest import EXAMPLE, run_cli, run_subprocess, wait_until
from servers import Process, free_port

from modelpack.errors import RegistryError

if not zookeeper.available():
    if os.environ.get("MODELPACK_CI") == "1":  # .ci/run installs zookeeperd: never skip there
        raise RuntimeError("ZooKeeper is missing, but .ci/run should have installed zookeeperd")
    pytest.skip("ZooKeeper (Debian zookeeperd) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def zk(tmp_path_factory: pytest.TempPathFactory):
    server = zookeeper.ZooKeeper(tmp_path_factory.mktemp("zk"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def registry(zk: zookeeper.ZooKeeper, request: pytest.FixtureRequest) -> str:
    return f"zk://{zk.hosts}/modelpack/{request.node.name.replace('[', '-').rstrip(']')}"


def _instances(registry: str, model: str | None = None) -> list[dict]:
    args = ["discover", registry, "--json"] + (["--model", model] if model else [])
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["instances"]


def _listed(registry: str) -> list[dict] | None:
    """The registered instances, or None while the registry cannot answer (a predicate, so it never asserts)."""
    result = run_cli("discover", registry, "--json")
    return json.loads(result.stdout)["instances"] if result.exit_code == 0 else None


def _count(registry: str) -> int:
    listed = _listed(registry)
    return -1 if listed is None else len(listed)


def test_register_discover_and_clean_stop(digits_package: Path, registry: str) -> None:
    server = Process(digits_package, "--register", registry)
    try:
        wait_until(lambda: _count(registry) == 1, 20, "one registered instance")
        entry = _instances(registry, "model")[0]
        assert entry["znode"].startswith("/modelpack/") and "/instance-" in entry["znode"]
        assert (entry["host"], entry["port"], entry["model"], entry["version"]) == ("127.0.0.1", server.port, "model", "1")
        assert entry["protocols"][0] == "v2" and entry["health"] == f"{server.url}/v2/health/ready"
        assert len(entry["signature_digest"]) == 64
        assert _instances(registry, "no-such-model") == []
        table = run_cli("discover", registry)
        assert str(server.port) in table.stdout and "1 live instance" in table.stdout
    finally:
        code, err = server.stop(signal.SIGTERM)
    assert code == 0, err
    assert _instances(registry) == []  # a graceful stop deletes the entry at once


def test_a_killed_server_vanishes_and_predict_fails_over(digits_package: Path, registry: str,
                                                          tmp_path: Path) -> None:
    a = Process(digits_package, "--register", registry)
    b = Process(digits_package, "--register", registry)
    try:
        wait_until(lambda: _count(registry) == 2, 20, "two registered instances")
        x = np.load(EXAMPLE / "eval.npz")["x"][:3]
        np.save(tmp_path / "x.npy", x)
        a.proc.kill()  # kill -9: no chance to deregister; the entry stays until the session expires
        a.proc.wait()
        # While the dead entry is still listed, every call must still succeed, some after a failed try.
        tried = []
        for _ in range(4):
            result = run_cli("predict", "--discover", registry, "--model", "model", "--input", tmp_path / "x.npy",
                             "--pick", "round-robin", "--json")
            assert result.exit_code == 0, result.output
            body = json.loads(result.stdout)
            assert body["instance"] == f"127.0.0.1:{b.port}"
            assert np.asarray(body["outputs"]["probs"]["data"]).shape == (3, 10)
            tried.append(len(body["tried"]))
        assert set(tried) <= {1, 2}  # the dead instance costs at most one failed try
        wait_until(lambda: [i["port"] for i in _listed(registry) or []] == [b.port], 30, "the killed entry to expire")
    finally:
        b.stop()
        a.stop()


def test_round_robin_failover_in_the_library(digits_package: Path, registry: str, zk: zookeeper.ZooKeeper) -> None:
    """A dead instance whose session has not expired yet: every call still lands, half of them after a retry."""
    from kazoo.client import KazooClient

    from modelpack import discovery

    live = Process(digits_package, "--register", registry)
    try:
        address = discovery.parse_zk(registry)
        wait_until(lambda: len(discovery.discover(address)) == 1, 20, "discovery to see the server")
        dead_port = free_port()  # nothing listens here: a crashed server's entry
        client = KazooClient(hosts=zk.hosts)
        client.start(timeout=10)
        record = discovery.instance_record(host="127.0.0.1", port=dead_port, model="model", version="1",
                                           signature={})
        client.create(f"{address.path}/{discovery.PREFIX}", json.dumps(record).encode(), ephemeral=True,
                      sequence=True)
        balancer = discovery.Balancer("round-robin")
        x = {"image": np.load(EXAMPLE / "eval.npz")["x"][:2].astype("float32")}
        attempts = []
        for _ in range(4):
            outputs, tried = discovery.predict(address, "model", x, balancer=balancer)
            assert outputs["probs"].shape == (2, 10) and tried[-1] == f"127.0.0.1:{live.port}"
            attempts.append(len(tried))
        assert sorted(attempts) == [1, 1, 2, 2]  # round robin started on the dead one every other call
        client.stop()
        client.close()
        with pytest.raises(RegistryError, match="no live instance of model 'other'"):
            discovery.predict(address, "other", x)
    finally:
        live.stop()


def test_zookeeper_down_at_startup(digits_package: Path, tmp_path: Path) -> None:
    port = free_port()
    registry = f"zk://127.0.0.1:{port}/modelpack/late"
    strict = run_subprocess("serve", digits_package, "--port", str(free_port()), "--register", registry,
                            "--register-required", timeout=60)
    assert strict.returncode == 1
    assert f"ZooKeeper at 127.0.0.1:{port} is unreachable" in strict.stderr and "Traceback" not in strict.stderr
    # By default it serves anyway, says so, and registers once ZooKeeper comes up.
    server = Process(digits_package, "--register", registry)
    late = zookeeper.ZooKeeper(tmp_path / "late-zk", port)
    try:
        assert server.proc.poll() is None
        late.start()
        wait_until(lambda: _count(registry) == 1, 40, "registration once ZooKeeper is up")
    finally:
        code, err = server.stop()
        late.stop()
    assert "is unreachable; serving anyway" in err


def test_bad_registry_urls() -> None:
    assert run_cli("discover", "http://x:1/p").exit_code == 2
    assert "expected zk://HOST:PORT/PATH" in run_cli("discover", "zk://host/").output
    result = run_cli("predict", "--discover", "zk://127.0.0.1:1/x", "--input", "x.npy")
    assert result.exit_code == 2 and "--model" in result.output
    result = run_cli("predict", "--input", "x.npy")
    assert result.exit_code == 2 and "give a PACKAGE" in result.output


def test_a_repository_registers_one_entry_per_model_and_version(registry: str, tmp_path: Path) -> None:
    import shutil

    import httpx
    from conftest import make_onnx_mlp

    built = {}
    for seed in (1, 2, 3):
        out = tmp_path / f"pkg{seed}"
        result = run_cli("optimize", make_onnx_mlp(tmp_path / f"mlp{seed}.onnx", seed=seed), "-o", out, "-q", "export")
        assert result.exit_code == 0, result.output
        built[seed] = out
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    (root / "other").mkdir()
    shutil.copytree(built[1], root / "m" / "1")
    shutil.copytree(built[3], root / "other" / "1")
    grpc_port = free_port()
    server = Process(root, "--poll-s", "0.2", "--register", registry, "--grpc-port", str(grpc_port))

    def versions() -> list[tuple[str, str, bool]] | None:
        listed = _listed(registry)
        return None if listed is None else sorted((i["model"], i["version"], i["default"]) for i in listed)

    try:
        wait_until(lambda: versions() == [("m", "1", True), ("other", "1", True)], 30, "one entry per version")
        entry = _instances(registry, "m")[0]
        assert entry["port"] == server.port and entry["grpc_port"] == grpc_port
        assert entry["protocols"] == ["v2", "tfserving-rest", "predict", "v2-grpc"]
        assert len(entry["signature_digest"]) == 64 and entry["infer"].endswith("/v2/models/m/versions/1/infer")
        shutil.copytree(built[2], root / "m" / ".2.tmp")
        (root / "m" / ".2.tmp").rename(root / "m" / "2")  # a new version: it replaces 1 (the latest is served)
        wait_until(lambda: versions() == [("m", "2", True), ("other", "1", True)], 60, "version 2 to replace 1")
        x = tmp_path / "x.npy"
        np.save(x, np.ones((2, 16), np.float32))
        result = run_cli("predict", "--discover", registry, "--model", "m", "--input", x, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["instance"] == f"127.0.0.1:{server.port}"
        assert httpx.post(f"{server.url}/v2/repository/models/other/unload").status_code == 200
        wait_until(lambda: versions() == [("m", "2", True)], 30, "the unloaded model's entry to go")
        assert httpx.post(f"{server.url}/v2/repository/models/other/load").status_code == 200
        wait_until(lambda: versions() == [("m", "2", True), ("other", "1", True)], 30, "its entry to come back")
    finally:
        code, err = server.stop()
    assert code == 0, err
    assert _instances(registry) == []  # a clean stop removes every entry
