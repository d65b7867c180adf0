"""Validation stage: segmentation quality, cross-device divergence, gates and an HTML report."""
