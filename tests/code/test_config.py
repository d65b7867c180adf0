"""params.yaml is validated by one typed model: typos and wrong shapes fail early and readably."""

import pytest
import yaml
from pydantic import ValidationError

from medsegllm.config import Params, load_params, parse_params
from tests.conftest import ROOT


def test_repository_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.train.roi_size == (64, 64)
    assert params.validation.gates.min_dice > 0  # yaml key `validate`
    assert params.registration.model_name == "medsegllm"  # yaml key `register`


def test_params_yaml_sets_every_section_explicitly():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(raw) == {field.alias or name for name, field in Params.model_fields.items()}


def test_unknown_key_is_rejected():
    with pytest.raises(ValidationError, match="epochz"):
        parse_params("train:\n  epochz: 3\n")


def test_class_weights_must_match_classes():
    with pytest.raises(ValidationError, match="class_weights"):
        parse_params("train:\n  class_weights: [1.0, 2.0]\n")


def test_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_salt_mismatch_between_stages_is_a_clear_error(tmp_path):
    from medsegllm.common.deid import check_same_salt, salt_fingerprint
    from medsegllm.common.io import write_json

    write_json(tmp_path / "ingested/summary.json", {"salt_fingerprint": salt_fingerprint("a")})
    write_json(tmp_path / "findings/summary.json", {"salt_fingerprint": salt_fingerprint("b")})
    check_same_salt(tmp_path / "ingested", "a")
    with pytest.raises(ValueError, match="different pseudonym salt"):
        check_same_salt(tmp_path / "ingested", "b")
    with pytest.raises(ValueError, match="different pseudonym salt"):
        check_same_salt(tmp_path / "findings", other_dir=tmp_path / "ingested")
    assert salt_fingerprint("a") != salt_fingerprint("b")
    assert "secret-salt" not in salt_fingerprint("secret-salt")
