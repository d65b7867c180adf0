"""`run_ingest`: DICOM folder tree -> harmonized volumes, labels, manifest, quarantine, summary.

Accounting is exact: every input file is an image of an accepted series, a label, a report
(routed to the reports stage) or a quarantine row, and the summary asserts that they add up.
Reruns are incremental: a series whose input hash and outputs are unchanged is not recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from medsegllm.common.deid import salt_fingerprint
from medsegllm.common.io import remove_partials, write_json, write_parquet
from medsegllm.common.schemas import MANIFEST
from medsegllm.config import IngestParams
from medsegllm.ingest.identity import header_device_id, pseudonyms
from medsegllm.ingest.quarantine import one_row_per_file, quarantine_table
from medsegllm.ingest.scan import ImageHeader, ScanResult, SegHeader, scan
from medsegllm.ingest.stacks import group_series
from medsegllm.ingest.series import SeriesJob, SeriesOutcome, process_series
from medsegllm.ingest.standardize import STANDARDIZATION_FILE, standardize

log = logging.getLogger(__name__)
WORKER_IMPORTS = ("medsegllm.ingest.series", "monai.transforms")  # what process_series needs, preloaded once
HARMONIZE_KEYS = {"target_spacing": True, "ct_window": True, "mr_percentiles": True, "histogram_bins": True,
                  "mr_standardization": {"landmarks"}}  # `enabled` is not here: the map is a pass over the outputs


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_hash(files: list[Path], params: IngestParams) -> str:
    """sha256 over the sorted content digests of the series' images and SEGs, plus the
    harmonization params (a changed spacing or window must not reuse old volumes); renames and
    moves do not change it."""
    digest = hashlib.sha256(json.dumps(params.model_dump(include=HARMONIZE_KEYS), sort_keys=True).encode())
    for item in sorted(file_digest(p) for p in files):
        digest.update(item.encode())
    return digest.hexdigest()


def _seg_targets(scanned: ScanResult, series: dict[str, list[ImageHeader]]) -> tuple[dict[str, list[Path]], list[tuple[Path, str]]]:
    """Attach each SEG or RTSTRUCT to the one series it references (by series UID, else by instance UIDs)."""
    sop_to_series = {h.sop_uid: uid for uid, headers in series.items() for h in headers}
    attached: dict[str, list[Path]] = defaultdict(list)
    rejected: list[tuple[Path, str]] = []
    for seg in scanned.segs:
        targets = _targets(seg, series, sop_to_series)
        if len(targets) == 1:
            attached[targets.pop()].append(seg.path)
        elif targets:
            rejected.append((seg.path, f"{seg.kind} references more than one series"))
        else:
            rejected.append((seg.path, f"{seg.kind} references no image series in the input"))
    return attached, rejected


def _targets(seg: SegHeader, series: dict[str, list[ImageHeader]], sop_to_series: dict[str, str]) -> set[str]:
    """The series keys a label object belongs to: by series UID, narrowed by its instance UIDs where
    that UID was split into stacks; by instance UIDs alone when it names no series of the input."""
    by_series = {key for key, headers in series.items() if headers[0].series_uid in seg.referenced_series}
    by_sop = {sop_to_series[s] for s in seg.referenced_sops if s in sop_to_series}
    return (by_series & by_sop) or by_series or by_sop


def _previous_rows(out_dir: Path) -> dict[str, dict]:
    path = out_dir / "manifest.parquet"
    if not path.exists():
        return {}
    return {row["series_id"]: row for row in pq.read_table(path).to_pylist()}


def _reusable(row: dict | None, job: SeriesJob) -> bool:
    """Same inputs and outputs still on disk; SEG outcomes are not stored, so only a clean label is reused."""
    if row is None or row["input_hash"] != job.input_hash or row.get("stack_label") != job.stack or row["device_id"] != job.device_id:
        return False
    if not (job.out_dir / row["volume_path"]).exists():
        return False
    if job.seg_files:
        return len(job.seg_files) == 1 and bool(row["has_label"]) and (job.out_dir / row["label_path"]).exists()
    return not row["has_label"]


def _jobs(series: dict[str, list[ImageHeader]], segs: dict[str, list[Path]], out_dir: Path, params: IngestParams, salt: str) -> list[SeriesJob]:
    jobs = []
    for key in sorted(series):
        headers = sorted(series[key], key=lambda h: str(h.path))
        first = headers[0]
        files = [h.path for h in headers]
        jobs.append(
            SeriesJob(
                files=files,
                native=[h.native for h in headers],
                seg_files=sorted(segs.get(key, [])),
                out_dir=out_dir,
                params=params,
                identity=pseudonyms(key, first.study_uid, first.patient_id, first.accession, salt),
                stack=first.stack,
                modality=first.modality,
                manufacturer=first.manufacturer,
                model_name=first.model_name,
                device_id=header_device_id(first.manufacturer, first.model_name, first.station, params.device_station, salt),
                input_hash=input_hash(files + sorted(segs.get(key, [])), params),
                frame_stack=first.frame_stack,
            )
        )
    return jobs


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where the platform has one: its server imports the workers' libraries once (importing
    MONAI takes seconds, as long as a small series' work) and every worker forks from it, sharing those
    pages. Never plain fork: a forked child of a process that already runs torch threads can deadlock;
    the server never runs torch. spawn elsewhere."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(WORKER_IMPORTS))
    return context


def _plan(jobs: list[SeriesJob], out_dir: Path) -> tuple[list[dict], list[SeriesJob], set[Path], int]:
    """Rows of the previous run that still hold (same inputs, outputs intact), the jobs left to run,
    and the image files and number of label files the reused rows account for."""
    previous = _previous_rows(out_dir)
    rows, todo, image_files, n_labels = [], [], set(), 0
    for job in jobs:
        row = previous.get(job.identity["series_id"])
        if _reusable(row, job):
            rows.append(row)
            image_files.update(job.files)
            n_labels += len(job.seg_files)
        else:
            todo.append(job)
    return rows, todo, image_files, n_labels


def _pool(workers: int) -> ProcessPoolExecutor | nullcontext:
    """The stage's worker processes (the header scan and the series share them); none for one worker."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) if workers > 1 else nullcontext()


