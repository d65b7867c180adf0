"""The direct pixel read (ingest/pixels.py) and the sorted decode: same values as pydicom's decoder,
pydicom for everything it does not cover, and short or odd pixel data still quarantined."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from medsegllm.bench.ingest import write_ct_series
from medsegllm.ingest.geometry import build_volume, pixels, stack_slices
from medsegllm.ingest import pixels as pixels_module
from medsegllm.ingest import series as series_module
from medsegllm.ingest.pixels import HEAD_BYTES, read_header, read_native
from medsegllm.ingest.scan import scan
from medsegllm.ingest.series import UNREADABLE, decode_series


def _reference(files: list[Path]):
    """The pre-change path: full pydicom read of every file, pydicom's pixel_array, planes stacked."""
    datasets = [pydicom.dcmread(path, force=True) for path in files]
    return build_volume(datasets, [pixels(ds) for ds in datasets])


def _native_values(path: Path) -> np.ndarray:
    ds, native = read_header(path)
    assert native is not None, "expected the direct read"
    stored = np.empty(native.shape, native.dtype)
    assert read_native(path, native, stored)
    return stored


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(folder, n_slices=7, size=24, seed=3)  # shuffled file names and instance numbers
    return sorted(folder.iterdir())


def test_sorted_decode_equals_pydicom_and_is_not_copied(series):
    datasets, slices, bad = decode_series(series)
    assert not bad
    volume, reference = build_volume(datasets, slices), _reference(series)
    np.testing.assert_array_equal(volume.array, reference.array)
    np.testing.assert_array_equal(volume.affine, reference.affine)
    assert volume.array.dtype == np.float32 and volume.array.flags.f_contiguous
    assert volume.order == list(range(len(series)))  # decode already sorted the slices by position
    assert np.shares_memory(volume.array, slices)  # and build_volume used its volume as is
    positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert positions == sorted(positions)


def test_stack_slices_orders_any_list():
    rng = np.random.default_rng(0)
    planes = [rng.normal(size=(20, 37)).astype(np.float32) for _ in range(40)]  # (X, Y)
    order = list(rng.permutation(40))
    np.testing.assert_array_equal(stack_slices(planes, order), np.stack([planes[i] for i in order], axis=-1))
    assert stack_slices(planes, order).flags.f_contiguous  # each slice one stored plane: nothing transposed


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("signed", [True, False])
def test_unused_high_bits_are_cleared_as_pydicom_does(series, tmp_path, syntax, signed):
    """12 bits stored in 16 with junk in the top 4: pydicom masks (unsigned) or sign-extends (signed)."""
    ds = pydicom.dcmread(series[0])
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 2**16, size=(ds.Rows, ds.Columns), dtype=np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, int(signed)
    ds.PixelData = raw.tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "junk_bits.dcm"
    ds.save_as(path, enforce_file_format=True)
    expected = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(_native_values(path)[0], expected)
    datasets, slices, bad = decode_series([path])
    assert not bad
    np.testing.assert_array_equal(build_volume(datasets, slices).array, _reference([path]).array)


def test_odd_length_8bit_with_padding_and_rescale(series, tmp_path):
    ds = pydicom.dcmread(series[0])
    ds.Rows, ds.Columns = 5, 7  # 35 bytes: one padding byte
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -3
    ds.PixelData = np.arange(35, dtype=np.uint8).tobytes() + b"\0"
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _native_values(path).shape == (1, 5, 7)
    datasets, slices, bad = decode_series([path])
    assert not bad
    np.testing.assert_array_equal(build_volume(datasets, slices).array, _reference([path]).array)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_padded.dcm"])  # the last: excess bytes after the pixels
def test_other_syntaxes_and_odd_lengths_go_to_pydicom(tmp_path, name):
    source = Path(get_testdata_file(name))
    assert read_header(source)[1] is None
    path = tmp_path / name
    shutil.copy(source, path)
    datasets, slices, bad = decode_series([path])
    assert not bad
    assert [plane.shape for plane in slices] == [pixels(pydicom.dcmread(source)).shape]
    np.testing.assert_array_equal(slices[0], pixels(pydicom.dcmread(source)))


