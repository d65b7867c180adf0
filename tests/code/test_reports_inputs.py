"""Report inputs: JSONL, CSV, DICOM SR in a folder tree; identity pseudonyms; column errors."""

import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsegllm.common.deid import pseudonym
from medsegllm.reports.inputs import load_reports

SALT = "test-salt"


def write_sr(path: Path, accession: str, texts: list[str]) -> None:
    """A minimal Basic Text SR: a container whose TEXT items hold the report."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.PatientName = "Doe^Jane"
    ds.AccessionNumber = accession
    ds.StudyInstanceUID = generate_uid()
    ds.ValueType = "CONTAINER"
    items = []
    for text in texts:
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.TextValue = text
        items.append(item)
    section = Dataset()
    section.RelationshipType = "CONTAINS"
    section.ValueType = "CONTAINER"
    section.ContentSequence = Sequence(items)
    ds.ContentSequence = Sequence([section])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_jsonl_and_csv_with_identity(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"accession_number": "ACC1", "report_text": "Patient: John Smith. No renal mass."}) + "\n"
        + json.dumps({"accession_number": 77, "report_text": "A 2 cm HCC."}) + "\n"
    )
    (tmp_path / "b.csv").write_text('study_instance_uid,report_text\n1.2.3,"No focal liver lesion, none."\n')
    reports = load_reports(tmp_path, SALT)
    assert [r.accession_id for r in reports] == [pseudonym("ACC1", SALT), pseudonym("77", SALT), pseudonym("1.2.3", SALT)]
    assert reports[0].text == "Patient: [NAME]. No renal mass." and reports[0].phi_replaced == 1
    assert reports[2].text == "No focal liver lesion, none."
    assert len({r.report_id for r in reports}) == 3
    assert load_reports(tmp_path / "a.jsonl", SALT) == reports[:2]


def test_repeated_accession_gets_distinct_stable_report_ids(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("accession_number,report_text\nX,first\nX,addendum\n")
    ids = [r.report_id for r in load_reports(path, SALT)]
    assert ids[0] != ids[1] and ids == [r.report_id for r in load_reports(path, SALT)]
    assert ids[0] == pseudonym("X#0", SALT)


def test_dicom_sr_found_below_a_folder(tmp_path):
    write_sr(tmp_path / "dicom" / "p1" / "study" / "sr.dcm", "ACC9",
             ["FINDINGS: A 3 cm RCC in the left kidney.", "Dictated by Dr. House."])
    (tmp_path / "dicom" / "p1" / "notes.txt").write_text("not a report")
    (tmp_path / "dicom" / "p1" / "raw").write_bytes(b"\x00" * 200)
    (report,) = load_reports(tmp_path, SALT)
    assert report.accession_id == pseudonym("ACC9", SALT)
    assert report.text == "FINDINGS: A 3 cm RCC in the left kidney.\nDictated by Dr. [NAME]."


@pytest.mark.parametrize(
    ("name", "content"),
    [("r.csv", "accession_number,text\nA,x\n"), ("r.csv", "patient,report_text\nA,x\n"),
     ("r.jsonl", json.dumps({"report_text": "x"}) + "\n")],
)
def test_missing_columns_are_a_clear_error(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match="report_text.*accession_number.*study_instance_uid"):
        load_reports(tmp_path / name, SALT)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no reports found"):
        load_reports(tmp_path, SALT)