def _run_jobs(jobs: list[SeriesJob], pool: ProcessPoolExecutor | None) -> list[tuple[SeriesJob, SeriesOutcome]]:
    progress = tqdm(total=len(jobs), desc="ingest series", unit="series", file=sys.stderr, disable=not jobs)
    results = []
    with progress:
        if pool is None:
            for job in jobs:
                results.append((job, process_series(job)))
                progress.update()
        else:
            futures = {pool.submit(process_series, job): job for job in jobs}
            for future in as_completed(futures):
                results.append((futures[future], future.result()))
                progress.update()
    return results


def run_ingest(input_dir: Path, out_dir: Path, params: IngestParams, salt: str, workers: int = 1,
               holdout_devices: Sequence[str] = (), standardize_mr: bool = True) -> dict:
    """Scan, group, assemble, harmonize and de-identify; write volumes/, labels/ and the tables.

    MR standardization learns its standard scale on devices outside `holdout_devices`;
    `standardize_mr=False` leaves that pass to `merge_shards` (a shard sees only some devices).
    """
    start = time.perf_counter()
    input_dir, out_dir = Path(input_dir), Path(out_dir)
    remove_partials(out_dir)
    with _pool(workers) as pool:
        scanned = scan(input_dir, pool)
        series = group_series(scanned.images)
        segs, quarantine = _seg_targets(scanned, series)
        quarantine = scanned.quarantine + quarantine
        rows, todo, image_files, n_labels = _plan(_jobs(series, segs, out_dir, params, salt), out_dir)
        n_reused = len(rows)
        for job, outcome in _run_jobs(todo, pool):
            quarantine += outcome.quarantine
            n_labels += outcome.n_label_files
            if outcome.row is not None:
                rows.append(outcome.row)
                image_files.update(job.files)
    rows.sort(key=lambda r: r["series_id"])
    if standardize_mr:
        model = standardize(rows, out_dir, params.mr_standardization, holdout_devices, params.histogram_bins)
        write_json(out_dir / STANDARDIZATION_FILE, model)
    quarantine = one_row_per_file(quarantine)
    # a file is an image file when it is in the manifest and not quarantined: an enhanced object split into
    # volumes can be both, when some of its volumes fail (its row then names them)
    n_images = len(image_files - {path for path, _ in quarantine})
    quarantine_rows = quarantine_table(quarantine, input_dir, salt, params.pseudonymize_paths)
    write_parquet(out_dir / "manifest.parquet", pa.Table.from_pylist(rows, schema=MANIFEST))
    write_parquet(out_dir / "quarantine.parquet", quarantine_rows)
    summary = {
        "n_files": scanned.n_files,
        "n_series": len(rows),
        "n_reused_series": n_reused,
        "n_image_files": n_images,
        "n_label_files": n_labels,
        "n_report_files": len(scanned.reports),
        "n_quarantined_files": quarantine_rows.num_rows,
        "salt_fingerprint": salt_fingerprint(salt),
        "seconds": round(time.perf_counter() - start, 3),
    }
    accounted = n_images + n_labels + summary["n_report_files"] + summary["n_quarantined_files"]
    assert accounted == scanned.n_files, f"ingest accounting: {accounted} classified != {scanned.n_files} files"
    write_json(out_dir / "summary.json", summary)
    log.info("ingest: %d series (%d reused), %d files quarantined", len(rows), n_reused, quarantine_rows.num_rows)
    return summary
