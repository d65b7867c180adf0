"""Table schemas of the stages' outputs, defined once, in pyarrow.

They are the data contracts of DESIGN.md: later stages, the data gates and outside checks rely on
these names and types.
"""

from __future__ import annotations

import pyarrow as pa

MANIFEST = pa.schema(
    [
        ("series_id", pa.string()),  # pseudonym of SeriesInstanceUID (+ "#" + stack when split); also the file stem
        ("stack_label", pa.string()),  # "" for a whole series; which stack of a split series: "echo=2", "type=P", "plane=1", "time=3"
        ("study_id", pa.string()),  # pseudonym of StudyInstanceUID
        ("patient_id", pa.string()),  # pseudonym of PatientID
        ("accession_id", pa.string()),  # pseudonym of AccessionNumber: the link to reports
        ("modality", pa.string()),  # "CT" or "MR"
        ("device_id", pa.string()),  # normalized Manufacturer + ManufacturerModelName (+ "_st" + salted StationName token, ingest.device_station)
        ("manufacturer", pa.string()),
        ("model_name", pa.string()),
        ("n_slices", pa.int32()),
        ("source_spacing", pa.list_(pa.float64(), 3)),
        ("shape", pa.list_(pa.int32(), 3)),  # harmonized volume, RAS x y z
        ("spacing", pa.list_(pa.float64(), 3)),
        ("volume_path", pa.string()),  # relative to the ingest output folder
        ("label_path", pa.string()),  # null when the series has no voxel label
        ("has_label", pa.bool_()),
        ("input_hash", pa.string()),  # sha256 over the series' files: incremental reruns
        ("raw_histogram", pa.list_(pa.float32())),  # before harmonization, fixed per-modality bins
        ("histogram", pa.list_(pa.float32())),  # after harmonization, bins over [0, 1]
        ("mr_landmarks", pa.list_(pa.float64())),  # MR: foreground percentiles before standardization; null for CT
        ("mr_map", pa.list_(pa.list_(pa.float64(), 2))),  # MR: [x, y] knots of the standardization applied; null: none
    ]
)

QUARANTINE = pa.schema(
    [
        ("path", pa.string()),  # salted per-component pseudonym of the input path (ingest.quarantine); relative path if pseudonymize_paths is false
        ("reason", pa.string()),
    ]
)

FINDINGS = pa.schema(
    [
        ("report_id", pa.string()),
        ("accession_id", pa.string()),
        ("report_text", pa.string()),  # PHI-scrubbed
        ("tumour_present", pa.bool_()),
        ("subtype", pa.string()),  # null when no tumour
        ("organ", pa.string()),  # of the largest lesion; null when no tumour
        ("max_size_mm", pa.float64()),
        ("lesions_json", pa.string()),  # list of {organ, location, laterality, size_mm, subtype, certainty}
        ("negated_json", pa.string()),  # findings the report explicitly negates
        ("dropped_fields", pa.int32()),  # extracted values the knowledge base could not ground
        ("description", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("backend", pa.string()),
        ("model_id", pa.string()),
        ("prompt_version", pa.string()),
    ]
)

CLASS_PROMPTS = pa.schema(
    [
        ("name", pa.string()),
        ("kind", pa.string()),  # "seg_class" or "subtype"
        ("text", pa.string()),
        ("embedding", pa.list_(pa.float32())),
    ]
)

PSEUDOLABELS = pa.schema(
    [
        ("series_id", pa.string()),
        ("mask_path", pa.string()),  # relative to the pseudolabel output folder
        ("confidence_path", pa.string()),
        ("mean_confidence", pa.float64()),
        ("confident_fraction", pa.float64()),
        ("dice_teacher", pa.float64()),  # lesion Dice vs hidden truth, null without truth
        ("dice_fused", pa.float64()),
    ]
)
