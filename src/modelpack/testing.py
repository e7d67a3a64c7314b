"""Helpers for testing stage plugins and served packages, with the real pipeline and the real server.

    from modelpack.testing import run_stage, serve_in_process

    def test_my_stage(tmp_path):
        run = run_stage("my-stage", "model.keras", tmp_path / "out", eval_data="eval.npz", strength=3)
        assert run.record["status"] == "ok" and run.metrics["my_metric"] > 0.5

    def test_my_package(package_dir):
        with serve_in_process(package_dir) as client:
            assert client.get("/v2/health/ready").status_code == 200

`run_stage` runs a one-stage pipeline in this process (registered stages only: install your plugin,
even as `pip install -e .`). `serve_in_process` runs the server's ASGI app on its own event loop,
with its lifespan, and talks to it through httpx's ASGI transport: no socket, no port (httpx is a
test dependency, imported only here).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from .package.manifest import Manifest, StageRecord


@dataclass
class StageRun:
    """What one stage made: the package written, its manifest, and the stage's lineage record."""

    package: Path
    manifest: Manifest
    record: StageRecord

    @property
    def metrics(self) -> dict[str, Any]:
        found: dict[str, Any] = self.record["metrics"]
        return found


def run_stage(stage: str, model: str | Path, output: str | Path, *, eval_data: str | Path | None = None,
              force: bool = False, **params: Any) -> StageRun:
    """Run the registered stage `stage` over `model` into the package `output`, with options as keywords
    (`sparsity=0.5` for `--sparsity 0.5`); domain errors (UsageError, StageFailed, ...) propagate."""
    from .pipeline import PipelineSpec, StageSpec, run

    spec = PipelineSpec(input=Path(model), output=Path(output), stages=[StageSpec(stage, params)],
                        eval_data=Path(eval_data) if eval_data is not None else None, force=force)
    result = run(spec)
    manifest = json.loads((result.output / "modelpack.json").read_text())
    return StageRun(result.output, manifest, manifest["lineage"]["stages"][-1])


class InProcessClient:
    """The server's app on its own event loop thread, lifespan run; requests through httpx's ASGI transport."""

    def __init__(self, package: str | Path, **options: Any) -> None:
        import httpx

        from .serve.app import build_app
        from .serve.config import ServeConfig

        self.app = build_app(ServeConfig(package_dir=Path(package), **options))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._run(self.app.startup())
        transport = httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]  # App is an ASGI callable
        self.client = httpx.AsyncClient(transport=transport, base_url="http://modelpack")

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = self._run(self.client.request(method, path, **kwargs))
        return response

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def gather(self, requests: list[tuple[str, str, dict[str, Any]]]) -> list[Any]:
        """Send requests concurrently (one event loop, as a busy server sees them)."""
        async def all_of() -> list[Any]:
            return list(await asyncio.gather(*(self.client.request(m, p, **kw) for m, p, kw in requests)))

        found: list[Any] = self._run(all_of())
        return found

    def close(self) -> None:
        self._run(self.client.aclose())
        self._run(self.app.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextmanager
def serve_in_process(package: str | Path, **options: Any) -> Iterator[InProcessClient]:
    """A client of `modelpack serve PACKAGE` run in this process; `options` are ServeConfig fields."""
    client = InProcessClient(package, **options)
    try:
        yield client
    finally:
        client.close()
