"""Segment: a trained model labels new DICOM series and writes DICOM SEG plus NIfTI label maps."""