def test_native_test_files_match_pydicom():
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"):
        path = Path(get_testdata_file(name))
        np.testing.assert_array_equal(_native_values(path)[0], pydicom.dcmread(path).pixel_array, err_msg=name)


def test_short_pixel_data_is_quarantined_not_read(series, tmp_path):
    """A truncated last slice: no direct read (its declared length is not there); pydicom fails it."""
    folder = tmp_path / "short"
    folder.mkdir()
    for path in series:
        shutil.copy(path, folder / path.name)
    files = sorted(folder.iterdir())
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[:-100])
    assert read_header(files[-1])[1] is None
    datasets, slices, bad = decode_series(files)
    assert [path for path, _ in bad] == [files[-1]]
    assert bad[0][1] in {UNREADABLE.format(kind) for kind in ("ValueError", "EOFError", "OSError")}
    assert len(datasets) == len(slices) == len(series) - 1


def test_declared_length_too_short_for_the_grid(series, tmp_path):
    """Rows says more than the element holds: pydicom decides (and rejects), nothing is over-read."""
    ds = pydicom.dcmread(series[0])
    ds.Rows = ds.Rows + 1
    path = tmp_path / "rows.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert read_header(path)[1] is None
    _, _, bad = decode_series([path])
    assert [p for p, _ in bad] == [path] and bad[0][1].startswith("pixel data unreadable")


def test_multiframe_enhanced_native(series, tmp_path):
    """A multi-frame object read directly equals its frames decoded by pydicom."""
    ds = pydicom.dcmread(series[0])
    frames = np.stack([pydicom.dcmread(p).pixel_array for p in series])
    enhanced = copy.deepcopy(ds)
    enhanced.NumberOfFrames = len(series)
    enhanced.PixelData = frames.tobytes()
    enhanced.SOPInstanceUID = enhanced.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "frames.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(_native_values(path), pydicom.dcmread(path).pixel_array)


def test_decode_with_the_scans_records_parses_no_header_again(series, monkeypatch):
    """Ingest's path: the scan's slice records stand in for the headers, with identical results."""
    headers = sorted(scan(series[0].parent).images, key=lambda h: str(h.path))
    assert all(h.native is not None for h in headers)
    full_headers, full_slices, _ = decode_series(series)
    expected = build_volume(full_headers, full_slices)
    monkeypatch.setattr(series_module, "read_header", _forbidden)
    monkeypatch.setattr(pydicom, "dcmread", _forbidden)
    datasets, slices, bad = decode_series([h.path for h in headers], [h.native for h in headers])
    assert not bad
    volume = build_volume(datasets, slices)
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_array_equal(volume.affine, expected.affine)
    assert [str(ds.SOPInstanceUID) for ds in datasets] == [str(ds.SOPInstanceUID) for ds in full_headers]


def _forbidden(*args, **kwargs):
    raise AssertionError("decode parsed a header the scan had already read")


def test_header_longer_than_the_prefix_is_read_from_the_file(series, tmp_path):
    """A header that does not end in the first HEAD_BYTES (here a long private text element) is
    parsed from the file: same dataset and the same pixel location as a plain read."""
    ds = pydicom.dcmread(series[0])
    block = ds.private_block(0x0011, "MEDSEGLLM TEST", create=True)
    block.add_new(0x01, "UT", "x" * (HEAD_BYTES + 1000))
    path = tmp_path / "long_header.dcm"
    ds.save_as(path, enforce_file_format=True)
    header, native = read_header(path)
    assert native is not None and native.offset > HEAD_BYTES
    assert header == pydicom.dcmread(path, stop_before_pixels=True)
    np.testing.assert_array_equal(_native_values(path)[0], pydicom.dcmread(path).pixel_array)


def test_prefix_cut_inside_an_element_falls_back_to_the_file(series, tmp_path, monkeypatch):
    """Whatever the prefix length, the header read equals pydicom's own: cut mid-element, at the
    pixel tag, or past the end of the file."""
    path = series[0]
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    offset = read_header(path)[1].offset
    for prefix in (1, 200, offset - 13, offset - 12, offset - 11, offset, path.stat().st_size + 1):
        monkeypatch.setattr(pixels_module, "HEAD_BYTES", prefix)
        header, native = read_header(path)
        assert header == reference, prefix
        assert native is not None and native.offset == offset, prefix
