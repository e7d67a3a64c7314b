"""The `kserve` target: an InferenceService running the package's server as a V2 custom predictor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ..package import Package
from . import DeployOptions, dump_yaml, k8s_name
from .k8s import container, labels, pod_extras, secret_name

KSERVE_PORT = 8080  # where KServe sends traffic to a custom container


def inference_service(pkg: Package, options: DeployOptions) -> dict[str, Any]:
    # KServe routes one port per predictor container: HTTP here. (A gRPC predictor names its one port h2c.)
    server = container(pkg, replace(options, grpc_port=None), KSERVE_PORT, name="kserve-container")
    server["ports"] = [{"containerPort": KSERVE_PORT, "protocol": "TCP"}]
    server["env"].append({"name": "PROTOCOL", "value": "v2"})
    server["readinessProbe"]["httpGet"]["port"] = KSERVE_PORT
    server["livenessProbe"]["httpGet"]["port"] = KSERVE_PORT
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": k8s_name(pkg.name), "namespace": options.namespace, "labels": labels(pkg),
                     "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}},
        "spec": {"predictor": {
            "minReplicas": options.replicas,
            "maxReplicas": max(options.max_replicas or options.replicas * 4, options.replicas),
            "containers": [server],
            **pod_extras(),
        }},
    }


def write(pkg: Package, out: Path, options: DeployOptions, final: Path) -> list[str]:
    dump_yaml(out / "inferenceservice.yaml", [inference_service(pkg, options)])
    name = k8s_name(pkg.name)
    return [f"kubectl -n {options.namespace} create secret generic {secret_name(pkg)} "
            f"--from-literal=api-key=\"$MODELPACK_API_KEY\"",
            f"kubectl apply -f {final / 'inferenceservice.yaml'}",
            f"curl -H \"Authorization: Bearer $MODELPACK_API_KEY\" http://<ingress>/v2/models/{pkg.name}"
            f"   # the V2 protocol; the isvc is '{name}'"]
