"""A series that holds several stacks (echoes, magnitude/phase, localizer planes) is split into them,
each ingested as its own volume; a plain series keeps its identity."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from pydicom.uid import generate_uid

from medsegllm.common.deid import pseudonym
from medsegllm.ingest.run import _targets, run_ingest
from medsegllm.ingest.scan import SegHeader, scan
from medsegllm.ingest.stacks import group_series
from tests.code.test_ingest_scan import PARAMS, SALT, make_slice

AXIAL, CORONAL, SAGITTAL = [1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1]


def _write(folder: Path, series: str, slices: list[dict]) -> list[str]:
    """One file per slice; each dict sets z and any extra attributes. Returns the SOP instance UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    sops = []
    for n, attributes in enumerate(slices):
        attributes = dict(attributes)
        ds = make_slice(series, attributes.pop("z"), n + 1, sop_class="1.2.840.10008.5.1.4.1.1.4", modality="MR")
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f"f{n:03d}", enforce_file_format=True)
        sops.append(str(ds.SOPInstanceUID))
    return sops


def _ingest(tree: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    summary = run_ingest(tree, out, PARAMS, SALT)
    return pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(out / "quarantine.parquet"), summary


def test_echoes_and_magnitude_phase_become_stacks(tmp_path: Path):
    echoes, parts, plain = generate_uid(), generate_uid(), generate_uid()
    _write(tmp_path / "in" / "echoes", echoes, [{"z": z, "EchoNumbers": e, "EchoTime": 5.0 * e} for e in (1, 2) for z in (0, 2, 4, 6)])
    _write(tmp_path / "in" / "parts", parts, [{"z": z, "ImageType": ["ORIGINAL", "PRIMARY", t, "ND"]}
                                             for t in ("M", "P") for z in (0, 2, 4)])
    _write(tmp_path / "in" / "plain", plain, [{"z": z, "EchoNumbers": 1} for z in (0, 2, 4)])
    manifest, quarantine, summary = _ingest(tmp_path / "in", tmp_path / "out")
    assert quarantine.empty and summary["n_image_files"] == 8 + 6 + 3
    stacks = dict(zip(manifest.series_id, zip(manifest.stack_label, manifest.n_slices)))
    assert stacks == {
        pseudonym(f"{echoes}#echo=1", SALT): ("echo=1", 4), pseudonym(f"{echoes}#echo=2", SALT): ("echo=2", 4),
        pseudonym(f"{parts}#type=M", SALT): ("type=M", 3), pseudonym(f"{parts}#type=P", SALT): ("type=P", 3),
        pseudonym(plain, SALT): ("", 3),  # one stack: the series' own pseudonym, as before stacks existed
    }


def test_localizer_planes_become_stacks(tmp_path: Path):
    uid = generate_uid()
    _write(tmp_path / "in", uid, [{"z": 0.0, "ImageOrientationPatient": orientation}
                                  for orientation in (AXIAL, CORONAL, SAGITTAL)]
           + [{"z": 3.0, "ImageOrientationPatient": [1, 0, 0, 0, 1.0 - 5e-5, 0]}])  # within geometry's tolerance of axial
    groups = group_series(scan(tmp_path / "in").images)
    assert sorted((header.stack, len(headers)) for header, headers in ((h[0], h) for h in groups.values())) == [
        ("plane=1", 1), ("plane=2", 1), ("plane=3", 2)]  # sorted orientation order: sagittal, coronal, axial
    manifest, quarantine, _ = _ingest(tmp_path / "in", tmp_path / "out")
    assert quarantine.empty and sorted(manifest.n_slices) == [1, 1, 2]


def test_same_positions_without_a_stack_attribute_stay_a_quarantined_series(tmp_path: Path):
    """Repeats that no attribute explains (a 4D or a duplicated export) are not guessed apart."""
    _write(tmp_path / "in", generate_uid(), [{"z": z} for z in (0, 2, 4, 0, 2, 4)])
    manifest, quarantine, _ = _ingest(tmp_path / "in", tmp_path / "out")
    assert manifest.empty and set(quarantine.reason) == {"duplicate slice positions within series"}


def test_a_label_object_follows_the_stack_whose_images_it_references(tmp_path: Path):
    uid = generate_uid()
    sops = _write(tmp_path / "in", uid, [{"z": z, "EchoNumbers": e} for e in (1, 2) for z in (0, 2)])
    series = group_series(scan(tmp_path / "in").images)
    sop_to_series = {h.sop_uid: key for key, headers in series.items() for h in headers}
    seg = SegHeader(tmp_path / "seg", {uid}, {sops[2], sops[3]})  # echo 2's images
    assert _targets(seg, series, sop_to_series) == {f"{uid}#echo=2"}
    assert _targets(SegHeader(tmp_path / "seg", {uid}, set()), series, sop_to_series) == set(series)  # ambiguous


def test_time_points_become_stacks(tmp_path: Path):
    """A 4D series: TemporalPositionIdentifier always splits; TriggerTime and AcquisitionNumber split only
    where positions repeat and they tell every repeat apart."""
    dynamic, cardiac, gated, unexplained = (generate_uid() for _ in range(4))
    _write(tmp_path / "in" / "dce", dynamic, [{"z": z, "TemporalPositionIdentifier": t} for t in (1, 2, 3) for z in (0, 2, 4)])
    _write(tmp_path / "in" / "cine", cardiac, [{"z": z, "TriggerTime": t} for t in ("0", "350.5") for z in (0, 2)])
    # a 3D gated series: every slice has its own trigger time, positions never repeat: one volume
    _write(tmp_path / "in" / "gated", gated, [{"z": z, "TriggerTime": str(100 + 7 * n)} for n, z in enumerate((0, 2, 4))])
    # repeats that AcquisitionNumber does not explain (both repeats in acquisition 1): still quarantined
    _write(tmp_path / "in" / "dup", unexplained, [{"z": z, "AcquisitionNumber": a} for z, a in ((0, 1), (0, 1), (2, 2))])
    manifest, quarantine, summary = _ingest(tmp_path / "in", tmp_path / "out")
    stacks = dict(zip(manifest.series_id, zip(manifest.stack_label, manifest.n_slices)))
    assert stacks == {
        **{pseudonym(f"{dynamic}#time={t}", SALT): (f"time={t}", 3) for t in (1, 2, 3)},
        pseudonym(f"{cardiac}#trigger=0", SALT): ("trigger=0", 2), pseudonym(f"{cardiac}#trigger=350.5", SALT): ("trigger=350.5", 2),
        pseudonym(gated, SALT): ("", 3),
    }
    assert list(quarantine.reason.unique()) == ["duplicate slice positions within series"] and len(quarantine) == 3
