"""Ingest read-and-assemble of one CT series: our path vs dcm2niix vs MONAI LoadImage.

Our path is what `run_ingest` does before harmonization: header scan and series grouping
(`scan`), decode (`series.decode_series`: the scan's slice records, pixels straight into the sorted volume) and
geometry (`build_volume`). Harmonization (resample + intensity window) is timed on its own because
the other tools do not do it. `read_files` (every file's bytes read from the page cache, nothing
parsed) is the floor any reader of the folder pays.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, generate_uid

from medsegllm.bench.timing import paired_ratio, ratio, summary, timed
from medsegllm.config import IngestParams
from medsegllm.ingest.geometry import Volume, build_volume
from medsegllm.ingest.harmonize import harmonize_volume
from medsegllm.ingest.run import WORKER_IMPORTS, run_ingest
from medsegllm.ingest.scan import scan
from medsegllm.ingest.stacks import group_series
from medsegllm.ingest.series import decode_series
from medsegllm.synth.dicom import new_instance

SLOW_SECONDS = 60.0  # a tool slower than this on its first run is run once, not `reps` times


def write_ct_series(folder: Path, n_slices: int, size: int, seed: int = 0) -> dict:
    """A synthetic int16 CT series (body ellipse + noise), one file per slice, shuffled names and
    instance numbers so sorting by position is actually exercised."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    body = ((xx - size / 2) / (0.42 * size)) ** 2 + ((yy - size / 2) / (0.32 * size)) ** 2 < 1
    spacing, step = 0.7, 1.25
    order = rng.permutation(n_slices)
    for k in range(n_slices):
        pixels = np.where(body, 1064, 24).astype(np.int16) + rng.normal(0, 20, (size, size)).astype(np.int16)
        ds = new_instance(CTImageStorage, generate_uid())
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "BENCH", "SYNTHETIC"
        ds.PatientID, ds.AccessionNumber = "BENCH", "BENCH0001"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, int(order[k]) + 1
        ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, k * step]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = step
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = pixels.astype("<i2").tobytes()
        pydicom.dcmwrite(folder / f"IM{int(order[k]):05d}.dcm", ds, enforce_file_format=True)
    return {"n_slices": n_slices, "rows": size, "columns": size, "dtype": "int16",
            "megabytes": round(n_slices * size * size * 2 / 2**20, 1)}


def read_ours(folder: Path) -> Volume:
    """Ingest's own read-and-assemble: scan headers, group by series, decode, sort, stack."""
    scanned = scan(folder)
    groups = group_series(scanned.images)
    if len(groups) != 1 or scanned.quarantine:
        raise RuntimeError("benchmark series did not scan as exactly one clean series")
    headers = sorted(next(iter(groups.values())), key=lambda h: str(h.path))
    datasets, slices, bad = decode_series([h.path for h in headers], [h.native for h in headers])
    if bad:
        raise RuntimeError(f"benchmark series has unreadable files: {bad[:1]}")
    return build_volume(datasets, slices)


def ours_breakdown(folder: Path) -> dict[str, float]:
    """Seconds per phase of `read_ours` (header scan, decode into the volume, geometry), and the
    time to read the files' bytes alone."""
    scan_s, scanned = timed(lambda: scan(folder))
    headers = sorted(scanned.images, key=lambda h: str(h.path))
    files = [h.path for h in headers]
    decode_s, (datasets, slices, _) = timed(lambda: decode_series(files, [h.native for h in headers]))
    assemble_s, _ = timed(lambda: build_volume(datasets, slices))
    read_s, _ = timed(lambda: [path.read_bytes() for path in files])
    return {"scan_headers": scan_s, "decode": decode_s, "build_volume": assemble_s, "read_files": read_s}


def dcm2niix_path() -> str | None:
    """dcm2niix from the venv (next to this interpreter) first, then PATH."""
    local = Path(sys.executable).parent / "dcm2niix"
    return str(local) if local.exists() else shutil.which("dcm2niix")


