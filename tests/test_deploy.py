"""`modelpack deploy`: every generated file validated (Kubernetes schemas, Triton's ModelConfig, a live server)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from conftest import BIN, EXAMPLE, run_cli, wait_until
from servers import free_port

from modelpack.package import sha256_file

K8S_VERSION = "1.30.0"


def _deploy(pkg: Path, target: str, out: Path, *extra: str) -> dict:
    result = run_cli("deploy", pkg, "--target", target, "-o", out, "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_docker_context(digits_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "docker"
    result = _deploy(digits_package, "docker", out)
    assert set(result["files"]) >= {"Dockerfile", ".dockerignore", "docker-compose.yml", "package/modelpack.json",
                                    "package/model.onnx", "wheels/modelpack_toolkit-0.1.0-py3-none-any.whl"}
    steps = dict(_dockerfile(out / "Dockerfile"))
    instructions = [k for k, _ in _dockerfile(out / "Dockerfile")]
    assert re.fullmatch(r"--platform=linux/amd64 python:3\.\d+-slim", steps["FROM"])
    # modelpack comes from the context's own wheel, never from an index (where "modelpack" is another project).
    assert "pip install --no-index --find-links /wheels 'modelpack-toolkit[serve]==0.1.0'" in steps["RUN"]
    assert "--mount=type=bind,source=wheels,target=/wheels" in steps["RUN"] and "COPY wheels" not in steps["COPY"]
    assert re.fullmatch(r"\d+:\d+", steps["USER"]) and not steps["USER"].startswith("0:")
    assert instructions.index("USER") < instructions.index("CMD")
    assert steps["EXPOSE"] == "8000 8001"  # HTTP and KServe V2 gRPC
    assert "/v2/health/ready" in steps["HEALTHCHECK"]
    assert "MODELPACK_API_KEY" not in steps.get("ENV", "") and "api-key" not in steps["CMD"]
    assert ".git" in (out / ".dockerignore").read_text()
    assert sha256_file(out / "package" / "model.onnx") == sha256_file(digits_package / "model.onnx")
    wheels = {p.name.split("-")[0].lower() for p in (out / "wheels").glob("*.whl")}
    assert {"onnxruntime", "numpy", "uvicorn", "hpack", "orjson"} <= wheels and "grpcio" not in wheels and "tensorflow" not in wheels
    compose = yaml.safe_load((out / "docker-compose.yml").read_text())
    (service,) = compose["services"].values()
    assert service["build"]["context"] == "." and service["ports"] == ["8000:8000", "8001:8001"]
    assert service["environment"] == {"MODELPACK_API_KEY": "${MODELPACK_API_KEY:-}"} and service["read_only"]
    assert any(step.endswith("docker compose up") for step in result["next_steps"])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_docker_context_installs_offline_and_serves(digits_package: Path, tmp_path: Path) -> None:
    """The context alone is enough: a fresh venv runs the Dockerfile's pip command with no index, then its CMD."""
    import sys

    out = tmp_path / "docker"
    _deploy(digits_package, "docker", out)
    steps = dict(_dockerfile(out / "Dockerfile"))
    pip_args = shlex.split(steps["RUN"].split("&&")[0])
    pip_args = pip_args[pip_args.index("pip") + 1:]
    pip_args[pip_args.index("/wheels")] = str(out / "wheels")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no find-links or extra index from this machine's pip.conf
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *pip_args, "--quiet",
                          "--disable-pip-version-check"], capture_output=True, text=True, env=env)
    assert pip.returncode == 0, pip.stderr[-3000:]

    cmd = json.loads(steps["CMD"])
    port, grpc_port = free_port(), free_port()
    cmd = [str(venv / "bin" / cmd[0])] + [str(out / "package") if a.startswith("/models/") else a for a in cmd[1:]]
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--grpc-port") + 1] = str(grpc_port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"
    proc = subprocess.Popen(cmd, env={**env, "MODELPACK_API_KEY": "k3y"}, stderr=subprocess.PIPE)
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "the server exited"
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 120, "the image's CMD to serve")
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/model").status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/v2/models/model", headers={"Authorization": "Bearer k3y"}).is_success
        import tritonclient.grpc as triton

        assert triton.InferenceServerClient(f"127.0.0.1:{grpc_port}").is_model_ready(
            "model", headers={"authorization": "Bearer k3y"})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # What ran is the wheel in the context: its modelpack, not this checkout's.
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import modelpack; print(modelpack.__file__)"],
                           capture_output=True, text=True, env=env)
    assert where.stdout.startswith(str(venv)), where


