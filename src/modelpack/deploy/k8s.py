"""The `k8s` target: Deployment, Service, HorizontalPodAutoscaler and PodDisruptionBudget, and a KEDA ScaledObject.

The HPA scales on the server's own load, not on CPU alone: the average per pod of `modelpack_inflight_requests`
and `modelpack_queue_depth` (Pods metrics, as a Prometheus metrics adapter exposes the /metrics gauges under their
own names), with CPU kept as a backstop. Its target of requests in flight per pod is one replica's capacity at the
p99 target, measured by `deploy` (capacity.py), as Ray's target_ongoing_requests is. `keda/scaledobject.yaml` is
the same policy for clusters that run KEDA instead of a metrics adapter: a prometheus trigger on the same gauges.
Apply one of the two: KEDA makes an HPA of its own for the Deployment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..package import Package
from . import DeployOptions, default_image, dump_yaml, k8s_name
from .capacity import Autoscaling, plan
from .docker import UID, serve_command

FILES = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml")
KEDA = "keda/scaledobject.yaml"  # in a subdirectory, so `kubectl apply -f DIR` does not apply it beside the HPA
INFLIGHT = "modelpack_inflight_requests"  # serve/metrics.py's gauges, as /metrics names them
QUEUE = "modelpack_queue_depth"


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


def _pods_metric(metric: str, per_pod: int) -> dict[str, Any]:
    return {"type": "Pods", "pods": {"metric": {"name": metric},
                                     "target": {"type": "AverageValue", "averageValue": str(per_pod)}}}


def _behavior(scaling: Autoscaling) -> dict[str, Any]:
    """Ray's delays as the HPA's stabilization windows: the load must hold that long before a change."""
    return {"scaleUp": {"stabilizationWindowSeconds": round(scaling.upscale_delay_s)},
            "scaleDown": {"stabilizationWindowSeconds": round(scaling.downscale_delay_s)}}


def scaled_object(pkg: Package, options: DeployOptions, scaling: Autoscaling) -> dict[str, Any]:
    """The HPA's policy as a KEDA ScaledObject: prometheus triggers on the same per-pod gauges."""
    name = k8s_name(pkg.name)
    pods = f'namespace="{options.namespace}",pod=~"{name}-.*"'

    def trigger(metric: str, query: str) -> dict[str, Any]:
        # KEDA divides the query's value by the threshold for the replica count (an AverageValue target).
        return {"type": "prometheus", "name": metric.removeprefix("modelpack_").replace("_", "-"),
                "metricType": "AverageValue",
                "metadata": {"serverAddress": options.prometheus, "query": query,
                             "threshold": str(scaling.target_ongoing)}}

    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels(pkg)},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                 "minReplicaCount": scaling.min_replicas, "maxReplicaCount": scaling.max_replicas,
                 "pollingInterval": max(1, min(30, round(scaling.upscale_delay_s / 2))),
                 "cooldownPeriod": round(scaling.downscale_delay_s),
                 "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(scaling)}},
                 "triggers": [trigger(INFLIGHT, f"sum({INFLIGHT}{{{pods}}})"),
                              trigger(QUEUE, f"sum({QUEUE}{{{pods}}})")]},
    }


def manifests(pkg: Package, options: DeployOptions, scaling: Autoscaling) -> dict[str, dict[str, Any]]:
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
                 "minReplicas": scaling.min_replicas, "maxReplicas": scaling.max_replicas,
                 "metrics": [_pods_metric(INFLIGHT, scaling.target_ongoing),
                             _pods_metric(QUEUE, scaling.target_ongoing),
                             {"type": "Resource", "resource": {
                                 "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
                 "behavior": _behavior(scaling)},
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta,
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    return dict(zip(FILES, (deployment, service, hpa, pdb)))


def write(pkg: Package, out: Path, options: DeployOptions, final: Path) -> list[str]:
    scaling = plan(pkg.root, options, out, autoscaled=True)
    for filename, doc in manifests(pkg, options, scaling).items():
        dump_yaml(out / filename, [doc])
    (out / "keda").mkdir()
    dump_yaml(out / KEDA, [scaled_object(pkg, options, scaling)])
    image = options.image or default_image(pkg.manifest)
    return [f"modelpack deploy {pkg.source} --target docker -o build/{k8s_name(pkg.name)}-image --build "
            f"--image {image}   # the image these manifests run",
            f"kubectl -n {options.namespace} create secret generic {secret_name(pkg)} "
            f"--from-literal=api-key=\"$MODELPACK_API_KEY\"",
            f"kubectl apply -f {final}   # the HPA needs a metrics adapter exposing {INFLIGHT} and {QUEUE} "
            f"(or apply {final / KEDA} with KEDA and delete hpa.yaml)"]
