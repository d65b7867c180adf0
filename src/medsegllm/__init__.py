"""MedSegLLM: DICOM studies and radiology reports in, a validated and registered segmentation model out."""

__version__ = "0.1.0"
