"""A params file that extends another: only the keys it names change."""

import pytest

from medsegllm.config import load_params


def test_extends_merges_sections_and_replaces_lists(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("seed: 7\ntrain: {epochs: 3, channels: [4, 8, 16], lr: 0.01}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/over.yaml").write_text("extends: ../base.yaml\ntrain: {epochs: 5, channels: [8, 16]}\n")
    params = load_params(tmp_path / "sub/over.yaml")
    assert params.seed == 7 and params.train.lr == 0.01  # kept from the base
    assert params.train.epochs == 5 and params.train.channels == [8, 16]  # replaced, not merged element-wise


def test_extends_rejects_cycles_and_unknown_keys(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_params(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: c.yaml\ntrain: {epoch: 3}\n")
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    with pytest.raises(ValueError, match="epoch"):
        load_params(tmp_path / "d.yaml")
