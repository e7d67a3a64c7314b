"""Ray Serve: `deploy --target ray` on a real two-node Ray cluster (a head and a worker node, one CPU each).

The cluster is two `ray start --block` child processes on free loopback ports with a private temp dir, stopped by
PID (tests/raycluster.py). The application goes on with the `serve` CLI from the generated config; clients talk to
Ray's HTTP proxy only, never to a replica directly.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import raycluster
import yaml
import zookeeper
from conftest import run_cli, wait_until

import modelpack

if not raycluster.available():
    if os.environ.get("MODELPACK_CI") == "1":  # make install puts the 'ray' extra in CI's venv: never skip there
        raise RuntimeError("ray[serve] is missing, but .ci/run installs the 'ray' extra (pip install -e '.[all]')")
    pytest.skip("ray[serve] is not installed (pip install 'modelpack-toolkit[ray]')", allow_module_level=True)

if not zookeeper.available() and os.environ.get("MODELPACK_CI") == "1":
    raise RuntimeError("ZooKeeper is missing, but .ci/run installs zookeeperd")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # the whole module runs in 60-90 s here

KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}  # pass copies to tritonclient: its infer() adds headers to the dict
SRC = Path(modelpack.__file__).resolve().parent.parent  # the replicas import the modelpack under test


def _deploy(package: Path, out: Path, *extra: str) -> dict[str, Any]:
    result = run_cli("deploy", package, "--target", "ray", "-o", out, "--json", *extra)
    assert result.exit_code == 0, result.output
    return yaml.safe_load((out / "serve_config.yaml").read_text())


def test_config_is_a_serve_config(mlp_package: Path, tmp_path: Path) -> None:
    """The generated file passes Ray Serve's own schema (what `serve deploy` checks), fixed and autoscaling."""
    from ray.serve.schema import ServeDeploySchema

    fixed = _deploy(mlp_package, tmp_path / "fixed", "--replicas", "3", "--cpu", "500m", "--memory", "512Mi",
                    "--port", "9000")
    schema = ServeDeploySchema.parse_obj(fixed)
    (app,) = schema.applications
    assert (app.name, app.route_prefix, app.import_path) == ("mlp", "/", "modelpack.deploy.ray_app:build")
    assert (schema.http_options.host, schema.http_options.port) == ("127.0.0.1", 9000)
    (deployment,) = app.deployments
    assert deployment.num_replicas == 3 and deployment.max_ongoing_requests == 64
    assert (deployment.ray_actor_options.num_cpus, deployment.ray_actor_options.memory) == (0.5, 512 * 2**20)
    package = Path(app.args["package"])
    assert package.is_absolute() and (package / "modelpack.json").is_file() and (package / "model.onnx").is_file()
    assert "MODELPACK_API_KEY" not in json.dumps(fixed["applications"][0]["args"])  # the key never goes in the file

    scaled = _deploy(mlp_package, tmp_path / "scaled", "--replicas", "1", "--max-replicas", "4", "--host", "0.0.0.0")
    ServeDeploySchema.parse_obj(scaled)
    autoscaling = scaled["applications"][0]["deployments"][0]["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (1, 4)
    assert "num_replicas" not in scaled["applications"][0]["deployments"][0]
    assert scaled["http_options"]["host"] == "0.0.0.0"
    text = (tmp_path / "scaled" / "serve_config.yaml").read_text()
    assert "# Ray adds replicas" in text and "# Measured " in text  # the derivation, with the measured numbers
    assert autoscaling["target_ongoing_requests"] >= 1 and autoscaling["upscale_delay_s"] >= 10
    assert autoscaling["downscale_delay_s"] == max(60, 10 * autoscaling["upscale_delay_s"])
    assert scaled["applications"][0]["args"]["threads"] == 1
    assert (schema.grpc_options.port, schema.grpc_options.grpc_servicer_functions) == (
        8001, ["modelpack.deploy.ray_app:add_GRPCInferenceServiceServicer_to_server"])
    no_grpc = _deploy(mlp_package, tmp_path / "http-only", "--grpc-port", "0", "--register", "zk://127.0.0.1:1/x")
    assert "grpc_options" not in no_grpc and no_grpc["applications"][0]["args"]["register"] == "zk://127.0.0.1:1/x"
    ServeDeploySchema.parse_obj(no_grpc)

    bad = run_cli("deploy", mlp_package, "--target", "ray", "-o", tmp_path / "bad", "--cpu", "lots")
    assert bad.exit_code == 2 and "--cpu 'lots'" in bad.output and not (tmp_path / "bad").exists()


def test_builder_refuses_unknown_args(mlp_package: Path) -> None:
    from modelpack.deploy.ray_app import config_from_args

    assert config_from_args({"package": str(mlp_package), "max_batch_size": 8}).max_batch_size == 8
    with pytest.raises(ValueError, match="unknown key"):
        config_from_args({"package": str(mlp_package), "replicas": 2})
    with pytest.raises(ValueError, match="args.package"):
        config_from_args({})


@pytest.fixture(scope="module")
def cluster() -> Iterator[raycluster.Cluster]:
    # The key is in each node's environment, as the generated README says; the replicas read it there.
    # The GCS checks each raylet every 1 s (Ray's default: 3 s) and declares it dead after 5 failed checks: a killed
    # raylet refuses at once, so its fault is seen in about 5 s; the 5 s timeout per check keeps a node of a busy
    # machine alive (1 s timeouts failed a head node's startup under load).
    env = {"PYTHONPATH": str(SRC), "MODELPACK_API_KEY": KEY, "RAY_health_check_period_ms": "1000",
           "RAY_health_check_failure_threshold": "5", "RAY_health_check_timeout_ms": "5000"}
    with raycluster.Cluster(env=env, cpus=1) as running:
        yield running.start(workers=1)


def _replicas(cluster: raycluster.Cluster, app: str) -> list[dict[str, Any]] | None:
    """The RUNNING replicas of the app once it is RUNNING, else None; a failed deploy is a failure, not a wait."""
    status = cluster.applications().get(app)
    if status is None:
        return None
    if status["status"] == "DEPLOY_FAILED":
        details = {name: d.get("message") for name, d in status.get("deployments", {}).items()}
        raise AssertionError(f"deploy failed: {status['message']} {details}")
    if status["status"] != "RUNNING":
        return None
    (deployment,) = status["deployments"].values()
    return [r for r in deployment["replicas"] if r["state"] == "RUNNING"]


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


GRPC_PORT: list[int] = []


@pytest.fixture(scope="module")
def deployed(cluster: raycluster.Cluster, mlp_package: Path, tmp_path_factory: pytest.TempPathFactory,
             ) -> tuple[str, Path]:
    """The MLP package put on the cluster by `deploy --apply` as two one-CPU replicas: the proxy's URL, the output."""
    out = tmp_path_factory.mktemp("ray") / "deploy"
    port = cluster.free_port()
    GRPC_PORT.append(cluster.free_port())  # Serve's proxies keep the first apply's ports: every apply passes this one
    result = run_cli("deploy", mlp_package, "--target", "ray", "-o", out, "--replicas", "2", "--cpu", "1",
                     "--memory", "256Mi", "--port", port, "--grpc-port", GRPC_PORT[0], "--apply", cluster.dashboard,
                     "--json")
    assert result.exit_code == 0, result.output
    applied = json.loads(result.stdout)["applied"]
    print(f"deploy --apply: RUNNING and ready in {applied['seconds_to_ready']} s")
    assert applied["seconds_to_ready"] > 0
    url = f"http://127.0.0.1:{port}"
    assert _ready(url) and len(_replicas(cluster, "mlp") or []) == 2  # --apply returned only once both held
    return url, out


@pytest.fixture(scope="module")
def served(deployed: tuple[str, Path]) -> str:
    return deployed[0]


def _reference(package: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"features": x})[0])


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_through_ray_proxy(served: str, mlp_package: Path, binary: bool) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(served.removeprefix("http://"))
    assert client.is_server_ready(headers=dict(AUTH)) and client.is_model_ready("mlp", headers=dict(AUTH))
    assert client.get_model_metadata("mlp", headers=dict(AUTH))["inputs"][0]["shape"] == [-1, 16]
    x = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], headers=dict(AUTH))
    np.testing.assert_allclose(result.as_numpy("logits"), _reference(mlp_package, x), rtol=1e-5, atol=1e-6)


