"""`serve`'s options come from `ServeConfig` once, and `modelpack serve` and `create_app` share one pre-flight."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import run_cli

import modelpack
from modelpack.cli.serve import serve
from modelpack.errors import UsageError
from modelpack.serve.config import ServeConfig


def test_every_option_field_is_a_serve_option_with_the_fields_default() -> None:
    params = {p.name: p for p in serve.params}
    fields = [f for f in dataclasses.fields(ServeConfig) if "cli" in f.metadata]
    assert len(fields) >= 30
    for field in fields:
        param = params[field.name]
        assert param.help == field.metadata["cli"].help  # type: ignore[attr-defined]
        if field.default not in (None, False, ()):
            assert param.default == field.default, field.name
    # Only the package and --get are the command's own; the rest are the config's, in its order.
    assert [p.name for p in serve.params] == ["package", *(f.name for f in fields), "get_path"]
    assert {"package_dir", "quiet", "repository"}.isdisjoint(params)


def test_a_range_and_a_repeatable_option_from_the_field(mlp_package: Path) -> None:
    result = run_cli("serve", mlp_package, "--port", "70000")
    assert result.exit_code == 2 and "--port" in result.output and "65535" in result.output
    result = run_cli("serve", mlp_package, "--model-rate-limit", "model=2/s", "--model-rate-limit", "*=5/x",
                     "--get", "/v2/health/ready")
    assert result.exit_code == 2 and "--model-rate-limit '*=5/x'" in result.output, result.output


def test_the_command_and_create_app_share_one_preflight_and_name_options_their_way(mlp_package: Path,
                                                                                  tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    result = run_cli("serve", mlp_package, "--ssl-certfile", cert)
    assert result.exit_code == 2 and "--ssl-certfile and --ssl-keyfile go together" in result.output
    with pytest.raises(UsageError, match="^ssl_certfile and ssl_keyfile go together"):
        modelpack.create_app(mlp_package, ssl_certfile=cert)
    result = run_cli("serve", mlp_package, "--poll-s", "1")
    assert result.exit_code == 2 and "--poll-s goes with a model repository" in result.output
    with pytest.raises(UsageError, match="^poll_s goes with a model repository"):
        modelpack.create_app(mlp_package, poll_s=1.0)
    with pytest.raises(Exception, match="require_signature"):
        modelpack.create_app(mlp_package, require_signature=tmp_path / "missing.pem")


def test_a_plain_mpk_is_served_from_its_extraction_for_the_life_of_the_server(mlp_package: Path,
                                                                              tmp_path: Path) -> None:
    archive = tmp_path / "mlp.mpk"
    assert run_cli("pack", mlp_package, "-o", archive).exit_code == 0
    result = run_cli("serve", archive, "--get", "/v2/health/ready")
    assert result.exit_code == 0 and '"ready":true' in result.output.replace(" ", ""), result.output
    with pytest.raises(UsageError, match="is a .mpk; unpack it"):
        modelpack.create_app(archive)
