"""`modelpack deploy`: write what Docker, Kubernetes, KServe, Triton, TF Serving or Ray Serve need to run a package."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from . import render, want_json


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--target", type=click.Choice(["docker", "k8s", "kserve", "triton", "tfserving", "ray"]), required=True,
              help="What to generate.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Directory to write.")
@click.option("--image", help="Container image (docker, k8s, kserve).  [default: NAME:VERSION]")
@click.option("--replicas", type=click.IntRange(1, 1000), default=2, show_default=True,
              help="Replicas; the autoscaler's minimum (k8s, kserve, ray).")
@click.option("--max-replicas", type=click.IntRange(1, 10000), help="The autoscaler's maximum.  [default: 4 x replicas]")
@click.option("--namespace", default="default", show_default=True, help="Kubernetes namespace.")
@click.option("--cpu", default="1", show_default=True, help="CPU request and limit per replica (ray: num_cpus).")
@click.option("--memory", default="1Gi", show_default=True, help="Memory request and limit per replica (ray: memory).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True,
              help="The server's port (ray: the HTTP proxy's).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="ray: the address Ray Serve's HTTP proxy binds; 0.0.0.0 serves other hosts.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="The server's KServe V2 gRPC port (docker, k8s); 0 for HTTP only. KServe routes HTTP only.")
@click.option("--max-batch-size", type=click.IntRange(1, 65536), default=32, show_default=True,
              help="Triton's max_batch_size; ray: the largest batch each replica's batcher forms.")
@click.option("--model-version", help="Integer version for Triton and TF Serving.  [default: the package's]")
@click.option("--requirement", help="docker: pip-install this from an index instead of the wheels put in the context "
                                   "(e.g. a wheel URL).")
@click.option("--platform", type=click.Choice(["linux/amd64", "linux/arm64"]), default="linux/amd64", show_default=True,
              help="docker: the image's platform; the context's wheels are downloaded for it.")
@click.option("--build", is_flag=True, help="docker: build the image (with docker, or daemonless with buildah or podman).")
@click.option("--builder", type=click.Choice(["auto", "docker", "buildah", "podman"]), default="auto", show_default=True,
              help="docker: build with this (implies --build); auto is docker when an engine answers, else buildah, "
                   "else podman.")
@click.option("--push", "push_to", metavar="oci://HOST/REPO[:TAG]",
              help="docker: build, then push the image there with the login `modelpack push` uses.")
@click.option("--plain-http", is_flag=True, help="--push: speak HTTP, not HTTPS, to the registry (loopback always does).")
@click.option("--apply", "apply_to", metavar="http://HEAD:8265",
              help="ray: deploy to the cluster with this dashboard (as `serve deploy` does) and wait until the "
                   "application is RUNNING and ready.")
@click.option("--p99-ms", type=click.FloatRange(0.1, 600000), default=100.0, show_default=True,
              help="ray, k8s: the p99 one replica must hold; its capacity at that p99 (measured here, in-process, "
                   "for a few seconds) sets the autoscaler's target of requests in flight per replica.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="ray, k8s: measure one replica's capacity for the autoscaler; --no-measure writes defaults.")
@click.option("--peak-rps", type=click.FloatRange(0.001, None),
              help="ray, k8s: the traffic to plan for; --max-replicas defaults to it over one replica's capacity.")
@click.option("--upscale-delay", type=click.FloatRange(0, 86400),
              help="ray, k8s: seconds over target before adding replicas.  [default: 3 x a replica's start, >= 10]")
@click.option("--downscale-delay", type=click.FloatRange(0, 86400),
              help="ray, k8s: seconds under target before removing replicas.  [default: 10 x the upscale delay, >= 60]")
@click.option("--register", metavar="zk://HOST:PORT/PATH",
              help="ray: each replica registers its node's HTTP proxy there (as serve --register does), for "
                   "discover and predict --discover.")
@click.option("--prometheus", default="http://prometheus.monitoring.svc:9090", show_default=True,
              help="k8s: the Prometheus server KEDA's ScaledObject queries.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def deploy(ctx: click.Context, package: Path, target: str, output: Path, image: str | None, replicas: int,
           max_replicas: int | None, namespace: str, cpu: str, memory: str, port: int, host: str, grpc_port: int,
           max_batch_size: int, model_version: str | None, requirement: str | None, platform: str, build: bool,
           builder: str, push_to: str | None, plain_http: bool, apply_to: str | None, p99_ms: float, measure: bool,
           peak_rps: float | None, upscale_delay: float | None, downscale_delay: float | None, register: str | None,
           prometheus: str,
           force: bool, as_json: bool) -> None:
    """Write a deployment for a package: Docker, Kubernetes, KServe, Triton, TF Serving or Ray Serve."""
    from ..deploy import DeployOptions
    from ..deploy import deploy as write_deployment
    from ..errors import UsageError

    if as_json:
        want_json(ctx)
    named_builder = ctx.get_parameter_source("builder") is not click.core.ParameterSource.DEFAULT
    build = build or push_to is not None or named_builder  # --push and --builder each mean: build it
    if build and target != "docker":
        which = "--push" if push_to else "--builder" if named_builder else "--build"
        raise UsageError(f"{which} works with --target docker.")
    if push_to is not None:
        from ..oci import Reference

        Reference.parse(push_to, "--push")  # a bad reference fails before the build, not after it
    if apply_to is not None and target != "ray":
        raise UsageError("--apply works with --target ray.")
    if register is not None:
        from ..discovery import parse_zk

        if target != "ray":
            raise UsageError("--register works with --target ray (modelpack serve --register registers a server).")
        parse_zk(register)
    options = DeployOptions(image=image, replicas=replicas, max_replicas=max_replicas, namespace=namespace, cpu=cpu,
                            memory=memory, port=port, grpc_port=grpc_port or None, max_batch_size=max_batch_size, model_version=model_version,
                            requirement=requirement, platform=platform, host=host, measure=measure, p99_ms=p99_ms,
                            peak_rps=peak_rps, upscale_delay_s=upscale_delay, downscale_delay_s=downscale_delay,
                            prometheus=prometheus, register=register)
    result = write_deployment(package, target, output, options, force=force)
    scaling = _autoscaling(output)
    built = None
    if build:
        from ..deploy import image as images

        def log(line: str) -> None:
            render.err.print(line, markup=False, highlight=False, soft_wrap=True)

        built = images.build(output, result.image, builder, log=log)
        if push_to is not None:
            built = images.push(built, push_to, log=log, plain_http=plain_http)
    steps = result.next_steps[1:] if built else result.next_steps  # built: no `docker build` left to run
    applied_s = None
    if apply_to is not None:
        from ..deploy import ray as ray_target

        applied_s = ray_target.apply(output, apply_to)
        steps = result.next_steps[2:]  # deployed and RUNNING: only the request is left
    if as_json:
        render.print_json({"status": "ok", "target": target, "output": str(output), "files": result.files,
                           "next_steps": steps,
                           **({"image": dataclasses.asdict(built)} if built else {}),
                           **({"autoscaling": scaling} if scaling else {}),
                           **({"applied": {"address": apply_to, "seconds_to_ready": round(applied_s, 2)}}
                              if applied_s is not None else {})})
        return
    render.out.print(f"[bold green]{target}:[/] {output}  ({', '.join(result.files[:6])}"
                     f"{', …' if len(result.files) > 6 else ''})")
    if scaling:
        render.out.print(f"[bold green]autoscaling:[/] {scaling['min_replicas']}-{scaling['max_replicas']} replicas, "
                         f"target {scaling['target_ongoing']} requests in flight per replica, up after "
                         f"{scaling['upscale_delay_s']:g} s, down after {scaling['downscale_delay_s']:g} s")
        for line in scaling["derivation"]:
            render.out.print(f"  {line}", markup=False, highlight=False)
    for step in steps:
        render.out.print(f"  {step}")
    if applied_s is not None:
        render.out.print(f"[bold green]applied:[/] RUNNING and ready on {apply_to} in {applied_s:.1f} s")
    if built is None:
        return
    render.out.print(f"[bold green]image:[/] {built.name}  built with {built.builder}, {render.human_size(built.size)} "
                     f"({built.size:,} bytes)  id {built.id}" + (f"  digest {built.digest}" if built.digest else ""))
    if built.pushed:
        render.out.print(f"[bold green]pushed:[/] {built.pushed.reference}  digest {built.pushed.digest}")


def _autoscaling(output: Path) -> dict[str, Any] | None:
    """The autoscaler's settings and their derivation, as the target wrote them (ray, k8s), else None."""
    import json

    from ..deploy.capacity import CAPACITY_FILE

    path = output / CAPACITY_FILE
    if not path.is_file():
        return None
    found: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return found
