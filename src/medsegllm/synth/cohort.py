"""The embedded demo cohort: the pipeline runs end to end with no outside data.

`generate_cohort` writes, under `out_dir`:
- `dicom/`: one axial CT or MR series per study (real DICOM, varied folder nesting and file
  names: `IM0001.dcm`, `slice_7.dcm`, `00000007`, `IM_0007`), and a DICOM SEG at
  `<study folder>/SEG/seg.dcm` for the voxel-labelled studies;
- `reports.jsonl`: one `{"accession_number", "report_text"}` line per study;
- `truth/masks/<SeriesInstanceUID>.nii.gz`: uint8 label map (knowledge.SEG_CLASSES) of every study;
- `truth/studies.jsonl`: per study the identifiers, device, split flags and lesion list;
- `cohort.json`: the summary `generate_cohort` returns.

Truth mask convention (the one nibabel's DICOM reader and dcm2niix-style RAS NIfTI use): array
axes are (DICOM column index, DICOM row index, slice index in order of increasing LPS z), and the
affine is the DICOM LPS geometry with x and y negated (LPS -> RAS):
`affine = diag(-1, -1, 1, 1) @ [[dx, 0, 0, x0], [0, dy, 0, y0], [0, 0, dz, z0], [0, 0, 0, 1]]`
where (x0, y0, z0) is ImagePositionPatient of the lowest slice, dx/dy the column/row spacing.
Lesion `center_mm` in the truth is in LPS patient coordinates.

Everything is a function of the seed: fixed dates, seeded UIDs and a seeded numpy Generator per
study, so one seed gives byte-identical files.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from medsegllm.common.io import remove_partials, save_nifti, write_json, write_text
from medsegllm.config import SynthParams
from medsegllm.knowledge import SUBTYPE_KEYS
from medsegllm.synth.dicom import StudyMeta, uid, write_seg, write_series
from medsegllm.synth.phantom import Grid, Lesion, make_phantom, organ_tissue, sample_anatomy, sample_lesions
from medsegllm.synth.render import render, to_stored
from medsegllm.synth.reports import write_report
from medsegllm.synth.scanners import SCANNERS, ScannerProfile

_FAMILY = ["Smith", "Johnson", "Garcia", "Miller", "Davis", "Martinez", "Lopez", "Wilson", "Anderson", "Taylor",
           "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker",
           "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams", "Nelson", "Hill"]
_GIVEN = {"F": ["Mary", "Linda", "Susan", "Karen", "Nancy", "Helen", "Ruth", "Anna", "Grace", "Julia"],
          "M": ["James", "Robert", "John", "Michael", "David", "William", "Thomas", "Peter", "George", "Henry"]}
_PHYSICIANS = ["Reed^Alice", "Okafor^Daniel", "Novak^Petra", "Hughes^Samuel", "Rossi^Marco", "Tanaka^Emi"]
_SUBTYPE_P = (0.35, 0.35, 0.30)  # hcc, metastasis, rcc
_BASE_DATE = date(2023, 1, 2)


@dataclass(frozen=True)
class StudyPlan:
    index: int
    scanner: ScannerProfile
    positive: bool
    labelled: bool
    phi: bool


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def scanner_counts(n_studies: int) -> list[int]:
    """Studies per scanner by weight (largest remainder); every scanner gets one when n >= 6."""
    weights = np.array([s.weight for s in SCANNERS])
    quota = n_studies * weights / weights.sum()
    counts = np.floor(quota).astype(int)
    if n_studies >= len(SCANNERS):
        counts = np.maximum(counts, 1)
    for i in np.argsort(-(quota - counts), kind="stable"):
        if counts.sum() >= n_studies:
            break
        counts[i] += 1
    while counts.sum() > n_studies:  # only when the minimum of one each overshot
        counts[int(np.argmax(counts))] -= 1
    return counts.tolist()


def plan_cohort(params: SynthParams, seed: int) -> list[StudyPlan]:
    """Which scanner each study comes from, and which are tumour-positive, labelled, PHI-bearing."""
    rng = np.random.default_rng([seed, 0x5EED])
    n = params.n_studies
    devices = np.array([i for i, c in enumerate(scanner_counts(n)) for _ in range(c)])
    devices = devices[rng.permutation(n)]
    visit = rng.permutation(n)
    rank = np.empty(n, dtype=int)
    rank[visit] = [int((devices[visit[:i]] == devices[visit[i]]).sum()) for i in range(n)]
    # Positives spread evenly over devices: first rank 0 of every device, then rank 1, ...
    order = np.lexsort((rng.random(n), rank))
    positive = np.zeros(n, dtype=bool)
    positive[order[: _round(params.tumour_fraction * n)]] = True
    labelled = _choose_labelled(devices, positive, params.label_fraction, rng)
    phi = np.zeros(n, dtype=bool)
    phi[rng.choice(n, size=_round(params.phi_fraction * n), replace=False)] = True
    return [StudyPlan(i, SCANNERS[devices[i]], bool(positive[i]), bool(labelled[i]), bool(phi[i])) for i in range(n)]


def _choose_labelled(devices: np.ndarray, positive: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Labelled studies: seen scanners only, stratified over them, at least half positive if possible."""
    seen = np.array([not SCANNERS[d].holdout for d in devices])
    n_label = min(max(2, _round(fraction * len(devices))), int(seen.sum()))
    want_pos = min(int(np.ceil(n_label / 2)), int((seen & positive).sum()))
    labelled = np.zeros(len(devices), dtype=bool)
    per_device = np.zeros(len(SCANNERS), dtype=int)
    tiebreak = rng.random(len(devices))
    for pick in range(n_label):
        need_pos = pick < want_pos
        pool = [i for i in range(len(devices)) if seen[i] and not labelled[i] and positive[i] == need_pos]
        pool = pool or [i for i in range(len(devices)) if seen[i] and not labelled[i]]
        best = min(pool, key=lambda i: (per_device[devices[i]], tiebreak[i]))
        labelled[best] = True
        per_device[devices[best]] += 1
    return labelled


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _meta(plan: StudyPlan, seed: int, rng: np.random.Generator) -> StudyMeta:
    sex = str(rng.choice(["F", "M"]))
    study_date = _BASE_DATE + timedelta(days=int(rng.integers(0, 700)))
    birth = date(int(rng.integers(1938, 1992)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    key = (seed, plan.index)
    return StudyMeta(
        patient_name=f"{_FAMILY[rng.integers(len(_FAMILY))]}^{_GIVEN[sex][rng.integers(len(_GIVEN[sex]))]}",
        patient_id=f"MRN{rng.integers(1000, 10000)}{plan.index:03d}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        phone=f"(555) {rng.integers(200, 1000)}-{rng.integers(0, 10000):04d}",
        accession_number=f"A{study_date:%y}{rng.integers(10000, 100000)}{plan.index:03d}",
        study_uid=uid(*key, "study"),
        series_uid=uid(*key, "series"),
        frame_uid=uid(*key, "frame"),
        study_date=study_date.strftime("%Y%m%d"),
        study_time=f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}",
        series_number=int(rng.integers(2, 10)),
        referring_physician=_PHYSICIANS[rng.integers(len(_PHYSICIANS))],
        study_description="CT ABDOMEN W CONTRAST" if plan.scanner.modality == "CT" else "MRI ABDOMEN W WO CONTRAST",
    )


def _grid(scanner: ScannerProfile, z_mid: float, rng: np.random.Generator) -> Grid:
    """Scanner geometry centred on the patient; values are rounded as DICOM strings will hold them."""
    d = float(f"{scanner.fov_mm / scanner.matrix:.6g}")
    dz = scanner.slice_thickness_mm
    n = int(rng.integers(scanner.n_slices[0], scanner.n_slices[1] + 1))
    half = (scanner.matrix - 1) / 2 * d
    origin = (round(-half, 2), round(-half + rng.uniform(0, 15), 2),
              round(z_mid + rng.uniform(-8, 8) - (n - 1) / 2 * dz, 2))
    return Grid(origin, (d, d, dz), (scanner.matrix, scanner.matrix, n))


def _dirs(dicom_root: Path, plan: StudyPlan, meta: StudyMeta, rng: np.random.Generator) -> tuple[Path, Path]:
    """(study folder, series folder) in one of several nesting styles seen in PACS exports."""
    desc = _slug(plan.scanner.series_description)
    style = int(rng.integers(3))
    if style == 0:
        study = dicom_root / meta.patient_id / f"{meta.study_date}_{meta.accession_number}"
        return study, study / f"{meta.series_number}_{desc}"
    if style == 1:
        study = dicom_root / meta.patient_id
        return study, study / f"{meta.series_number:03d}_{desc}"
    study = dicom_root / _slug(plan.scanner.institution) / f"{meta.patient_id}_{meta.study_date}"
    return study, study / f"S{meta.series_number:04d}"


def _lesion_record(lesion: Lesion) -> dict:
    return {"organ": lesion.organ, "location": lesion.location, "laterality": lesion.laterality,
            "subtype": lesion.subtype, "size_mm": lesion.size_mm, "dims_mm": list(lesion.dims_mm),
            "center_mm": list(lesion.center_mm)}


def _generate_study(plan: StudyPlan, out_dir: Path, seed: int, lesion_range: tuple[int, int]) -> tuple[dict, dict, int]:
    """Write one study's DICOM, truth mask and SEG; returns (report line, truth record, files written)."""
    rng = np.random.default_rng([seed, plan.index])
    scanner = plan.scanner
    meta = _meta(plan, seed, rng)
    anatomy = sample_anatomy(rng)
    grid = _grid(scanner, anatomy.z_mid, rng)
    tissue = organ_tissue(anatomy, grid)
    lesions: list[Lesion] = []
    if plan.positive:
        subtype = str(rng.choice(SUBTYPE_KEYS, p=_SUBTYPE_P))
        lesions = sample_lesions(anatomy, grid, tissue, subtype, int(rng.integers(lesion_range[0], lesion_range[1] + 1)), rng)
    phantom = make_phantom(anatomy, grid, lesions, tissue)
    pixels = to_stored(render(phantom, grid, scanner, rng), scanner)
    study_dir, series_dir = _dirs(out_dir / "dicom", plan, meta, rng)
    datasets = write_series(series_dir, meta, scanner, grid, pixels, seed, rng)
    save_nifti(out_dir / "truth" / "masks" / f"{meta.series_uid}.nii.gz", phantom.labels, grid.affine_ras())
    if plan.labelled:
        write_seg(study_dir / "SEG" / "seg.dcm", datasets, phantom.labels, meta, seed)
    report = {"accession_number": meta.accession_number,
              "report_text": write_report(meta, scanner, lesions, plan.phi, rng)}
    truth = {
        "series_instance_uid": meta.series_uid, "study_instance_uid": meta.study_uid,
        "accession_number": meta.accession_number, "modality": scanner.modality,
        "manufacturer": scanner.manufacturer, "model_name": scanner.model_name, "device_id": scanner.device_id,
        "holdout": scanner.holdout, "labelled": plan.labelled, "tumour_present": bool(lesions),
        "report_has_phi": plan.phi, "lesions": [_lesion_record(les) for les in lesions],
    }
    return report, truth, len(datasets) + int(plan.labelled)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def generate_cohort(out_dir: Path, params: SynthParams, seed: int) -> dict:
    """Write the demo cohort under out_dir (replacing an earlier one) and return its summary."""
    out_dir = Path(out_dir)
    remove_partials(out_dir)
    for owned in ("dicom", "truth"):
        shutil.rmtree(out_dir / owned, ignore_errors=True)
    plans = plan_cohort(params, seed)
    reports, truths, n_files = [], [], 0
    for plan in plans:
        report, truth, files = _generate_study(plan, out_dir, seed, params.lesions_per_tumour_study)
        reports.append(report)
        truths.append(truth)
        n_files += files
    write_text(out_dir / "reports.jsonl", _jsonl(reports))
    write_text(out_dir / "truth" / "studies.jsonl", _jsonl(truths))
    devices = {
        s.device_id: {
            "manufacturer": s.manufacturer, "model_name": s.model_name, "modality": s.modality,
            "holdout": s.holdout,
            "n_studies": sum(t["device_id"] == s.device_id for t in truths),
            "n_tumour": sum(t["device_id"] == s.device_id and t["tumour_present"] for t in truths),
            "n_labelled": sum(t["device_id"] == s.device_id and t["labelled"] for t in truths),
        }
        for s in SCANNERS
    }
    summary = {
        "seed": seed,
        "params": params.model_dump(),
        "n_studies": len(truths),
        "n_ct": sum(t["modality"] == "CT" for t in truths),
        "n_mr": sum(t["modality"] == "MR" for t in truths),
        "n_tumour": sum(t["tumour_present"] for t in truths),
        "n_lesions": sum(len(t["lesions"]) for t in truths),
        "n_labelled": sum(t["labelled"] for t in truths),
        "n_phi_reports": sum(t["report_has_phi"] for t in truths),
        "n_dicom_files": n_files,
        "holdout_devices": [s.device_id for s in SCANNERS if s.holdout],
        "devices": devices,
        "layout": {"dicom": "dicom", "reports": "reports.jsonl", "truth_masks": "truth/masks",
                   "truth_studies": "truth/studies.jsonl"},
    }
    write_json(out_dir / "cohort.json", summary)
    return summary