def test_tritonclient_grpc_through_ray_grpc_proxy(served: str, mlp_package: Path) -> None:
    """Unmodified tritonclient.grpc through Ray's gRPC proxy: KServe V2 gRPC with the key in metadata, and the
    codes `serve --grpc-port` gives a call without one or with an unknown model."""
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(f"127.0.0.1:{GRPC_PORT[0]}")
    headers = {"authorization": f"Bearer {KEY}"}
    assert client.is_server_live(headers=dict(headers)) and client.is_model_ready("mlp", headers=dict(headers))
    meta = client.get_model_metadata("mlp", headers=dict(headers))
    assert meta.name == "mlp" and list(meta.inputs[0].shape) == [-1, 16]
    x = np.random.default_rng(11).standard_normal((4, 16)).astype(np.float32)
    inp = triton.InferInput("features", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], headers=dict(headers))
    np.testing.assert_allclose(result.as_numpy("logits"), _reference(mlp_package, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("mlp", [inp])
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("nope", headers=dict(headers))
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    client.close()


def test_api_key_holds_through_ray_proxy(served: str) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}
    assert httpx.get(f"{served}/v2/models/mlp", timeout=10).status_code == 401
    assert httpx.get(f"{served}/v2/models/mlp", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.post(f"{served}/v2/models/mlp/infer", json=body, timeout=10).status_code == 401
    assert httpx.get(f"{served}/v2/models/mlp", headers=AUTH, timeout=10).status_code == 200
    answer = httpx.post(f"{served}/v2/models/mlp/infer", json=body, headers=AUTH, timeout=10)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 4]
    metrics = httpx.get(f"{served}/metrics", headers=AUTH, timeout=10)  # each replica's own metrics, through Ray
    assert metrics.status_code == 200 and "modelpack_requests_total" in metrics.text


def test_replicas_run_on_both_nodes(served: str, cluster: raycluster.Cluster) -> None:
    """One CPU per node and one per replica: Ray must place the two replicas on the two nodes."""
    replicas = _replicas(cluster, "mlp") or []
    nodes = {n["node_id"] for n in cluster.alive_nodes()}
    assert len(nodes) == 2 and {r["node_id"] for r in replicas} == nodes


class Load:
    """`clients` clients, each sending V2 requests back to back through the proxy (no retries), counting answers
    by status."""

    def __init__(self, url: str, limit_s: float = 150.0, clients: int = 1) -> None:
        self.url = url
        self.statuses: list[int] = []  # 0: no HTTP answer (connection error or timeout)
        self.errors: list[str] = []  # the failed answers, to show what the client saw
        self.stopped = threading.Event()
        self.deadline = time.monotonic() + limit_s  # bounded even if the test never calls stop()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        body = {"inputs": [{"name": "features", "shape": [2, 16], "datatype": "FP32", "data": [0.25] * 32}]}
        with httpx.Client(timeout=10) as client:
            while not self.stopped.is_set() and time.monotonic() < self.deadline:
                try:
                    response = client.post(f"{self.url}/v2/models/mlp/infer", json=body, headers=AUTH)
                    status, text = response.status_code, response.text[:200]
                except httpx.HTTPError as exc:
                    status, text = 0, repr(exc)
                if status != 200:
                    self.errors.append(f"{status} {text}")
                self.statuses.append(status)

    def ok(self) -> int:
        return self.statuses.count(200)

    def stop(self) -> list[int]:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=30)
        return self.statuses