def read_dcm2niix(binary: str, folder: Path) -> None:
    """Uncompressed NIfTI into a fresh temp folder (no BIDS sidecar); the NIfTI write is included."""
    with tempfile.TemporaryDirectory(prefix="bench-dcm2niix-") as out:
        subprocess.run([binary, "-z", "n", "-b", "n", "-o", out, "-f", "vol", str(folder)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def read_monai(folder: Path) -> object:
    """MONAI's DICOM folder reader, as a plain MONAI pipeline would load the series."""
    from monai.transforms import LoadImage

    return LoadImage(reader="PydicomReader", image_only=True)(str(folder))


def import_seconds(modules: str) -> float:
    """Wall time of a fresh interpreter importing `modules` (what a stage or a spawned worker pays once)."""
    seconds, _ = timed(lambda: subprocess.run([sys.executable, "-c", f"import {modules}"], check=True))
    return seconds


def bench_workers(workdir: Path, n_series: int, n_slices: int, size: int, reps: int) -> dict:
    """`run_ingest` end to end (scan, decode, harmonize, de-identify, write) on a cohort of series, with 1
    and 2 workers, each into a fresh output folder. One untimed run per worker count first: it pays the
    one-time import of the workers' libraries (timed on its own), so the figures are throughput."""
    root = workdir / "cohort"
    for index in range(n_series):
        write_ct_series(root / f"series{index:03d}", n_slices, size, seed=index)
    n_files = n_series * n_slices
    mib = n_files * size * size * 2 / 2**20
    results: dict = {"n_series": n_series, "n_files": n_files, "megabytes": round(mib, 1),
                     "slices": n_slices, "size": size, "cpu_count": os.cpu_count(),
                     "import_s": import_seconds(", ".join(WORKER_IMPORTS))}
    times: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(reps + 1):  # rep 0 warms up: imports in this process and in the forkserver
        for workers in times:
            out = workdir / f"ingest-out-{workers}-{rep}"
            seconds, _ = timed(lambda: run_ingest(root, out, IngestParams(), "bench-salt", workers=workers))
            shutil.rmtree(out, ignore_errors=True)
            if rep:
                times[workers].append(seconds)
    for workers, runs in times.items():
        median = statistics.median(runs)
        results[f"workers_{workers}"] = {**summary(runs), "series_per_s": n_series / median,
                                         "files_per_s": n_files / median, "mib_per_s": mib / median}
    results["speedup_2_over_1"] = paired_ratio(times[1], times[2])
    shutil.rmtree(root, ignore_errors=True)
    return results


def _repeat(fn, reps: int) -> dict:
    """Run `fn` up to `reps` times; one run only when the first is slower than SLOW_SECONDS."""
    times = [timed(fn)[0]]
    while len(times) < reps and times[0] < SLOW_SECONDS:
        times.append(timed(fn)[0])
    return summary(times)


def bench_ingest(n_slices: int, size: int, reps: int, workdir: Path, cohort: tuple[int, int, int] = (16, 64, 256)) -> dict:
    """Write the series, then time the three readers back to back and harmonization separately; then
    the whole stage's throughput with 1 and 2 workers on a cohort of (series, slices, size) series."""
    folder = workdir / "ct_series"
    write_s, series = timed(lambda: write_ct_series(folder, n_slices, size))
    volume = read_ours(folder)  # warm the page cache and imports so run 1 is not a cold outlier
    binary = dcm2niix_path()
    import monai.transforms  # noqa: F401  (import cost is not read time)
    ours, dcm, monai = [], [], []
    for _ in range(reps):  # interleaved, so a neighbour's load burst hits all tools alike
        ours.append(timed(lambda: read_ours(folder))[0])
        if binary:
            dcm.append(timed(lambda: read_dcm2niix(binary, folder))[0])
        if not monai or (len(monai) < reps and monai[0] < SLOW_SECONDS):
            monai.append(timed(lambda: read_monai(folder))[0])
    phases = [ours_breakdown(folder) for _ in range(reps)]
    params = IngestParams()
    harmonize = _repeat(lambda: harmonize_volume(volume.array, volume.affine, "CT", params), reps)
    results = {
        "series": {**series, "write_seconds": round(write_s, 2), "volume_shape": list(volume.array.shape)},
        "ours": summary(ours),
        "dcm2niix": summary(dcm) if dcm else None,
        "dcm2niix_binary": binary,
        "monai_loadimage": summary(monai),
        "ours_phases_median_s": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
        "paired_ratio_monai_over_ours": paired_ratio(monai, ours[: len(monai)]),
        "paired_ratio_ours_over_dcm2niix": paired_ratio(ours, dcm) if dcm else None,
        "harmonize": {**harmonize, "target_spacing": list(params.target_spacing)},
    }
    ours_s = results["ours"]["median_s"]
    dcm_s = results["dcm2niix"]["median_s"] if dcm else None
    results["speedup_vs_monai"] = ratio(results["monai_loadimage"]["median_s"], ours_s)
    results["slowdown_vs_dcm2niix"] = ratio(ours_s, dcm_s)
    monai_x, dcm_x = results["paired_ratio_monai_over_ours"], results["paired_ratio_ours_over_dcm2niix"]
    results["goals"] = [
        {"goal": ">= 5x faster than MONAI LoadImage(PydicomReader)", "value": monai_x,
         "measure": "paired MONAI s / our s", "met": monai_x is not None and monai_x >= 5.0},
        {"goal": "within 3x of dcm2niix wall time", "value": dcm_x,
         "measure": "paired our s / dcm2niix s", "met": dcm_x is not None and dcm_x <= 3.0},
    ]
    shutil.rmtree(folder, ignore_errors=True)
    results["workers"] = bench_workers(workdir, *cohort, reps)
    return results
