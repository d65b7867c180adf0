"""A tiny configuration under which each orchestrator runs the whole pipeline in about a minute."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def tiny_params(workdir: Path) -> dict:
    """The repository's params.yaml, shrunk: few studies, a few training steps, permissive model gates.

    The gates stay switched on (their plumbing is what is tested); their thresholds are for a model
    trained for seconds.
    """
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synth"]["n_studies"] = 14
    params["reports"]["backend"] = "rules"  # SmolLM2 costs ~1 min per run; tests/code/test_reports_llm.py covers it
    params["pseudolabel"]["teacher_epochs"] = 1
    params["train"].update(epochs=2, steps_per_epoch=3, batch_size=8, channels=[8, 16, 32])
    params["validate"]["gates"] = {"min_dice": 0.0, "max_js": 1.0, "max_device_gap": 1.0, "min_device_series": 1}
    params["validate"]["bootstrap"] = 20
    params["register"]["tracking_uri"] = f"sqlite:///{workdir / 'mlflow.db'}"
    params["airflow"]["data_root"] = str(workdir / "data")
    return params


@pytest.fixture
def tiny_params_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(tmp_path), sort_keys=False))
    return path
