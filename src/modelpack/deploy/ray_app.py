"""modelpack's server as a Ray Serve deployment: `import_path: modelpack.deploy.ray_app:build` in a Serve config.

Each replica builds the very ASGI app `modelpack serve` runs (`serve.app.build_app`) and Ray's ASGI ingress hands
it every request the proxy routes here, so the signature checks, the batcher, the limits, the API keys and scopes
and the metrics are the server's own. The app is built in the replica (`__serve_build_asgi_app__`), never pickled,
and Ray runs its lifespan: the model loads and warms up before the replica takes traffic. Importing this module
imports ray; nothing else in modelpack imports it.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from ..errors import InputError, RequestError
from ..serve.app import App, build_app
from ..serve.config import ServeConfig
from .ray import DEPLOYMENT

ARGS = {"package": str, "api_keys_file": str, "max_batch_size": int, "runtime": str, "threads": int,
        "register": str, "proxy_port": int, "advertise_host": str}


def config_from_args(args: dict[str, Any]) -> ServeConfig:
    """The server's config from the Serve config's `args` (the API key is read later, in each replica)."""
    unknown = sorted(set(args) - set(ARGS))
    if unknown:
        raise ValueError(f"args: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(ARGS)}.")
    if not args.get("package"):
        raise ValueError("args.package: give the path of the package directory on every node.")
    for key, kind in ARGS.items():
        if args.get(key) is not None and not isinstance(args[key], kind):
            raise ValueError(f"args.{key}: expected {kind.__name__}, got {args[key]!r}.")
    if args.get("register") and not args.get("proxy_port"):
        raise ValueError("args.register: give args.proxy_port too, the HTTP proxy's port to register.")
    keys_file = args.get("api_keys_file")
    return ServeConfig(package_dir=Path(args["package"]), runtime=args.get("runtime"),
                       register=args.get("register"), port=args.get("proxy_port") or 8000,
                       advertise_host=args.get("advertise_host"),
                       max_batch_size=args.get("max_batch_size") or 32, threads=args.get("threads"),
                       api_keys_file=Path(keys_file) if keys_file else None)


class RegisteredApp(App):
    """The server app that, once started, registers this node's Ray proxy in ZooKeeper, and removes it on stop."""

    registration: Any = None

    async def startup(self) -> None:
        await super().startup()
        from ray.util import get_node_ip_address

        from ..discovery import Registration, instance_record, parse_zk

        assert self.config.register is not None and self.model is not None
        host = self.config.advertise_host or get_node_ip_address()  # type: ignore[no-untyped-call]
        registration = Registration(parse_zk(self.config.register))
        registration.connect()
        pkg = self.config.package()
        registration.register({**instance_record(
            host=host, port=self.config.port, model=pkg.name,
            version=pkg.version, signature=pkg.manifest["signature"]), "via": "ray-serve-proxy"})
        self.registration = registration

    async def shutdown(self) -> None:
        if self.registration is not None:
            self.registration.close()
        await super().shutdown()


# The KServe V2 gRPC methods Ray's gRPC proxy carries (the repository's load and unload are not: a Ray application
# is one package, and its replicas are Ray's to change). SERVICE is grpc_v2.SERVICE, which this module cannot import
# at its top without loading the message pool in Ray's proxy.
SERVICE = "inference.GRPCInferenceService"
GRPC_METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


def add_GRPCInferenceServiceServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802 - grpc's naming
    """The `grpc_servicer_functions` entry Ray's gRPC proxy imports: it declares the service's methods, and the proxy
    sends each call to the deployment's method of the same name. No request deserializer, on purpose: the proxy
    pickles the request for the replica, and modelpack's messages live in a private descriptor pool that pickle
    cannot name, so the proxy passes the request's bytes and the replica decodes them (as `serve --grpc-port`)."""
    import grpc

    handlers = {name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name)) for name in GRPC_METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class Serialized:
    """An answer already serialized: Ray's replica calls SerializeToString() on what a gRPC method returns."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name, which Ray calls
        return self.data


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class ModelpackServer:
    """One replica: modelpack's ASGI app over the package, built and started inside the replica's process."""

    def __init__(self, config: ServeConfig) -> None:
        # The key is taken from the replica's own environment so it is never part of the deployment's args.
        self.config = replace(config, api_key=os.environ.get("MODELPACK_API_KEY") or None)
        self.server: App | None = None
        self.grpc: Any = None  # serve.protocols.grpc_v2.GrpcV2 over the server's core, at the first gRPC call

    def __serve_build_asgi_app__(self) -> App:
        # not `self.app`: Ray's wrapper owns that name
        self.server = RegisteredApp(self.config) if self.config.register else build_app(self.config)
        return self.server

    def check_health(self) -> None:
        """Ray's health check: the server's readiness (model loaded and warmed, batcher running)."""
        if self.server is None or not self.server.core.ready:
            raise RuntimeError("modelpack server is not ready")


    async def _grpc(self, name: str, request: bytes, context: Any) -> Serialized:
        """One gRPC call from Ray's gRPC proxy, through the method `serve --grpc-port` runs: the same key check,
        scopes, inference path and metrics; a refused call gets the gRPC code `serve --grpc-port` gives it."""
        import grpc

        from ..serve.http2 import CODE_OF_STATUS, INVALID_ARGUMENT, Call
        from ..serve.protocols.grpc_v2 import GrpcV2

        if self.server is None or not self.server.core.ready:
            context.set_code(grpc.StatusCode.UNAVAILABLE)
            raise RuntimeError("modelpack server is not ready")
        if self.grpc is None:
            self.grpc = GrpcV2(self.server.core)
        method = self.grpc.methods[f"/{SERVICE}/{name}"]
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        start, status, key = time.perf_counter(), 200, None
        try:
            if method.scope is not None:
                key = self.grpc.admit(metadata.get("authorization"), method.scope, f"/{SERVICE}/{name}")
            return Serialized(await method.call(method.decode(request), Call(timeout_s=None, key=key)))
        except (RequestError, InputError) as exc:
            status = exc.status if isinstance(exc, RequestError) else 400
            code = CODE_OF_STATUS.get(status, INVALID_ARGUMENT)
            context.set_code(next(c for c in grpc.StatusCode if c.value[0] == code))
            context.set_details(str(exc))
            raise
        finally:
            self.grpc.observe(f"grpc {name}", status, time.perf_counter() - start, key)

    async def ServerLive(self, request: bytes, grpc_context: Any) -> Serialized:  # noqa: N802 - the RPC's name
        return await self._grpc("ServerLive", request, grpc_context)

    async def ServerReady(self, request: bytes, grpc_context: Any) -> Serialized:  # noqa: N802
        return await self._grpc("ServerReady", request, grpc_context)

    async def ModelReady(self, request: bytes, grpc_context: Any) -> Serialized:  # noqa: N802
        return await self._grpc("ModelReady", request, grpc_context)

    async def ServerMetadata(self, request: bytes, grpc_context: Any) -> Serialized:  # noqa: N802
        return await self._grpc("ServerMetadata", request, grpc_context)

    async def ModelMetadata(self, request: bytes, grpc_context: Any) -> Serialized:  # noqa: N802
        return await self._grpc("ModelMetadata", request, grpc_context)

    async def ModelInfer(self, request: bytes, grpc_context: Any) -> Serialized:  # noqa: N802
        return await self._grpc("ModelInfer", request, grpc_context)


def build(args: dict[str, Any]) -> Application:
    """The application builder `serve deploy` calls with the config's `args`."""
    application: Application = ModelpackServer.bind(config_from_args(args))  # type: ignore[attr-defined]
    return application
