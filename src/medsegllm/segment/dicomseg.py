"""The DICOM SEG a hospital PACS receives: binary, automatic, one segment per class found."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medsegllm import __version__
from medsegllm.common.io import write_with
from medsegllm.knowledge import SEG_CLASSES

# (segmented property category, segmented property type) per foreground class, SNOMED CT.
CLASS_CODES = {
    "liver": (codes.SCT.Organ, codes.SCT.Liver),
    "kidney": (codes.SCT.Organ, codes.SCT.Kidney),
    "lesion": (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
}


def present_classes(label: np.ndarray) -> list[int]:
    """Foreground label values that have at least one voxel, in SEG_CLASSES order."""
    return [value for value in range(1, len(SEG_CLASSES)) if np.any(label == value)]


def write_seg(path: Path, label: np.ndarray, source: list[pydicom.Dataset], series_number: int = 990,
              plane_positions: list[list[float]] | None = None) -> dict:
    """Write a BINARY SEG of `label` (X, Y, Z on the source grid, z in `source` order, or at
    `plane_positions`, one ImagePositionPatient per z); returns its segment names and frame count.

    Segments are numbered 1..k over the classes present (DICOM requires consecutive numbers) and
    named by class, so an empty class is simply absent. The caller must not pass an all-background
    label: a SEG needs at least one segment. The SEG references the source series' UIDs, as it must
    for a viewer to overlay it: it is meant for the hospital's own PACS, not for export.
    """
    import highdicom as hd

    classes = present_classes(label)
    if not classes:
        raise ValueError("label map has no foreground; a DICOM SEG needs at least one segment")
    numbered = np.zeros(label.shape, dtype=np.uint8)
    for number, value in enumerate(classes, start=1):
        numbered[label == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medsegllm", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=SEG_CLASSES[value],
            segmented_property_category=CLASS_CODES[SEG_CLASSES[value]][0],
            segmented_property_type=CLASS_CODES[SEG_CLASSES[value]][1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(classes, start=1)
    ]
    # highdicom logs source UIDs at INFO and warns with the patient's name: keep both out of the logs
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom\.")
        seg = _segmentation([filing_copy(source[0]), *source[1:]], numbered, descriptions, series_number, plane_positions)
    for item in seg.get("ContributingEquipmentSequence", []):
        for element in list(item):
            if element.keyword not in KEEP_IN_EQUIPMENT:
                del item[element.tag]
    write_with(path, lambda p: seg.save_as(p, enforce_file_format=True))
    return {"segments": [SEG_CLASSES[v] for v in classes], "n_frames": int(seg.NumberOfFrames)}


# Of the patient and study attributes highdicom copies from the source, the SEG keeps the keys a
# PACS files it by; the Type 2 ones it must carry but need not fill are blanked, the rest dropped,
# and Contributing Equipment keeps no institution, address, station or serial number.
KEEP_FROM_SOURCE = frozenset({"PatientName", "PatientID", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                              "StudyID", "AccessionNumber"})
BLANK_FROM_SOURCE = frozenset({"PatientBirthDate", "ReferringPhysicianName"})
KEEP_IN_EQUIPMENT = frozenset({"Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ContributionDateTime",
                               "ContributionDescription", "PurposeOfReferenceCodeSequence"})


def _patient_study_keywords(sop_class_uid: str) -> set[str]:
    """Root attributes of the Patient and Study entities of the source's IOD: what highdicom copies.

    highdicom exposes its DICOM-standard tables only in a private module (the version is pinned)."""
    from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

    modules = get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]
    return {str(item["keyword"]) for module in modules if module["ie"] in ("Patient", "Study")
            for item in get_module_attribute_map()[module["key"]] if not item["path"]}


def filing_copy(first: pydicom.Dataset) -> pydicom.Dataset:
    """The source slice highdicom copies patient and study from, reduced to the filing keys: free text
    (study description, comments, history), physicians and any other copied attribute are dropped,
    the birth date blanked (a malformed one would also stop highdicom). The patient's name and ID
    stay: the SEG is for the hospital's PACS, which files it with the images by them."""
    reduced = copy.deepcopy(first)  # one slice; pydicom's shallow copies share the elements
    for keyword in _patient_study_keywords(str(first.SOPClassUID)) - KEEP_FROM_SOURCE:
        if keyword in BLANK_FROM_SOURCE:
            setattr(reduced, keyword, "")
        elif keyword in reduced:
            del reduced[keyword]
    return reduced


def _segmentation(source: list[pydicom.Dataset], numbered: np.ndarray, descriptions: list, series_number: int,
                  plane_positions: list[list[float]] | None = None):
    import highdicom as hd

    if plane_positions is not None:
        plane_positions = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, position) for position in plane_positions]
    return hd.seg.Segmentation(
        source_images=source,
        pixel_array=np.ascontiguousarray(np.transpose(numbered, (2, 1, 0))),  # (slices, rows, columns)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="MedSegLLM",
        manufacturer_model_name="medsegllm",
        software_versions=__version__,
        device_serial_number="0",
        series_description="MedSegLLM automatic segmentation",
        content_description="automatic segmentation",
        # an empty SpecificCharacterSet means the default repertoire, which highdicom spells as None
        specific_character_set=source[0].get("SpecificCharacterSet") or None,
        plane_positions=plane_positions,
    )
