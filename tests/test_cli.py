"""The command line: lazy imports, stage listing, and bad invocations and inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import BIN, EXAMPLE, run_cli, run_subprocess


def test_help_does_not_import_tensorflow_and_is_fast() -> None:
    import subprocess

    code = (
        "import sys, runpy\n"
        "sys.argv = ['modelpack', '--help']\n"
        "try:\n"
        "    runpy.run_module('modelpack', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'tf2onnx', 'onnxruntime', 'ray') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "optimize" in proc.stdout
    assert "HEAVY=\n" in proc.stdout, proc.stdout
    start = time.perf_counter()
    result = run_subprocess("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    assert elapsed < 2.0, f"modelpack --help took {elapsed:.2f}s"


def test_stage_help_does_not_import_tensorflow() -> None:
    import subprocess

    code = (
        "import sys\nfrom modelpack.cli import main\n"
        "try:\n    main(['optimize', 'x.keras', 'export', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TF=' + str('tensorflow' in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "--format" in proc.stdout and "TF=False" in proc.stdout, proc.stdout + proc.stderr


def test_deploy_target_ray_does_not_import_ray(mlp_package: Path, tmp_path: Path) -> None:
    """Writing a Ray Serve config needs no ray: only the replicas (modelpack.deploy.ray_app) import it."""
    code = (
        "import sys\nfrom modelpack.cli import main\n"
        f"try:\n    main(['deploy', {str(mlp_package)!r}, '--target', 'ray', '-o', {str(tmp_path / 'ray')!r}])\n"
        "except SystemExit as exc:\n    print('EXIT', exc.code)\n"
        "print('RAY=' + str('ray' in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "EXIT 0" in proc.stdout and "RAY=False" in proc.stdout, proc.stdout + proc.stderr
    assert (tmp_path / "ray" / "serve_config.yaml").is_file()


def test_stages_lists_builtin_export_with_options() -> None:
    result = run_cli("stages", "--json")
    assert result.exit_code == 0
    listing = {s["name"]: s for s in json.loads(result.stdout)}
    assert "export" in listing
    flags = {o["flag"] for o in listing["export"]["options"]}
    assert {"--format", "--opset"} <= flags
    text = run_cli("stages").output
    assert "export" in text and "--format" in text and "[default: 17]" in text
    # Defaults read as a user would type them, never as Python reprs ("('onnx',)"): a third-party stage
    # with a repeatable option and a default of several values.
    assert "('" not in text and "',)" not in text


def test_stages_shows_a_repeatable_default_as_typed(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin"
    (plugin / "twostage").mkdir(parents=True)
    (plugin / "twostage" / "__init__.py").write_text(textwrap.dedent("""
        from modelpack.stages import Option, Stage

        class TwoStage(Stage):
            name = "twostage"
            help = "A stage with a repeatable option."
            options = (Option("level", multiple=True, default=("low", "high"), help="Levels."),)
    """))
    dist = plugin / "twostage-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: twostage\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[modelpack.stages]\ntwostage = twostage:TwoStage\n")
    code = "import sys; from modelpack.cli import main; sys.argv = ['modelpack', 'stages']; main()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(plugin), "COLUMNS": "200"})
    line = next(line for line in proc.stdout.splitlines() if "--level" in line)
    assert "[default: low, high]" in line and "('" not in line, proc.stdout + proc.stderr


def test_missing_input_file(tmp_path: Path) -> None:
    result = run_cli("optimize", tmp_path / "nope.keras", "-o", tmp_path / "out", "export")
    assert result.exit_code == 2
    assert "nope.keras" in result.output and "no such file" in result.output
    assert "Keras 3 .keras" in result.output  # the accepted formats are named
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_random_bytes_named_onnx(tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(bytes(range(256)) * 40)
    result = run_subprocess("optimize", bogus, "-o", tmp_path / "out", "export")
    assert result.returncode == 2
    assert "model.onnx" in result.stderr and "Expected" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_directory_that_is_not_a_savedmodel(tmp_path: Path) -> None:
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hi")
    result = run_cli("optimize", tmp_path / "notamodel", "-o", tmp_path / "out", "export")
    assert result.exit_code == 2
    assert "not a TF SavedModel" in result.output


def test_unknown_stage_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "out", "frobnicate")
    assert result.exit_code == 2
    assert "unknown stage 'frobnicate'" in result.output and "export" in result.output


def test_bad_option_value_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "out", "export", "--format", "pdf")
    assert result.exit_code == 2
    assert "--format" in result.output and "pdf" in result.output
    result = run_cli("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "out", "export", "--opset", "banana")
    assert result.exit_code == 2 and "--opset" in result.output


def test_missing_input_before_stage_is_named(tmp_path: Path) -> None:
    result = run_cli("optimize", "-o", tmp_path / "out", "export")
    assert result.exit_code == 2
    assert "no input model: give INPUT" in result.output


def test_debug_shows_traceback(tmp_path: Path) -> None:
    result = run_subprocess("--debug", "optimize", tmp_path / "nope.keras", "-o", tmp_path / "out", "export")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "InputError" in result.stderr


def test_json_error_for_machines(tmp_path: Path) -> None:
    result = run_subprocess("optimize", tmp_path / "nope.keras", "-o", tmp_path / "out", "--json", "export")
    assert result.returncode == 2
    payload = json.loads(result.stdout)
    assert payload["status"] == "error" and payload["exit_code"] == 2 and "nope.keras" in payload["error"]


def test_impossible_pipeline_is_refused_before_work(models, tmp_path: Path) -> None:
    onnx_model = models["onnx"].path
    result = run_cli("optimize", onnx_model, "-o", tmp_path / "out", "export", "--format", "tflite")
    assert result.exit_code == 2
    assert "cannot make tflite from a onnx model" in result.output
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_without_force(tmp_path: Path, models) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("optimize", models["onnx"].path, "-o", out, "export")
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"
    result = run_cli("optimize", models["onnx"].path, "-o", out, "--force", "export")
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "modelpack.json").is_file()


def test_version() -> None:
    from modelpack import __version__

    assert run_cli("--version").output.strip().endswith(__version__)
    assert (BIN / "modelpack").exists()


@pytest.mark.parametrize("args", [["verify"], ["pack", "x"], ["predict", "x"]])
def test_commands_require_their_arguments(args: list[str]) -> None:
    assert run_cli(*args).exit_code == 2


def test_a_misspelled_stage_gets_did_you_mean(models, tmp_path) -> None:
    result = run_cli("optimize", models["onnx"].path, "-o", tmp_path / "out", "exprot", "--format", "onnx")
    assert result.exit_code == 2
    assert "unknown stage 'exprot'; did you mean 'export'?" in result.output


def test_no_stages_is_a_usage_error(models, tmp_path) -> None:
    result = run_cli("optimize", models["onnx"].path, "-o", tmp_path / "out")
    assert result.exit_code == 2 and "no stages" in result.output
    assert not (tmp_path / "out").exists()


def test_debug_anywhere_keeps_the_exit_code(tmp_path) -> None:
    for args in (["--debug", "optimize", tmp_path / "nope.keras", "-o", tmp_path / "o", "export"],
                 ["optimize", tmp_path / "nope.keras", "-o", tmp_path / "o", "--debug", "export"]):
        proc = run_subprocess(*args)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" in proc.stderr and "no such file or directory" in proc.stderr


@pytest.mark.slow  # TensorFlow
def test_framework_output_is_hidden_unless_verbose(tmp_path) -> None:
    """TensorFlow's and tf2onnx's own lines stay out of the terminal; -v shows them."""
    proc = run_subprocess("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "a", "export")
    assert proc.returncode == 0, proc.stderr
    assert "✓ [1/1] export" in proc.stderr
    noise = [line for line in proc.stderr.splitlines() if not line.startswith(("  [1/1]", "✓", " "))]
    assert noise == [], noise
    loud = run_subprocess("optimize", EXAMPLE / "model.keras", "-o", tmp_path / "b", "-v", "export",
                          env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert loud.returncode == 0 and len(loud.stderr.splitlines()) > len(proc.stderr.splitlines())


def _commands() -> list[str]:
    from modelpack.cli import main

    return main.list_commands(None)  # type: ignore[arg-type]


def test_every_command_has_an_example_and_every_option_has_help() -> None:
    import click

    from modelpack.cli import main

    ctx = click.Context(main)
    for name in _commands():
        command = main.get_command(ctx, name)
        assert command is not None
        text = run_cli(name, "--help").output
        assert f"modelpack {name} " in text.split("Usage:", 1)[1].split("\n", 1)[1], f"{name}: no example"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{name} {param.opts}: no help text"
    for param in main.params:
        assert not isinstance(param, click.Option) or param.help, param.opts


def test_quiet_and_json_work_on_every_command(mlp_package: Path, tmp_path: Path) -> None:
    import click

    from modelpack.cli import main

    ctx = click.Context(main)
    for name in _commands():
        command = main.get_command(ctx, name)
        assert command is not None
        flags = {opt for p in command.params for opt in getattr(p, "opts", [])}
        if name != "serve":  # serve logs; its one-shot --get prints the answer's JSON
            assert "--json" in flags, f"{name} has no --json"
    # -q anywhere on the line, for a command without a -q of its own: nothing on stdout, same exit code.
    assert run_cli("verify", mlp_package, "-q").output == ""
    assert run_cli("-q", "inspect", mlp_package).output == ""
    assert run_cli("inspect", mlp_package).output != ""  # -q does not stick to the next run
    failed = run_cli("verify", tmp_path / "nothing", "-q")
    assert failed.exit_code == 2 and "no such file" in failed.output  # errors still show
    keys = json.loads(run_cli("keygen", "-o", tmp_path / "keys", "--json").stdout)
    assert keys["status"] == "ok" and Path(keys["public"]).is_file()


def test_quiet_after_a_stage_is_the_pipelines(models, tmp_path: Path) -> None:
    """`-q` after a stage quiets the pipeline (issue 26, item 6: it answered "No such option '-q'")."""
    for i, args in enumerate((["export", "--format", "onnx", "-q"], ["-q", "export", "--format", "onnx"],
                              ["export", "-q", "--format", "onnx"])):
        result = run_cli("optimize", models["onnx"].path, "-o", tmp_path / f"out{i}", *args)
        assert result.exit_code == 0, result.output
        assert result.output == "", result.output
        assert (tmp_path / f"out{i}" / "modelpack.json").is_file()


def test_output_width_follows_columns(mlp_package: Path) -> None:
    narrow = run_subprocess("inspect", mlp_package, env={"COLUMNS": "70"})
    wide = run_subprocess("inspect", mlp_package, env={"COLUMNS": "200"})
    assert narrow.returncode == wide.returncode == 0
    assert max(map(len, narrow.stdout.splitlines())) <= 70 < max(map(len, wide.stdout.splitlines()))


def test_gates_that_cannot_be_measured_are_refused_before_work(mlp_package: Path, tmp_path: Path) -> None:
    before = (mlp_package / "modelpack.json").read_bytes()
    result = run_cli("benchmark", mlp_package, "--fail-if", "accuracy_drop > 1")
    assert result.exit_code == 2 and "needs --eval-data with labels" in result.output
    result = run_cli("benchmark", mlp_package, "--no-memory", "--fail-if", "peak_rss_mb > 100")
    assert result.exit_code == 2 and "--no-memory" in result.output
    assert (mlp_package / "modelpack.json").read_bytes() == before  # nothing measured, nothing recorded
    from conftest import make_onnx_mlp

    source = make_onnx_mlp(tmp_path / "m.onnx")
    out = tmp_path / "pkg"
    result = run_cli("optimize", source, "-o", out, "export", "benchmark", "--fail-if", "accuracy_drop > 1")
    assert result.exit_code == 2 and "benchmark --fail-if 'accuracy_drop > 1'" in result.output
    assert "[1/2]" not in result.output and not out.exists()


def test_benchmark_stage_speaks_the_convention_and_names_no_temp_path(tmp_path: Path) -> None:
    import re

    from conftest import make_onnx_mlp

    out = tmp_path / "pkg"
    result = run_cli("optimize", make_onnx_mlp(tmp_path / "m.onnx"), "-o", out, "quantize", "--method", "dynamic",
                     "benchmark", "--duration", "0.05", "--repeats", "2", "--fail-if", "p50_ms > 10000")
    assert result.exit_code == 0, result.output
    assert "speed x" not in result.output
    assert re.search(r"\d[\d.]*× (faster|slower)|same speed", result.output), result.output
    assert re.search(r"^(same size|[\d.]+× (smaller|larger)) · .*gates 1/1 passed$", result.stdout, re.M), result.stdout
    manifest = json.loads((out / "modelpack.json").read_text())
    (stage,) = [s for s in manifest["lineage"]["stages"] if s["name"] == "benchmark"]
    paths = [t["path"] for t in stage["metrics"]["benchmark"]["targets"]]
    assert paths[1] == "the pipeline's onnx model at this stage" and all(".tmp" not in p for p in paths), paths


def test_the_headline_names_its_baseline_and_gives_the_float_export_speed(tmp_path: Path) -> None:
    """The demo's "233× faster p50 @1" was against the Keras model's own call; the headline says so, and also
    gives the package against its float ONNX export, which is what an optimization is judged by."""
    import re

    import numpy as np
    from conftest import make_onnx_mlp

    model = make_onnx_mlp(tmp_path / "mlp.onnx", inputs=256, hidden=512, classes=10)
    np.savez(tmp_path / "eval.npz", x=np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32))
    pkg = tmp_path / "pkg"
    result = run_cli("optimize", model, "-o", pkg, "--eval-data", tmp_path / "eval.npz", "quantize",
                     "--method", "dynamic")
    assert result.exit_code == 0, result.output
    manifest = json.loads((pkg / "modelpack.json").read_text())
    quantize = next(r for r in manifest["lineage"]["stages"] if r["name"] == "quantize")["metrics"]
    expected = quantize["float_p50_ms"] / quantize["quantized_p50_ms"]
    phrase = r"[\d.]+× (faster|slower) vs the float ONNX export \(p50 @1, timed by quantize\)|same speed vs the float ONNX export"
    assert re.search(phrase, result.stdout.splitlines()[-1]), result.stdout
    result = run_cli("benchmark", pkg, "--iterations", "10", "--no-memory", "--no-record")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if x.startswith("onnx: "))
    assert re.search(r"[\d.]+× (faster|slower) p50 @1 vs the original ONNX model · ", line), line
    found = re.search(r"([\d.]+)× (faster|slower) vs the float ONNX export", line)
    assert found, line
    ratio = float(found.group(1)) if found.group(2) == "faster" else 1 / float(found.group(1))
    assert abs(ratio / expected - 1) < 0.02  # the lineage's same-run timing, not a new guess


def test_the_headline_names_a_keras_baseline() -> None:
    from modelpack.summary import benchmark_headline

    row = {"batch_size": 1, "latency_ratio": 0.004}
    result = {"targets": [{"name": "original", "format": "keras", "baseline": True, "latency": [row]},
                          {"name": "onnx", "format": "onnx", "baseline": False, "size_ratio": 0.093, "latency": [row]}],
              "float_export": {"format": "onnx", "float_p50_ms": 0.05, "p50_ms": 0.04, "batch_size": 1}}
    assert benchmark_headline(result) == ("onnx: 10.8× smaller · 250× faster p50 @1 vs the Keras model's own call · "
                                          "1.25× faster vs the float ONNX export (p50 @1, timed by quantize)")
