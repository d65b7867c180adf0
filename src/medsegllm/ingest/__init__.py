"""Ingest: DICOM folder tree in; de-identified, harmonized volumes, labels and a manifest out."""

from medsegllm.common.deid import quiet_dicom_values

quiet_dicom_values()  # header values never leave ingest, not even in a warning