def test_serve_deploy_takes_the_config(deployed: tuple[str, Path], cluster: raycluster.Cluster) -> None:
    """Ray's own CLI accepts the file; the same config again changes nothing (the replicas stay)."""
    url, out = deployed
    before = {r["replica_id"] for r in _replicas(cluster, "mlp") or []}
    proc = cluster.serve("deploy", out / "serve_config.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_until(lambda: len(_replicas(cluster, "mlp") or []) == 2, 120, "two RUNNING replicas")
    assert {r["replica_id"] for r in _replicas(cluster, "mlp") or []} == before and _ready(url)


def test_apply_errors(mlp_package: Path, tmp_path: Path) -> None:
    nothing = f"http://127.0.0.1:{raycluster.free_port()}"
    result = run_cli("deploy", mlp_package, "--target", "ray", "-o", tmp_path / "ray", "--apply", nothing)
    assert result.exit_code == 1 and f"no Ray dashboard answers at {nothing}" in result.output
    assert (tmp_path / "ray" / "serve_config.yaml").is_file()  # written before the apply; serve deploy it later
    wrong = run_cli("deploy", mlp_package, "--target", "k8s", "-o", tmp_path / "k8s", "--apply", nothing)
    assert wrong.exit_code == 2 and "--apply works with --target ray" in wrong.output


def test_killed_replica_is_replaced_under_load(served: str, cluster: raycluster.Cluster) -> None:
    """SIGKILL one replica's process while a client sends requests: Ray starts a new replica, at most a few
    requests fail (the client does not retry; the number is counted), and every request after that succeeds."""
    before = _replicas(cluster, "mlp") or []
    assert len(before) == 2
    victim = before[0]
    ours = {pid for node in cluster.nodes for pid in raycluster.session_pids(node.proc.pid)}
    assert victim["pid"] in ours  # a process of this test's cluster, never anything else on the machine
    load = Load(served)
    try:
        wait_until(lambda: load.ok() >= 20, 60, "20 answered requests before the fault")
        os.kill(victim["pid"], signal.SIGKILL)
        killed_at = len(load.statuses)

        def replaced() -> bool:
            replicas = _replicas(cluster, "mlp")
            return (replicas is not None and len(replicas) == 2
                    and victim["replica_id"] not in {r["replica_id"] for r in replicas})

        wait_until(replaced, 120, "Ray to replace the killed replica")
        recovered_at = len(load.statuses)
        wait_until(lambda: load.statuses[recovered_at:].count(200) >= 20, 60, "20 answers after the recovery")
    finally:
        statuses = load.stop()
    failed = [s for s in statuses if s != 200]
    print(f"replica killed: {len(failed)} of {len(statuses)} requests failed ({sorted(set(failed))}); "
          f"{recovered_at - killed_at} requests between the kill and the new replica RUNNING: {load.errors}")
    assert all(s == 200 for s in statuses[:killed_at])  # nothing failed before the fault
    assert len(failed) <= 5, f"{len(failed)} requests failed: {load.errors}"
    assert all(s == 200 for s in statuses[-20:])  # and the last ones all succeed


def _apply(cluster: raycluster.Cluster, package: Path, out: Path, port: int, *options: str) -> dict[str, Any]:
    result = run_cli("deploy", package, "--target", "ray", "-o", out, "--memory", "256Mi", "--port", port,
                     "--grpc-port", GRPC_PORT[0], "--apply", cluster.dashboard, "--json", *options)
    assert result.exit_code == 0, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def test_autoscales_from_measured_capacity(served: str, cluster: raycluster.Cluster, mlp_package: Path,
                                           tmp_path: Path) -> None:
    """Autoscaling from the measured capacity, with short delays: under load the application goes from 1 replica
    to 2 (the cluster's CPUs), and back to 1 once the load stops, no sooner than the downscale delay."""
    port = int(served.rsplit(":", 1)[1])
    up_s, down_s = 1, 4
    answer = _apply(cluster, mlp_package, tmp_path / "scaled", port, "--replicas", "1", "--max-replicas", "2",
                    "--cpu", "1", "--upscale-delay", str(up_s), "--downscale-delay", str(down_s))
    scaling = answer["autoscaling"]
    target = scaling["target_ongoing"]
    assert scaling["capacity"]["concurrency"] == target >= 1 and scaling["capacity"]["rps"] > 0
    config = yaml.safe_load((tmp_path / "scaled" / "serve_config.yaml").read_text())
    autoscaling = config["applications"][0]["deployments"][0]["autoscaling_config"]
    assert (autoscaling["target_ongoing_requests"], autoscaling["upscale_delay_s"],
            autoscaling["downscale_delay_s"]) == (target, up_s, down_s)
    assert "# Measured " in (tmp_path / "scaled" / "serve_config.yaml").read_text()
    wait_until(lambda: len(_replicas(cluster, "mlp") or []) == 1, 120, "the application down to its 1 minimum replica")

    load = Load(served, limit_s=120, clients=4 * target)  # 4x the target in flight: the autoscaler wants 4 replicas
    try:
        wait_until(lambda: len(_replicas(cluster, "mlp") or []) == 2, 120, "Ray to add a replica under load")
    finally:
        statuses = load.stop()
    stopped = time.monotonic()
    wait_until(lambda: len(_replicas(cluster, "mlp") or []) == 1, 120, "Ray to go back to 1 replica after the load")
    down_after = time.monotonic() - stopped
    print(f"autoscale: target {target} in flight per replica; 1 -> 2 replicas under {4 * target} clients "
          f"({len(statuses)} requests), back to 1 {down_after:.1f} s after the load stopped (delay {down_s} s)")
    assert statuses and all(s == 200 for s in statuses), load.errors[:5]  # scaling never fails a request
    assert down_after >= down_s - autoscaling["look_back_period_s"]  # not before the delay (less the metric window)


@pytest.fixture(scope="module")
def zk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zookeeper.ZooKeeper]:
    if not zookeeper.available():
        pytest.skip("ZooKeeper (Debian zookeeperd) is not installed")
    server = zookeeper.ZooKeeper(tmp_path_factory.mktemp("zk"), raycluster.free_port()).start()
    yield server
    server.stop()


