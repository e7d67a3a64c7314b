"""Pipeline files: --save-config, --config and --dry-run agree with the command line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE, run_cli


def _outputs(pkg: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(pkg / "model.onnx"))
    return session.run(None, {"image": x})[0]


@pytest.mark.slow  # TensorFlow
def test_config_file_gives_the_same_result_as_the_command_line(tmp_path: Path) -> None:
    cli_out, cfg_out, cfg = tmp_path / "cli", tmp_path / "cfg", tmp_path / "conf" / "pipeline.toml"
    cfg.parent.mkdir()
    chain = ["export", "--format", "onnx", "--format", "tflite", "--opset", "15"]
    common = ["--eval-data", EXAMPLE / "eval.npz", "--name", "digits", "--model-version", "3"]

    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", cfg_out, *common, "--save-config", cfg, "--dry-run",
                     *chain)
    assert result.exit_code == 0, result.output
    assert not cfg_out.exists(), "--dry-run must not run the pipeline"
    saved = tomllib.loads(cfg.read_text())
    assert saved["stages"] == [{"name": "export", "format": ["onnx", "tflite"], "opset": 15}]
    assert not Path(saved["input"]).is_absolute()  # paths are relative to the file, so it can travel
    assert (cfg.parent / saved["input"]).resolve() == (EXAMPLE / "model.keras").resolve()

    assert run_cli("optimize", EXAMPLE / "model.keras", "-o", cli_out, *common, "-q", *chain).exit_code == 0
    result = run_cli("run", cfg, "-q")
    assert result.exit_code == 0, result.output

    a = json.loads((cli_out / "modelpack.json").read_text())
    b = json.loads((cfg_out / "modelpack.json").read_text())
    for key in ("name", "version", "signature"):
        assert a[key] == b[key]
    assert [(s["name"], s["params"]) for s in a["lineage"]["stages"]] == \
           [(s["name"], s["params"]) for s in b["lineage"]["stages"]]
    assert [(x["format"], x["path"], x["parity"]["accuracy"]) for x in a["artifacts"]] == \
           [(x["format"], x["path"], x["parity"]["accuracy"]) for x in b["artifacts"]]
    tflite = {x["format"]: x["sha256"] for x in a["artifacts"]}["tflite"]
    assert tflite == {x["format"]: x["sha256"] for x in b["artifacts"]}["tflite"]
    x = np.load(EXAMPLE / "eval.npz")["x"][:32]
    np.testing.assert_array_equal(_outputs(cli_out, x), _outputs(cfg_out, x))


def test_dry_run_prints_the_resolved_pipeline(tmp_path: Path) -> None:
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "pkg", "--dry-run", "--json",
                     "export", "--format", "tflite")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["input_format"] == "Keras 3 keras model"
    assert plan["stages"][0]["converts"] == ["keras"] and plan["stages"][0]["output_format"] == "tflite"
    assert plan["stages"][0]["params"] == {"format": ["tflite"], "opset": 17}
    assert not (tmp_path / "pkg").exists()
    text = run_cli("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "pkg", "--dry-run", "export").output
    assert "dry run" in text and "export" in text


def test_config_errors_name_the_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('input = "m.keras"\nouptut = "x"\n')
    result = run_cli("run", cfg)
    assert result.exit_code == 2 and "p.toml" in result.output and "ouptut" in result.output
    cfg.write_text('input = "m.keras"\n[[stages]]\nname = "export"\nformat = "gif"\n')
    result = run_cli("run", cfg)
    assert result.exit_code == 2 and "stage 'export'" in result.output and "--format" in result.output
    cfg.write_text("this is = not toml [")
    result = run_cli("run", cfg)
    assert result.exit_code == 2 and "not valid TOML" in result.output
    result = run_cli("run", tmp_path / "absent.toml")
    assert result.exit_code == 2 and "absent.toml" in result.output


def test_a_pipeline_file_runs_with_run_and_optimize_needs_input(tmp_path: Path) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'input = "{EXAMPLE / "model.keras"}"\noutput = "out"\n[[stages]]\nname = "export"\n')
    old = run_cli("optimize", "--config", cfg)
    assert old.exit_code == 2 and "modelpack run FILE" in old.output
    missing = run_cli("optimize", "-o", tmp_path / "x", "export")
    assert missing.exit_code == 2 and "no input model: give INPUT" in missing.output
    nothing = run_cli("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "x")
    assert nothing.exit_code == 2 and "no stages" in nothing.output and not (tmp_path / "x").exists()
    empty = tmp_path / "empty.toml"
    empty.write_text(f'input = "{EXAMPLE / "model.keras"}"\noutput = "out"\n')
    result = run_cli("run", empty)
    assert result.exit_code == 2 and "no stages" in result.output
    plan = run_cli("run", cfg, "-o", tmp_path / "elsewhere", "--dry-run", "--json")  # options override the file
    assert plan.exit_code == 0, plan.output
    assert json.loads(plan.stdout)["output"] == str(tmp_path / "elsewhere")
    bare = run_cli("optimize")
    assert bare.exit_code == 2 and "optimize [OPTIONS] INPUT STAGE" in bare.output


@pytest.mark.parametrize(("line", "message"), [
    ('name = ["a"]', "'name' takes one value"),
    ('atol = "big"', "'atol': 'big' is not a valid float range"),
    ("atol = -1", "'atol': -1.0 is not in the range x>=0"),
    ('on_violation = "maybe"', "'on_violation': 'maybe' is not one of 'fail', 'skip'"),
    ("eval_data = 7", "'eval_data' must be a path string, not int"),
    ('unsafe_load = "yes"', "'unsafe_load' must be true or false"),
    ("eval_limit = 0", "'eval_limit': 0 is not in the range x>=1"),
    ("colour = 1", "unknown key(s) colour"),
])
def test_pipeline_file_top_level_values_are_checked_like_options(tmp_path: Path, line: str, message: str) -> None:
    """Each top-level key goes through the same Option (and click type) as optimize's global option."""
    cfg = tmp_path / "pipeline.toml"
    cfg.write_text(f'input = "model.keras"\noutput = "out"\n{line}\n\n[[stages]]\nname = "export"\n')
    result = run_cli("run", cfg)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output and "internal error" not in result.output


def test_a_number_where_text_is_expected_is_taken_as_text(tmp_path: Path) -> None:
    from modelpack.pipeline import file as config

    cfg = tmp_path / "pipeline.toml"
    cfg.write_text('input = "m.onnx"\nname = 42\nmodel_version = 3\n\n[[stages]]\nname = "export"\n')
    spec = config.load(cfg)
    assert (spec.name, spec.model_version, spec.input) == ("42", "3", tmp_path / "m.onnx")
