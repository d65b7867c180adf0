"""Sharded ingest (plan -> 3 shards -> merge) gives exactly the single run's manifest, quarantine and volumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medsegllm.common.io import load_nifti
from medsegllm.config import IngestParams, SynthParams
from medsegllm.ingest.run import run_ingest
from medsegllm.ingest.shards import ShardMergeError, merge_shards, plan_shards, run_ingest_shard, write_plan

SALT = "shard-salt"
PARAMS = IngestParams()
HOLDOUT = ["siemens_skyra"]  # an MR device of this cohort: standardized, but not part of the standard scale


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A small cohort plus files that must be quarantined, some in series folders, one at the top."""
    from medsegllm.synth.cohort import generate_cohort

    root = tmp_path_factory.mktemp("shards")
    generate_cohort(root / "cohort", SynthParams(n_studies=5, label_fraction=0.4), seed=3)
    dicom = root / "cohort" / "dicom"
    series_dirs = sorted({p.parent for p in dicom.rglob("*") if p.is_file()})
    (series_dirs[0] / "notes.txt").write_text("not dicom")
    (series_dirs[-1] / "empty.dcm").write_bytes(b"")
    (dicom / "README").write_text("export manifest")
    return dicom


@pytest.fixture(scope="module")
def single_and_sharded(tree, tmp_path_factory) -> tuple[Path, Path, dict]:
    work = tmp_path_factory.mktemp("runs")
    run_ingest(tree, work / "single", PARAMS, SALT, holdout_devices=HOLDOUT)
    write_plan(tree, 3, work / "plan")
    shard_dirs = [work / f"shard{i}" for i in range(3)]
    for i, shard_dir in enumerate(shard_dirs):
        run_ingest_shard(tree, work / "plan", i, shard_dir, PARAMS, SALT, holdout_devices=HOLDOUT)
    merged = merge_shards(shard_dirs, work / "merged", work / "plan")
    return work / "single", work / "merged", merged


def test_plan_is_deterministic_and_keeps_series_whole(tree):
    plan = plan_shards(tree, 3)
    assert plan == plan_shards(tree, 3)
    names = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    indices = [i for shard in plan["shards"] for i in shard]
    assert sorted(indices) == list(range(plan["n_files"])) and plan["n_files"] == len(names)
    assert not any(part in json.dumps(plan) for name in names for part in name.split("/") if not part.isdigit())
    assert sum(1 for shard in plan["shards"] if shard) >= 2, "the cohort should spread over shards"
    folder_shard = {}
    for i, shard in enumerate(plan["shards"]):
        for f in (names[k] for k in shard):
            if Path(f).name.isdigit():  # synth names slices by number: one folder per series
                assert folder_shard.setdefault(Path(f).parent, i) == i, "a series spans two shards"


def test_merged_equals_single_run(single_and_sharded):
    single, merged, summary = single_and_sharded
    for table in ("manifest.parquet", "quarantine.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(single / table), pd.read_parquet(merged / table))
    # MR standardization runs once over all shards: the same landmarks, standard scale and maps
    standardization = json.loads((single / "mr_standardization.json").read_text())
    assert standardization == json.loads((merged / "mr_standardization.json").read_text())
    assert standardization["standard_scale"] is not None and HOLDOUT[0] in standardization["devices"]
    assert HOLDOUT[0] not in standardization["training_devices"]
    assert len(pd.read_parquet(merged / "quarantine.parquet")) == 3
    single_summary = json.loads((single / "summary.json").read_text())
    for key in ("n_files", "n_series", "n_image_files", "n_label_files", "n_report_files", "n_quarantined_files",
                "salt_fingerprint"):
        assert summary[key] == single_summary[key], key
    manifest = pd.read_parquet(single / "manifest.parquet")
    assert manifest.has_label.any()
    for rel in list(manifest.volume_path) + list(manifest.label_path.dropna()):
        a, affine_a = load_nifti(single / rel)
        b, affine_b = load_nifti(merged / rel)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(affine_a, affine_b)


def test_merge_refuses_missing_or_duplicate_shards(single_and_sharded, tmp_path):
    single, merged, _ = single_and_sharded
    work = single.parent
    with pytest.raises(ShardMergeError, match="expected shards"):
        merge_shards([work / "shard0", work / "shard1"], tmp_path / "a", work / "plan")
    with pytest.raises(ShardMergeError, match="more than one shard"):
        merge_shards([work / "shard0", work / "shard0"], tmp_path / "b")
    shutil.copytree(work / "shard1", tmp_path / "stale")
    (tmp_path / "stale" / "summary.json").write_text(
        json.dumps(json.loads((work / "shard1" / "summary.json").read_text()) | {"salt_fingerprint": "other"}))
    with pytest.raises(ShardMergeError, match="different salts"):
        merge_shards([work / "shard0", tmp_path / "stale", work / "shard2"], tmp_path / "c")


def test_merge_refuses_shards_with_different_mr_standardization(single_and_sharded, tmp_path):
    work = single_and_sharded[0].parent
    shutil.copytree(work / "shard1", tmp_path / "other")
    meta = json.loads((work / "shard1" / "shard.json").read_text())
    meta["mr_standardization"]["holdout_devices"] = []
    (tmp_path / "other" / "shard.json").write_text(json.dumps(meta))
    with pytest.raises(ShardMergeError, match="different MR standardization"):
        merge_shards([work / "shard0", tmp_path / "other", work / "shard2"], tmp_path / "merged", work / "plan")


def test_a_shard_refuses_a_tree_that_changed_since_the_plan(tree, tmp_path):
    write_plan(tree, 2, tmp_path / "plan")
    changed = tmp_path / "tree"
    shutil.copytree(tree, changed)
    (changed / "added_later.dcm").write_bytes(b"not dicom")
    with pytest.raises(ShardMergeError, match="changed since the plan"):
        run_ingest_shard(changed, tmp_path / "plan", 0, tmp_path / "shard0", PARAMS, SALT)