def _registered(registry: str) -> list[dict[str, Any]] | None:
    result = run_cli("discover", registry, "--json")
    return json.loads(result.stdout)["instances"] if result.exit_code == 0 else None


def test_worker_raylet_killed_under_load(served: str, cluster: raycluster.Cluster, mlp_package: Path,
                                          tmp_path: Path, zk: zookeeper.ZooKeeper) -> None:
    """Each replica registers its node's proxy in ZooKeeper, so `discover` and `predict --discover` find it. Then
    SIGKILL the worker node's raylet while clients send requests: its replica and proxy go with it, requests
    keep succeeding through the head's proxy apart from a few (counted; no client or proxy retry), the dead
    replica's entry expires, and once the test starts the node again Ray brings the second replica back on it."""
    port = int(served.rsplit(":", 1)[1])
    registry = f"zk://{zk.hosts}/modelpack/ray"
    _apply(cluster, mlp_package, tmp_path / "fixed", port, "--replicas", "2", "--cpu", "1", "--register", registry)
    wait_until(lambda: len(_replicas(cluster, "mlp") or []) == 2, 120, "two RUNNING replicas")

    def registered(count: int) -> bool:
        listed = _registered(registry)
        return listed is not None and len(listed) == count

    wait_until(lambda: registered(2), 60, "both replicas' proxy entries in ZooKeeper")
    listed = _registered(registry) or []
    assert {(i["host"], i["port"], i["model"], i["via"]) for i in listed} == {("127.0.0.1", port, "mlp",
                                                                                 "ray-serve-proxy")}
    x = np.random.default_rng(3).standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    predicted = run_cli("predict", "--discover", registry, "--model", "mlp", "--input", tmp_path / "x.npy",
                        "--api-key", KEY, "--json")
    assert predicted.exit_code == 0, predicted.output
    body = json.loads(predicted.stdout)
    assert body["instance"] == f"127.0.0.1:{port}"
    np.testing.assert_allclose(np.asarray(body["outputs"]["logits"]["data"], dtype=np.float32),
                               _reference(mlp_package, x), rtol=1e-5, atol=1e-6)

    worker = cluster.nodes[-1]
    raylet = raycluster.process_named(worker.proc.pid, "raylet")
    assert raylet is not None, worker.log[-2000:]
    worker_id = next(n["node_id"] for n in cluster.alive_nodes() if not n["is_head_node"])
    assert worker_id in {r["node_id"] for r in _replicas(cluster, "mlp") or []}
    load = Load(served, clients=2)
    try:
        wait_until(lambda: load.ok() >= 20, 60, "20 answered requests before the fault")
        os.kill(raylet, signal.SIGKILL)
        killed_at = len(load.statuses)
        wait_until(lambda: worker_id not in {n["node_id"] for n in cluster.alive_nodes()}, 60,
                   "the GCS to declare the worker node dead")
        dead_at = len(load.statuses)
        wait_until(lambda: load.statuses[dead_at:].count(200) >= 20, 60, "20 answers from the head alone")
        wait_until(lambda: registered(1), 60, "the dead replica's entry to expire")
        worker.stop()  # what was left of the node's processes
        cluster.nodes.remove(worker)
        cluster.add_worker()

        def back() -> bool:
            replicas = _replicas(cluster, "mlp")
            return replicas is not None and len(replicas) == 2 and len({r["node_id"] for r in replicas}) == 2

        wait_until(back, 180, "Ray to bring the second replica back on the restarted node")
        recovered_at = len(load.statuses)
        wait_until(lambda: load.statuses[recovered_at:].count(200) >= 20, 60, "20 answers after the recovery")
        wait_until(lambda: registered(2), 60, "the new replica's entry")
    finally:
        statuses = load.stop()
    failed = [s for s in statuses if s != 200]
    print(f"worker raylet killed: {len(failed)} of {len(statuses)} requests failed ({sorted(set(failed))}); "
          f"{dead_at - killed_at} requests until the node was declared dead: {load.errors[:5]}")
    assert all(s == 200 for s in statuses[:killed_at])
    assert len(failed) <= 10, f"{len(failed)} requests failed: {load.errors}"
    assert all(s == 200 for s in statuses[-20:])
