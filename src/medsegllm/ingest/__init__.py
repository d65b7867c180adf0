"""Ingest: DICOM folder tree in; de-identified, harmonized volumes, labels and a manifest out."""