@pytest.mark.slow  # seconds: left out of make test-fast
def test_docker_requirement_and_the_tensorflow_extra(tmp_path: Path) -> None:
    pkg = tmp_path / "tfl"
    assert run_cli("optimize", EXAMPLE / "model.keras", "-o", pkg, "-q", "export", "--format", "tflite").exit_code == 0
    out = tmp_path / "docker"
    _deploy(pkg, "docker", out, "--requirement", "modelpack-toolkit[serve,tf]==0.1.0")
    assert "pip install 'modelpack-toolkit[serve,tf]==0.1.0'" in (out / "Dockerfile").read_text()
    assert not (out / "wheels").exists()  # an index install brings no wheels
    from modelpack.deploy.docker import extras
    from modelpack.package import open_any

    with open_any(pkg) as opened:
        assert extras(opened) == "serve,tf"  # no ONNX to serve: the image needs TensorFlow


def test_docker_build_says_what_to_run_without_an_engine(digits_package: Path, tmp_path: Path) -> None:
    env_path = os.environ["PATH"]
    os.environ["PATH"] = str(BIN)  # no docker on this PATH, whatever the machine has
    try:
        result = run_cli("deploy", digits_package, "--target", "docker", "-o", tmp_path / "ctx", "--build",
                         "--image", "me/digits:7")
    finally:
        os.environ["PATH"] = env_path
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"run: docker build -t me/digits:7 {tmp_path / 'ctx'}" in message
    assert "buildah and podman are not on PATH" in message and "buildah bud --isolation chroot" in message
    assert (tmp_path / "ctx" / "Dockerfile").is_file()  # the context is ready
    os.environ["PATH"] = str(BIN)
    try:
        named = run_cli("deploy", digits_package, "--target", "docker", "-o", tmp_path / "ctx2", "--builder", "podman")
        bad_push = run_cli("deploy", digits_package, "--target", "docker", "-o", tmp_path / "ctx3", "--push",
                           "oci://registry.example.com/Digits")
    finally:
        os.environ["PATH"] = env_path
    assert named.exit_code == 1 and "--builder podman: podman is not on PATH" in named.output
    assert bad_push.exit_code == 2 and "--push 'oci://registry.example.com/Digits'" in bad_push.output
    assert not (tmp_path / "ctx3").exists()  # refused before the context is written


