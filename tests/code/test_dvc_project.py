"""DVC on a copy of the real dvc.yaml + params.yaml with stand-in data (no stage is run).

`dvc commit` records the stand-ins in dvc.lock; then a changed parameter must mark only the stages
that read it, and outputs pushed to a local-folder remote must come back in a fresh copy.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

def _dvc(cwd: Path, *args: str) -> None:
    """The dvc command line, in-process (a subprocess per call costs seconds of imports)."""
    from dvc.cli import main

    with contextlib.chdir(cwd):
        assert main(["--quiet", *args]) == 0, f"dvc {' '.join(args)} failed"


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _stand_in(path: Path) -> None:
    """A file for names with a suffix, else a folder holding one file; content from the name, so it is stable."""
    if path.exists():
        return
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"stand-in {path.name}\n")
    else:
        path.mkdir(parents=True)
        (path / "part.bin").write_text(f"stand-in {path.name}\n")


def _status(project: Path) -> set[str]:
    """Stages `dvc status` reports as changed."""
    from dvc.repo import Repo

    with contextlib.chdir(project), Repo(".") as repo:
        return {name.rpartition(":")[2] for name in repo.status()}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("dvcproj")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for rel in _paths(stage.get("outs")) + _paths(stage.get("metrics")) + _paths(stage.get("deps")):
            _stand_in(project / rel)
    _dvc(project, "init", "--no-scm")
    _dvc(project, "commit", "--force")
    assert _status(project) == set(), "freshly committed: nothing to run"
    return project


@pytest.fixture
def edit_params(project):
    original = (project / "params.yaml").read_text()

    def edit(section: str, key: str, value) -> None:
        params = yaml.safe_load(original)
        node = params
        for part in section.split("."):
            node = node[part]
        node[key] = value
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    yield edit
    (project / "params.yaml").write_text(original)


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("validate.gates", "min_dice", 0.55, {"validate"}),
    ("train", "epochs", 3, {"pseudolabel", "train"}),  # the teacher trains with the train section too
    ("airflow", "mode", "kubernetes", set()),  # orchestration settings rerun nothing
])
def test_changed_parameter_marks_only_its_stages(project, edit_params, section, key, value, expected):
    edit_params(section, key, value)
    assert _status(project) == expected


def test_push_to_a_local_remote_and_pull_into_a_fresh_copy(project, tmp_path):
    remote = tmp_path / "remote"
    _dvc(project, "remote", "add", "--local", "--force", "-d", "testremote", str(remote))
    _dvc(project, "push")
    assert any(remote.rglob("*")), "push wrote nothing"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(project / name, fresh / name)
    shutil.copytree(project / "src", fresh / "src")
    for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values():
        for entry in (stage.get("metrics") or []) + (stage.get("outs") or []):
            if isinstance(entry, dict) and next(iter(entry.values())).get("cache") is False:  # kept in git, not DVC
                (fresh / next(iter(entry))).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(project / next(iter(entry)), fresh / next(iter(entry)))
    _dvc(fresh, "init", "--no-scm")
    _dvc(fresh, "remote", "add", "-d", "testremote", str(remote))
    _dvc(fresh, "pull")
    for rel in ("data/cohort/dicom/part.bin", "data/model/model.pt", "data/validation/report.html"):
        assert (fresh / rel).read_text() == (project / rel).read_text(), rel
    assert _status(fresh) == set()
