"""header_get (ingest/values.py) on constructed headers: pydicom's values, and pydicom's errors
where a value is malformed, whatever the encoding."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from medsegllm.ingest.values import header_get

KEYWORDS = ("Modality", "SeriesInstanceUID", "PatientID", "Manufacturer", "Rows", "BitsAllocated",
            "ImageType", "ImageOrientationPatient", "EchoNumbers", "NumberOfFrames", "SliceThickness", "StationName")


def _roundtrip(syntax: str, **values) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.Rows, ds.BitsAllocated = "MR", generate_uid(), 256, 16
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]
    ds.EchoNumbers, ds.NumberOfFrames, ds.SliceThickness = 2, 1, "1.25"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return _written(ds)


def _written(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _both(data: bytes, keyword: str):
    outcomes = []
    for get in (header_get, lambda ds, k: ds.get(k)):
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        try:
            value = get(ds, keyword)
            outcomes.append(("value", type(value).__name__, list(value) if isinstance(value, pydicom.multival.MultiValue) else value))
        except Exception as exc:
            outcomes.append(("raises", type(exc).__name__))
    return outcomes


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_values_match_pydicom_in_every_encoding(syntax):
    data = _roundtrip(syntax, PatientID="P-7", Manufacturer="SIEMENS ", StationName="CT01")
    for keyword in KEYWORDS:
        fast, reference = _both(data, keyword)
        assert fast == reference, keyword
    ds = pydicom.dcmread(io.BytesIO(data))
    assert header_get(ds, "Rows") == 256 and list(header_get(ds, "ImageOrientationPatient")) == [1, 0, 0, 0, 0.8, -0.6]
    assert header_get(ds, "Manufacturer") == "SIEMENS" and header_get(ds, "AccessionNumber", "none") == "none"


def test_text_is_decoded_with_the_files_character_set():
    data = _roundtrip(ExplicitVRLittleEndian, SpecificCharacterSet="ISO_IR 192", Manufacturer="Hôpital Straße", PatientID="Zoë")
    for keyword in ("Manufacturer", "PatientID", "SpecificCharacterSet"):
        fast, reference = _both(data, keyword)
        assert fast == reference, keyword
    assert header_get(pydicom.dcmread(io.BytesIO(data)), "Manufacturer") == "Hôpital Straße"


@pytest.mark.parametrize("keyword, raw", [("EchoNumbers", b"two "), ("SliceThickness", b"1,25"), ("Rows", b"\x01"),
                                          ("ImageOrientationPatient", b"1\\0\\x\\0\\1\\0 ")])
def test_malformed_values_fail_or_pass_exactly_as_in_pydicom(keyword, raw):
    ds = pydicom.dcmread(io.BytesIO(_roundtrip(ImplicitVRLittleEndian)))
    element = ds.get_item(pydicom.datadict.tag_for_keyword(keyword))
    ds[element.tag] = pydicom.dataelem.RawDataElement(element.tag, None, len(raw), raw, element.value_tell, True, True)
    fast, reference = _both(_written(ds), keyword)
    assert fast == reference


def test_slice_records_built_in_memory_match_pydicom(tmp_path):
    """The scan's NativeSlice views hold raw elements in a dataset with no file (no character set of its own)."""
    from medsegllm.ingest.pixels import SLICE_TAGS, native_slice, read_header

    ds = pydicom.dcmread(io.BytesIO(_roundtrip(ExplicitVRLittleEndian, PixelSpacing=[0.7, 0.7], ImagePositionPatient=[1, 2, 3.5],
                                               RescaleSlope="1.5", RescaleIntercept="-1024", SamplesPerPixel=1)))
    ds.Columns, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PhotometricInterpretation = 2, 16, 15, 1, "MONOCHROME2"
    ds.Rows, ds.PixelData = 2, bytes(8)
    ds["PixelData"].VR = "OW"
    ds.save_as(tmp_path / "f.dcm", enforce_file_format=True)
    record = native_slice(*read_header(tmp_path / "f.dcm"))
    keywords = [pydicom.datadict.keyword_for_tag(tag) for tag in SLICE_TAGS]
    fast = [header_get(record.view, k) for k in keywords]
    record = native_slice(*read_header(tmp_path / "f.dcm"))
    assert fast == [record.view.get(k) for k in keywords] and fast[keywords.index("RescaleSlope")] == 1.5


@pytest.mark.parametrize("raw", [b"1.5\\-2\\3e1 ", b" 0.7\\0.7", b"1,25\\2", b"1.5\\\\2 ", b"1.5\x00", b"nan\\1\\2", b"\xff1\\2\\3 "])
def test_decimal_strings_parse_or_fail_as_in_pydicom(raw):
    from medsegllm.ingest.values import header_floats

    ds = pydicom.dcmread(io.BytesIO(_roundtrip(ImplicitVRLittleEndian)))
    tag = pydicom.datadict.tag_for_keyword("ImagePositionPatient")
    ds[tag] = pydicom.dataelem.RawDataElement(tag, None, len(raw), raw, 0, True, True)
    data = _written(ds)
    outcomes = []
    def reference(d, k):  # one value or several, as floats; header_floats lists a single value too
        value = d.get(k)
        return [float(v) for v in (value if isinstance(value, pydicom.multival.MultiValue) else [value])]

    for get in (header_floats, reference):
        try:
            outcomes.append(("value", repr(get(pydicom.dcmread(io.BytesIO(data)), "ImagePositionPatient"))))
        except Exception as exc:
            outcomes.append(("raises", type(exc).__name__))
    assert outcomes[0] == outcomes[1]
