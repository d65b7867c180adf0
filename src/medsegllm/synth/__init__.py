"""The embedded demo cohort: real DICOM from simulated scanners, reports and hidden truth."""