def test_kubernetes_manifests_validate(digits_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    _deploy(digits_package, "k8s", out, "--replicas", "3", "--namespace", "ml", "--cpu", "500m", "--memory",
            "512Mi", "--image", "registry.example/digits:1")
    docs = {f.name: yaml.safe_load(f.read_text()) for f in sorted(out.glob("*.yaml"))}
    assert set(docs) == {"deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"}
    for name, doc in docs.items():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any schema error
        assert doc["metadata"]["namespace"] == "ml", name
    deployment = docs["deployment.yaml"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example/digits:1"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"},
                                      "limits": {"cpu": "500m", "memory": "512Mi"}}
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["runAsUser"] != 0 and security["capabilities"]["drop"] == ["ALL"]
    key = container["env"][0]
    assert key["name"] == "MODELPACK_API_KEY" and key["valueFrom"]["secretKeyRef"]["name"] == "model-api-key"
    assert docs["hpa.yaml"]["spec"]["minReplicas"] == 3 and docs["hpa.yaml"]["spec"]["maxReplicas"] == 12
    assert docs["service.yaml"]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", 8000), ("grpc", 8001)]
    assert container["command"][-2:] == ["--grpc-port", "8001"]
    assert [p["targetPort"] for p in docs["service.yaml"]["spec"]["ports"]] == ["http", "grpc"]
    assert docs["pdb.yaml"]["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    broken = dict(deployment, spec={**deployment["spec"], "replicas": "three"})
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does catch mistakes
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


DATA = Path(__file__).parent / "data"


@pytest.mark.slow  # seconds: left out of make test-fast
def test_autoscalers_from_measured_capacity_validate(mlp_package: Path, tmp_path: Path) -> None:
    """The HPA scales on the server's in-flight and queue-depth gauges at the measured per-replica target, the KEDA
    ScaledObject on the same gauges through Prometheus; both pass their published schemas (vendored in tests/data)."""
    import jsonschema

    out = tmp_path / "k8s"
    result = run_cli("deploy", mlp_package, "--target", "k8s", "-o", out, "--replicas", "1", "--max-replicas", "5",
                     "--p99-ms", "250", "--upscale-delay", "15", "--namespace", "ml", "--json")
    assert result.exit_code == 0, result.output
    scaling = json.loads(result.stdout)["autoscaling"]
    capacity = scaling["capacity"]
    assert capacity["p99_target_ms"] == 250 and capacity["concurrency"] >= 1 and capacity["rps"] > 0
    assert capacity["p99_ms"] <= 250 and capacity["levels"][0]["concurrency"] == 1
    assert scaling["target_ongoing"] == capacity["concurrency"]
    assert (scaling["upscale_delay_s"], scaling["downscale_delay_s"]) == (15, 150)  # down: 10 x up
    hpa = yaml.safe_load((out / "hpa.yaml").read_text())
    keda = yaml.safe_load((out / "keda" / "scaledobject.yaml").read_text())
    hpa_schema = json.loads((DATA / "hpa-autoscaling-v2.schema.json").read_text())
    keda_schema = json.loads((DATA / "keda-scaledobject.schema.json").read_text())
    jsonschema.validate(hpa, hpa_schema)
    jsonschema.validate(keda, keda_schema)
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    target = str(scaling["target_ongoing"])
    pods = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert pods == {"modelpack_inflight_requests": {"type": "AverageValue", "averageValue": target},
                    "modelpack_queue_depth": {"type": "AverageValue", "averageValue": target}}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    assert hpa["spec"]["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 15
    spec = keda["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (1, 5, 150)
    assert [t["metadata"]["threshold"] for t in spec["triggers"]] == [target, target]
    assert all(t["type"] == "prometheus" and 'namespace="ml"' in t["metadata"]["query"] for t in spec["triggers"])
    # The gauges the autoscalers read are the ones the server exposes.
    served = run_cli("serve", mlp_package, "--get", "/metrics")
    assert served.exit_code == 0, served.output
    for name in pods:
        assert f"# TYPE {name} gauge" in served.output
    assert "modelpack_inflight_requests{" in served.output
    # The schemas do catch mistakes.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**hpa, "spec": {**hpa["spec"], "metrics": [{"type": "Pods", "pods": {}}]}}, hpa_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**keda, "spec": {**spec, "triggers": [{"metadata": {}}]}}, keda_schema)

    fixed = run_cli("deploy", mlp_package, "--target", "k8s", "-o", tmp_path / "fixed", "--no-measure", "--json")
    assert fixed.exit_code == 0 and json.loads(fixed.stdout)["autoscaling"]["capacity"] is None


def test_kserve_inference_service(digits_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "kserve"
    _deploy(digits_package, "kserve", out)
    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"])
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    container = predictor["containers"][0]
    assert container["name"] == "kserve-container"
    assert {"name": "PROTOCOL", "value": "v2"} in container["env"]
    assert container["ports"][0]["containerPort"] == 8080 and container["command"][-1] == "8080"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    # The predictor is a pod spec plus replica bounds: validate that part against the Kubernetes schema.
    pod_spec = {k: v for k, v in predictor.items() if k not in ("minReplicas", "maxReplicas")}
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod_spec},
                                 K8S_VERSION, strict=True)


def test_triton_repository(digits_package: Path, tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out = tmp_path / "triton"
    _deploy(digits_package, "triton", out, "--max-batch-size", "16")
    config = text_format.Parse((out / "model" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "model" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("image", model_config_pb2.TYPE_FP32, [8, 8, 1])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("probs", model_config_pb2.TYPE_FP32, [10])]
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert sha256_file(out / "model" / "1" / "model.onnx") == sha256_file(digits_package / "model.onnx")


def test_triton_fixed_batch_and_versions(tmp_path: Path) -> None:
    import onnx
    from conftest import make_onnx_mlp

    fixed = make_onnx_mlp(tmp_path / "fixed.onnx")
    proto = onnx.load(str(fixed))
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(proto, str(fixed))
    pkg = tmp_path / "pkg"
    assert run_cli("optimize", fixed, "-o", pkg, "-q", "--model-version", "2.1", "export").exit_code == 0
    refused = run_cli("deploy", pkg, "--target", "triton", "-o", tmp_path / "t")
    assert refused.exit_code == 2 and "--model-version N" in refused.output and not (tmp_path / "t").exists()
    _deploy(pkg, "triton", tmp_path / "t", "--model-version", "3")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((tmp_path / "t" / "fixed" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [4, 16]
    assert not config.HasField("dynamic_batching")
    assert (tmp_path / "t" / "fixed" / "3" / "model.onnx").is_file()


@pytest.mark.slow
def test_tfserving_layout_loads_in_tensorflow(tmp_path: Path, digits_package: Path) -> None:
    pkg = tmp_path / "sm"
    assert run_cli("optimize", EXAMPLE / "model.keras", "-o", pkg, "-q", "--name", "digits",
                   "export", "--format", "savedmodel").exit_code == 0
    out = tmp_path / "tfs"
    result = _deploy(pkg, "tfserving", out)
    assert "digits/1/saved_model.pb" in result["files"] and "models.config" in result["files"]
    config = (out / "models.config").read_text()
    assert re.search(r'config \{\s*name: "digits"\s*base_path: "/models/digits"\s*model_platform: "tensorflow"\s*\}',
                     config)
    assert "tensorflow/serving" in result["next_steps"][0] and os.access(out / "serve.sh", os.X_OK)
    from modelpack.frameworks import tf as tfw

    loaded = tfw.tensorflow().saved_model.load(str(out / "digits" / "1"))
    assert "serving_default" in loaded.signatures
    refused = run_cli("deploy", digits_package, "--target", "tfserving", "-o", tmp_path / "none")
    assert refused.exit_code == 2 and "export --format savedmodel" in refused.output


def test_output_is_atomic_and_guarded(digits_package: Path, tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    _deploy(digits_package, "k8s", out)
    again = run_cli("deploy", digits_package, "--target", "k8s", "-o", out)
    assert again.exit_code == 2 and "--force" in again.output
    _deploy(digits_package, "k8s", out, "--force", "--replicas", "5")
    assert yaml.safe_load((out / "deployment.yaml").read_text())["spec"]["replicas"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["k8s"]  # no staging directories left behind
    assert run_cli("deploy", digits_package, "--target", "k8s", "-o", tmp_path / "x", "--build").exit_code == 2


def test_image_pins_only_what_modelpack_needs(tmp_path: Path, monkeypatch) -> None:
    """The wheels are pinned to the versions installed here, for modelpack's own dependency closure only. A
    second copy of a package elsewhere on sys.path (setuptools vendors its own `packaging`) is left unpinned
    rather than pinned twice, which pip cannot resolve."""
    from importlib import metadata

    from modelpack.deploy.wheels import _constraints

    other = tmp_path / "site" / "packaging-1.0.dist-info"
    other.mkdir(parents=True)
    (other / "METADATA").write_text("Metadata-Version: 2.1\nName: packaging\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    pins = dict(line.split("==") for line in _constraints("serve").split())
    assert pins["numpy"] == metadata.version("numpy") and pins["uvicorn"] == metadata.version("uvicorn")
    assert "packaging" not in pins  # two versions visible: not pinned
    assert "pytest" not in pins and "tensorflow" not in pins  # installed here, not needed by the image


def _repository(mlp_package: Path, root: Path) -> Path:
    """A model repository directory of two models from the MLP package: a/1, b/1 and b/2."""
    import shutil

    for model, version in (("a", 1), ("b", 1), ("b", 2)):
        shutil.copytree(mlp_package, root / model / str(version))
    return root


@pytest.mark.slow  # seconds: left out of make test-fast
def test_ray_config_for_a_repository(mlp_package: Path, tmp_path: Path) -> None:
    """`deploy REPO --target ray`: the args carry the repository's path (not a copy), the capacity is measured on
    the default model and the config says which; a broken repository exits 2 with one line and writes nothing."""
    import shutil

    from modelpack.deploy.ray_app import config_from_args

    repo = _repository(mlp_package, tmp_path / "repo")
    (tmp_path / "repo.toml").write_text('default_model = "b"\n[models.a]\nsource = "repo/a"\n'
                                        '[models.b]\nsource = "repo/b"\npolicy = "all"\ndefault = 1\n')
    out = tmp_path / "ray"
    answer = _deploy(tmp_path / "repo.toml", "ray", out, "--replicas", "1", "--max-replicas", "3",
                     "--p99-ms", "250")
    text = (out / "serve_config.yaml").read_text()
    config = yaml.safe_load(text)
    (app,) = config["applications"]
    assert app["name"] == "repo" and app["import_path"] == "modelpack.deploy.ray_app:build"
    assert app["args"]["repository"] == str((tmp_path / "repo.toml").absolute()) and "package" not in app["args"]
    assert (app["args"]["memory_budget_mb"], app["args"]["poll_s"]) == (None, None)
    assert "# Capacity measured on model b version 1 (the repository's default model" in text
    scaling = app["deployments"][0]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 3)
    assert scaling["target_ongoing_requests"] == answer["autoscaling"]["target_ongoing"] >= 1
    assert answer["files"] == ["README.md", "capacity.json", "serve_config.yaml"]  # the repository is not copied
    served = config_from_args(app["args"])  # what each replica serves: the whole repository
    assert served.repository == served.package_dir == tmp_path / "repo.toml"

    fixed = _deploy(repo, "ray", tmp_path / "fixed", "--replicas", "2")
    fixed_config = yaml.safe_load((tmp_path / "fixed" / "serve_config.yaml").read_text())
    assert fixed_config["applications"][0]["deployments"][0]["num_replicas"] == 2
    assert fixed_config["applications"][0]["args"]["repository"] == str(repo.absolute())
    assert "autoscaling" not in fixed
    _deploy(repo, "ray", tmp_path / "defaults", "--replicas", "1", "--max-replicas", "2", "--no-measure")
    defaults = (tmp_path / "defaults" / "serve_config.yaml").read_text()
    assert "# Not measured (--no-measure)" in defaults and "Capacity measured on" not in defaults
    with pytest.raises(ValueError, match="goes with args.repository"):
        config_from_args({"package": str(mlp_package), "poll_s": 1.0})

    (repo / "b" / "2" / "model.onnx").write_bytes(b"not the model")  # a version that fails its checksums
    broken = run_cli("deploy", repo, "--target", "ray", "-o", tmp_path / "broken")
    assert broken.exit_code != 0 and "model b version 2" in broken.output and not (tmp_path / "broken").exists()
    (repo / "c").mkdir()  # a model folder with no versions
    empty = run_cli("deploy", repo, "--target", "ray", "-o", tmp_path / "broken")
    assert empty.exit_code == 2 and "no versions in it" in empty.output and not (tmp_path / "broken").exists()
    assert len(empty.output.strip().splitlines()) == 1
    other = run_cli("deploy", tmp_path / "repo.toml", "--target", "k8s", "-o", tmp_path / "k8s")
    assert other.exit_code == 2 and "deploys with --target ray only" in other.output
    (repo / "c").rmdir()
    shutil.copytree(mlp_package, repo / "b" / "2", dirs_exist_ok=True)  # whole again
    _deploy(repo, "ray", tmp_path / "zk", "--register", "zk://127.0.0.1:1/x", "--port", "9000")
    registered = yaml.safe_load((tmp_path / "zk" / "serve_config.yaml").read_text())["applications"][0]["args"]
    assert (registered["register"], registered["proxy_port"]) == ("zk://127.0.0.1:1/x", 9000)
    assert config_from_args(registered).register == "zk://127.0.0.1:1/x"
