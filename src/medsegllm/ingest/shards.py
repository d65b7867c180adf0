"""Ingest scale-out: split a DICOM tree into shards, ingest each shard on its own, merge the results.

The plan reads headers only (no pixel data) so that a series never spans two shards and a SEG
travels with every series it references; a shard is then an ordinary `run_ingest` over a
symlinked copy of its files under their original relative paths. Hence the merged manifest,
quarantine and volumes equal a single run's, and the merge proves it: every planned file is
accounted for by exactly one shard, and no series or quarantined path appears twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from medsegllm.common.io import remove_partials, write_json, write_parquet
from medsegllm.common.schemas import MANIFEST, QUARANTINE
from medsegllm.config import IngestParams, MRStandardizationParams
from medsegllm.ingest.run import _targets, run_ingest
from medsegllm.ingest.scan import iter_files, scan
from medsegllm.ingest.standardize import STANDARDIZATION_FILE, standardize

PLAN_FILE = "plan.json"
SUMMED = ("n_files", "n_series", "n_reused_series", "n_image_files", "n_label_files", "n_report_files",
          "n_quarantined_files")


class ShardMergeError(RuntimeError):
    """The shard outputs do not add up to the plan: a shard is missing, stale or overlaps another."""


def _bucket(key: str, n_shards: int) -> int:
    """Stable across machines and Python runs (unlike hash())."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n_shards


def _series_groups(series: dict[str, list], segs: list) -> dict[str, str]:
    """Union series that one SEG references together, so a multi-series SEG meets all its targets in one shard."""
    parent = {uid: uid for uid in series}

    def find(uid: str) -> str:
        while parent[uid] != uid:
            parent[uid] = parent[parent[uid]]
            uid = parent[uid]
        return uid

    sop_to_series = {h.sop_uid: uid for uid, headers in series.items() for h in headers}
    for seg in segs:
        roots = sorted({find(uid) for uid in _targets(seg, series, sop_to_series)})
        for other in roots[1:]:
            parent[other] = roots[0]
    return {uid: find(uid) for uid in series}


def plan_shards(input_dir: Path, n_shards: int) -> dict:
    """Assign every file under `input_dir` to one of `n_shards` shards (indices into the sorted file list).

    Image files go with their series, SEGs with the series they reference (all of them), every other
    file (reports, unreadable or unsupported files) by the hash of its relative path.
    """
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    input_dir = Path(input_dir)
    scanned = scan(input_dir)
    series: dict[str, list] = defaultdict(list)
    for header in scanned.images:
        series[header.series_uid].append(header)
    group = _series_groups(series, scanned.segs)
    sop_to_series = {h.sop_uid: uid for uid, headers in series.items() for h in headers}
    shards: list[list[str]] = [[] for _ in range(n_shards)]

    def rel(path: Path) -> str:
        return path.relative_to(input_dir).as_posix()

    for uid, headers in series.items():
        shards[_bucket(group[uid], n_shards)] += [rel(h.path) for h in headers]
    for seg in scanned.segs:
        targets = sorted(_targets(seg, series, sop_to_series))
        key = group[targets[0]] if targets else rel(seg.path)
        shards[_bucket(key, n_shards)].append(rel(seg.path))
    for path in scanned.reports + [p for p, _ in scanned.quarantine]:
        shards[_bucket(rel(path), n_shards)].append(rel(path))
    planned = sum(len(s) for s in shards)
    assert planned == scanned.n_files, f"shard plan covers {planned} of {scanned.n_files} files"
    files = sorted(name for shard in shards for name in shard)  # every file once (asserted above): the sorted tree
    index = {name: i for i, name in enumerate(files)}
    # The plan names files by their index in the sorted tree, never by path: folder and file names
    # may carry patient identifiers, and the plan is an artifact an orchestrator stores.
    return {"n_shards": n_shards, "n_files": scanned.n_files, "files_sha256": _digest(files),
            "shards": [sorted(index[name] for name in s) for s in shards]}


def _input_files(input_dir: Path) -> list[str]:
    """Every file under `input_dir` as a relative POSIX path, in the order the plan indexes them."""
    return sorted(path.relative_to(input_dir).as_posix() for path in iter_files(input_dir))


def _digest(files: list[str]) -> str:
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def _shard_files(input_dir: Path, plan: dict, shard: int) -> list[str]:
    """The relative paths of `shard`'s files, after checking the tree is the one that was planned."""
    files = _input_files(input_dir)
    if len(files) != plan["n_files"] or _digest(files) != plan["files_sha256"]:
        raise ShardMergeError(f"the input tree changed since the plan ({len(files)} files now, {plan['n_files']} planned)")
    return [files[i] for i in plan["shards"][shard]]


def write_plan(input_dir: Path, n_shards: int, out_dir: Path) -> dict:
    plan = plan_shards(input_dir, n_shards)
    write_json(Path(out_dir) / PLAN_FILE, plan)
    return {k: plan[k] for k in ("n_shards", "n_files")} | {"files_per_shard": [len(s) for s in plan["shards"]]}


