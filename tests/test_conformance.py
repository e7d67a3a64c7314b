"""The server against OpenAPI documents, with schemathesis over a real socket.

Two documents: the one the server publishes (`/openapi.json`, generated from the route table), and the
Open Inference Protocol's own (`tests/data/open_inference_rest.yaml`), so conformance is not judged only
by our own description of the protocol. Runs are bounded by example counts, not by the clock.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import BIN
from servers import Process

pytestmark = pytest.mark.slow

OIP = Path(__file__).parent / "data" / "open_inference_rest.yaml"


@pytest.fixture(scope="module")
def server(mlp_package: Path):
    server = Process(mlp_package)
    yield server
    server.stop()


def _schemathesis(tmp_path: Path, location: str, *args: str, parameters: dict[str, str]) -> tuple[int, str]:
    config = tmp_path / "schemathesis.toml"
    config.write_text("[parameters]\n" + "".join(f'"{k}" = {json.dumps(v)}\n' for k, v in parameters.items()))
    done = subprocess.run([str(BIN / "schemathesis"), "--config-file", str(config), "run", location, "--no-color",
                           "--workers", "2", "--generation-database", "none", *args],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    return done.returncode, done.stdout + done.stderr


def test_schemathesis_all_checks_against_our_openapi(server, tmp_path: Path) -> None:
    """No 5xx, no answer outside the document (status, content type, headers, schema), 405 with Allow for
    undocumented methods, and schema-violating requests refused.

    `positive_data_acceptance` is left out: a tensor's data must hold prod(shape) values of its datatype, which
    JSON Schema cannot say, so a schema-valid request can still be one the server must refuse."""
    code, output = _schemathesis(
        tmp_path, f"{server.url}/openapi.json", "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        # Unloading the one model would leave every later request a 404 (test_repository unloads and loads).
        "--exclude-path", "/v2/repository/models/{name}/unload",
        "--max-examples", "40", parameters={"path.name": "mlp", "path.version": "1", "path.label": "stable"})
    assert code == 0, output[-6000:]
    tested = re.search(r"Tested: (\d+)", output)
    assert tested and int(tested[1]) == 23, output[-2000:]  # every route of the table but unload
    assert server.ready()  # and it is still serving


def test_open_inference_protocol_conformance(server, tmp_path: Path) -> None:
    """The protocol's own document: every request it describes gets no 5xx and answers in its schemas."""
    spec = tmp_path / "oip.yaml"
    spec.write_text(re.sub(r"\$\{(\w+)\}", r"{\1}", OIP.read_text()))  # its paths write ${MODEL_NAME}
    code, output = _schemathesis(
        tmp_path, str(spec), "--url", server.url, "--checks",
        "not_a_server_error,response_schema_conformance,content_type_conformance", "--max-examples", "40",
        parameters={"path.MODEL_NAME": "mlp", "path.MODEL_VERSION": "1"})
    assert code == 0, output[-6000:]
    # The two requests a run of it once answered 404 and 500:
    assert httpx.get(f"{server.url}/v2/").json()["name"] == "modelpack"
    answer = httpx.post(f"{server.url}/v2/models/mlp/versions/1/infer", json={
        "inputs": [{"name": "features", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    assert answer.status_code == 200 and answer.json()["outputs"][0]["shape"] == [1, 4]
