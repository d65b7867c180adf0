"""Every stage has a console command whose --help explains its options; bad input exits readably."""

import pytest
from typer.testing import CliRunner

from medsegllm.cli import app

runner = CliRunner()
STAGES = ["synth", "ingest", "reports", "pseudolabel", "train", "validate", "register", "check"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_help(stage):
    result = runner.invoke(app, [stage, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_top_level_help_lists_every_stage():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in STAGES:
        assert stage in result.output


def test_invalid_params_file_fails_readably(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    result = runner.invoke(app, ["ingest", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--params", str(bad)])
    assert result.exit_code == 1
    assert "invalid params file" in result.output and "epochs" in result.output


def test_missing_input_folder_fails_readably(tmp_path):
    result = runner.invoke(app, ["ingest", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "is not a folder" in result.output


def test_check_unknown_stage(tmp_path):
    result = runner.invoke(app, ["check", "nostage", str(tmp_path)])
    assert result.exit_code != 0


def test_ingest_workers_come_from_params_unless_given(tmp_path, monkeypatch):
    import medsegllm.ingest.run as ingest_run

    seen = []
    monkeypatch.setattr(ingest_run, "run_ingest", lambda *args, workers, **kw: seen.append(workers) or {"ok": True})
    monkeypatch.setenv("MEDSEGLLM_SALT", "cli-test-salt")
    params = tmp_path / "params.yaml"
    params.write_text("ingest:\n  workers: 2\n")
    base = ["ingest", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--params", str(params)]
    assert runner.invoke(app, base).exit_code == 0
    assert runner.invoke(app, [*base, "--workers", "1"]).exit_code == 0
    assert runner.invoke(app, [*base, "--workers", "0"]).exit_code != 0
    assert seen == [2, 1]


def test_validate_mirror_flag_overrides_params(tmp_path, monkeypatch):
    import medsegllm.validate.run as validate_run

    seen = []
    monkeypatch.setattr(validate_run, "run_validate", lambda model, ingested, out, params, **kw: seen.append(params.validation.mirror) or {})
    params = tmp_path / "params.yaml"
    params.write_text("validate:\n  mirror: false\n")
    base = ["validate", "--model", str(tmp_path / "m.pt"), "--ingested", str(tmp_path), "--out", str(tmp_path / "o")]
    for extra in ([], ["--params", str(params)], ["--params", str(params), "--mirror"], ["--no-mirror"]):
        assert runner.invoke(app, [*base, *extra]).exit_code == 0
    assert seen == [None, False, True, False]  # None: the model's own train.inference.mirror