def _read_plan(plan_path: Path) -> dict:
    plan_path = Path(plan_path)
    return json.loads((plan_path / PLAN_FILE if plan_path.is_dir() else plan_path).read_text())


def run_ingest_shard(input_dir: Path, plan_path: Path, shard: int, out_dir: Path, params: IngestParams,
                     salt: str, workers: int = 1, holdout_devices: Sequence[str] = ()) -> dict:
    """Ingest one shard: its files, symlinked under their original relative paths, through `run_ingest`.

    MR standardization needs every series of a device, so the shard records its settings in
    shard.json and `merge_shards` runs that pass.
    """
    plan = _read_plan(plan_path)
    if not 0 <= shard < plan["n_shards"]:
        raise ValueError(f"shard {shard} is outside the plan's 0..{plan['n_shards'] - 1}")
    input_dir = Path(input_dir).resolve()
    with tempfile.TemporaryDirectory(prefix=f"medsegllm-shard{shard}-") as tmp:
        for rel in _shard_files(input_dir, plan, shard):
            link = Path(tmp) / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(input_dir / rel)
        summary = run_ingest(Path(tmp), out_dir, params, salt, workers=workers, standardize_mr=False)
    if summary["n_files"] != len(plan["shards"][shard]):
        raise ShardMergeError(f"shard {shard}: ingest saw {summary['n_files']} files, the plan has {len(plan['shards'][shard])}")
    standardization = {"params": params.mr_standardization.model_dump(), "holdout_devices": sorted(holdout_devices),
                       "histogram_bins": params.histogram_bins}
    write_json(Path(out_dir) / "shard.json", {"shard": shard, "n_shards": plan["n_shards"], "n_files": summary["n_files"],
                                              "mr_standardization": standardization})
    return summary


def _place(src: Path, dst: Path) -> None:
    """Hard link when the shard output shares the file system (no copy of the volumes), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def merge_shards(shard_dirs: list[Path], out_dir: Path, plan_path: Path | None = None) -> dict:
    """Merge shard outputs into one ingest output folder; raise ShardMergeError unless they add up exactly."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    remove_partials(out_dir)
    shard_dirs = [Path(d) for d in shard_dirs]
    summaries = [json.loads((d / "summary.json").read_text()) for d in shard_dirs]
    shard_infos = [json.loads((d / "shard.json").read_text()) for d in shard_dirs]
    if len({s["salt_fingerprint"] for s in summaries}) > 1:
        raise ShardMergeError("shards were ingested with different salts")
    if plan_path is not None:
        plan = _read_plan(plan_path)
        seen = sorted(info["shard"] for info in shard_infos)
        if seen != list(range(plan["n_shards"])):
            raise ShardMergeError(f"expected shards 0..{plan['n_shards'] - 1} once each, got {seen}")
        if sum(s["n_files"] for s in summaries) != plan["n_files"]:
            raise ShardMergeError("shard file counts do not add up to the planned files")
    rows, quarantine = [], []
    for shard_dir in shard_dirs:
        for row in pq.read_table(shard_dir / "manifest.parquet").to_pylist():
            for key in ("volume_path", "label_path"):
                if row[key]:
                    _place(shard_dir / row[key], out_dir / row[key])
            rows.append(row)
        quarantine += pq.read_table(shard_dir / "quarantine.parquet").to_pylist()
    for what, keys in (("series", [r["series_id"] for r in rows]), ("quarantined path", [q["path"] for q in quarantine])):
        if len(keys) != len(set(keys)):
            raise ShardMergeError(f"a {what} appears in more than one shard")
    rows.sort(key=lambda r: r["series_id"])
    settings = {json.dumps(info["mr_standardization"], sort_keys=True) for info in shard_infos}
    if len(settings) > 1:
        raise ShardMergeError("shards were ingested with different MR standardization settings")
    setting = json.loads(settings.pop())
    model = standardize(rows, out_dir, MRStandardizationParams(**setting["params"]), setting["holdout_devices"],
                        setting["histogram_bins"])  # rewrites (never modifies the shards' hard-linked) MR volumes
    write_json(out_dir / STANDARDIZATION_FILE, model)
    quarantine.sort(key=lambda r: r["path"])
    write_parquet(out_dir / "manifest.parquet", pa.Table.from_pylist(rows, schema=MANIFEST))
    write_parquet(out_dir / "quarantine.parquet", pa.Table.from_pylist(quarantine, schema=QUARANTINE))
    summary = {key: sum(s[key] for s in summaries) for key in SUMMED}
    summary |= {"salt_fingerprint": summaries[0]["salt_fingerprint"], "n_shards": len(shard_dirs),
                "shard_seconds": round(sum(s["seconds"] for s in summaries), 3),
                "seconds": round(time.perf_counter() - start, 3)}
    write_json(out_dir / "summary.json", summary)
    return summary
