"""The `k8s` target: Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..package import Package
from . import DeployOptions, default_image, dump_yaml, k8s_name
from .docker import UID, serve_command

FILES = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml")


def labels(pkg: Package) -> dict[str, str]:
    return {"app.kubernetes.io/name": k8s_name(pkg.name), "app.kubernetes.io/version": pkg.version,
            "app.kubernetes.io/managed-by": "modelpack"}


def secret_name(pkg: Package) -> str:
    return f"{k8s_name(pkg.name)}-api-key"


def container(pkg: Package, options: DeployOptions, port: int, name: str = "server") -> dict[str, Any]:
    """The serving container, locked down: non-root, read-only root filesystem, no capabilities."""
    def probe(path: str, delay: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, "initialDelaySeconds": delay, "periodSeconds": 10,
                "timeoutSeconds": 3, "failureThreshold": 3}

    return {
        "name": name,
        "image": options.image or default_image(pkg.manifest),
        "imagePullPolicy": "IfNotPresent",
        "command": serve_command(f"/models/{pkg.name}", port, options.grpc_port),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"},
                  *([{"name": "grpc", "containerPort": options.grpc_port, "protocol": "TCP"}]
                    if options.grpc_port else [])],
        "env": [{"name": "MODELPACK_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": secret_name(pkg), "key": "api-key"}}}],
        "readinessProbe": probe("/v2/health/ready", 2),
        "livenessProbe": probe("/v2/health/live", 10),
        "resources": {"requests": {"cpu": options.cpu, "memory": options.memory},
                      "limits": {"cpu": options.cpu, "memory": options.memory}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }


def pod_extras() -> dict[str, Any]:
    return {"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "automountServiceAccountToken": False,
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]}


def manifests(pkg: Package, options: DeployOptions) -> dict[str, dict[str, Any]]:
    name = k8s_name(pkg.name)
    meta = {"name": name, "namespace": options.namespace, "labels": labels(pkg)}
    selector = {"app.kubernetes.io/name": name}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(pkg)},
                "spec": {"containers": [container(pkg, options, options.port)],
                         "terminationGracePeriodSeconds": 30, **pod_extras()},
            },
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                           *([{"name": "grpc", "port": options.grpc_port, "targetPort": "grpc", "protocol": "TCP",
                               "appProtocol": "kubernetes.io/h2c"}] if options.grpc_port else [])]},
    }
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                 "minReplicas": options.replicas,
                 "maxReplicas": max(options.max_replicas or options.replicas * 4, options.replicas),
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]},
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    return dict(zip(FILES, (deployment, service, hpa, pdb)))


def write(pkg: Package, out: Path, options: DeployOptions, final: Path) -> list[str]:
    for filename, doc in manifests(pkg, options).items():
        dump_yaml(out / filename, [doc])
    image = options.image or default_image(pkg.manifest)
    return [f"modelpack deploy {pkg.source} --target docker -o build/{k8s_name(pkg.name)}-image --build "
            f"--image {image}   # the image these manifests run",
            f"kubectl -n {options.namespace} create secret generic {secret_name(pkg)} "
            f"--from-literal=api-key=\"$MODELPACK_API_KEY\"",
            f"kubectl apply -f {final}"]
